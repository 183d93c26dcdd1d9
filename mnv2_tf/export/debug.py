"""Where int8 hurts: `tf.lite.experimental.QuantizationDebugger`, per layer.

The debugger runs the float and the quantized model on the same inputs and records, for
every quantized tensor, the error its quantization adds. RMSE divided by the tensor's
quantization step (`scale`) puts the layers on one footing: ~0.29 (1/sqrt(12)) is the
rounding error of an ideal quantizer; much larger means the range is poorly suited
(outliers, a wide depthwise output) and is where a fix (QAT, a different range) pays.
"""

from __future__ import annotations

import csv
import io
import math

import tensorflow as tf

from mnv2_tf import fileio

IDEAL_RMSE_PER_SCALE = 1 / math.sqrt(12)


def layer_errors(converter: tf.lite.TFLiteConverter, debug_dataset) -> list[dict]:
    """Per-layer statistics, worst first (by RMSE / scale)."""
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=debug_dataset
    )
    debugger.run()
    buffer = io.StringIO()
    debugger.layer_statistics_dump(buffer)
    rows = []
    for row in csv.DictReader(io.StringIO(buffer.getvalue())):
        scale = float(row.get("scale") or 0.0)
        mse = float(row.get("mean_squared_error") or 0.0)
        rows.append(
            {
                "op_name": row.get("op_name", ""),
                "tensor_name": row.get("tensor_name", ""),
                "num_elements": int(float(row.get("num_elements") or 0)),
                "scale": scale,
                "zero_point": int(float(row.get("zero_point") or 0)),
                "mean_error": float(row.get("mean_error") or 0.0),
                "max_abs_error": float(row.get("max_abs_error") or 0.0),
                "rmse": math.sqrt(mse),
                "rmse_per_scale": math.sqrt(mse) / scale if scale else float("nan"),
            }
        )
    rows.sort(key=lambda r: -r["rmse_per_scale"] if math.isfinite(r["rmse_per_scale"]) else 0)
    return rows


def write(rows: list[dict], csv_path: str, markdown_path: str, top: int = 25) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["op_name"])
    writer.writeheader()
    writer.writerows(rows)
    fileio.write_text_atomic(csv_path, buffer.getvalue())
    lines = [
        "# Quantization error per layer (worst first)",
        "",
        f"RMSE / scale of each quantized tensor; an ideal quantizer gives "
        f"{IDEAL_RMSE_PER_SCALE:.3f}. All {len(rows)} rows: `{csv_path.rsplit('/', 1)[-1]}`.",
        "",
        "| # | op | tensor | RMSE/scale | RMSE | max abs error | scale |",
        "|---|----|--------|-----------:|-----:|--------------:|------:|",
    ]
    for i, r in enumerate(rows[:top], 1):
        lines.append(
            f"| {i} | {r['op_name']} | `{r['tensor_name'][-60:]}` | {r['rmse_per_scale']:.3f} | "
            f"{r['rmse']:.4g} | {r['max_abs_error']:.4g} | {r['scale']:.4g} |"
        )
    fileio.write_text_atomic(markdown_path, "\n".join(lines) + "\n")
