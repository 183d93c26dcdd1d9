"""What int8 costs on Fashion-MNIST: export a full configs/fashion_mnist.py run.

    python benchmarks/export_fashion_mnist.py --workdir=runs/fmnist
        [--out=benchmarks/results/export_fashion_mnist.json] [--qat_epochs=1]

On the 10,000 test images, through LiteRT: top-1 of float32, int8 PTQ and QAT int8 against
the float Keras model, agreement, and file sizes; then the raw-pixel model
(`--image_input=uint8`, uint8 I/O) fed camera-style pixels against the float model fed
preprocessed ones, on the first 1000 test images; then int8 with per-tensor weight scales
(`--per_tensor`), the smaller file, on all test images. Targets (issue "Quantization and TFLite
export"): PTQ within 0.5 points of float, QAT within 0.2, int8 file <= 30% of float32,
raw-pixel agreement >= 99%.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import mnv2_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

# isort: split
from absl import app, flags

import common  # benchmarks/common.py: the script's own folder is on sys.path
from mnv2_tf.config import base_config
from mnv2_tf.export import exporter

_WORKDIR = flags.DEFINE_string("workdir", None, "A full fashion_mnist run.", required=True)
_OUT = flags.DEFINE_string("out", common.results_path("export_fashion_mnist"), "JSON output.")
_QAT_EPOCHS = flags.DEFINE_float(
    "qat_epochs", base_config().export.qat_epochs, "QAT fine-tuning epochs."
)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the models go (default: temp).")


def main(argv):
    del argv
    out = _OUTPUT_DIR.value or tempfile.mkdtemp(prefix="export_fmnist_")
    start = time.time()
    report = exporter.export(
        _WORKDIR.value,
        {"modes": "float32,int8,qat", "qat_epochs": _QAT_EPOCHS.value, "debug_quantization": True},
        output_dir=os.path.join(out, "default"),
    )
    main_seconds = time.time() - start
    start = time.time()
    raw = exporter.export(
        _WORKDIR.value,
        {"modes": "int8", "image_input": "uint8", "io_type": "uint8", "max_eval_examples": 1000},
        output_dir=os.path.join(out, "image_input"),
    )
    raw_seconds = time.time() - start
    start = time.time()
    per_tensor = exporter.export(
        _WORKDIR.value,
        {"modes": "int8", "per_tensor": True},
        output_dir=os.path.join(out, "per_tensor"),
    )
    per_tensor_seconds = time.time() - start
    models = report["models"]
    float_top1 = models["float32"]["keras_top1"]
    pt = per_tensor["models"]["int8"]
    pt_size_ratio = pt["size_bytes"] / models["float32"]["size_bytes"]
    summary = {
        "float_keras_top1": float_top1,
        "float32_tflite_top1": models["float32"]["top1"],
        "int8_top1": models["int8"]["top1"],
        "qat_int8_top1": models["qat"]["top1"],
        "qat_keras_top1": models["qat"].get("own_keras", {}).get("keras_top1"),
        "int8_drop_points": 100 * (float_top1 - models["int8"]["top1"]),
        "qat_drop_points": 100 * (float_top1 - models["qat"]["top1"]),
        "int8_agreement": models["int8"]["agreement"],
        "qat_agreement": models["qat"]["agreement"],
        "int8_size_vs_float32": models["int8"]["size_vs_float32"],
        "qat_size_vs_float32": models["qat"]["size_vs_float32"],
        "int8_per_tensor_top1": pt["top1"],
        "int8_per_tensor_drop_points": 100 * (float_top1 - pt["top1"]),
        "int8_per_tensor_agreement": pt["agreement"],
        "int8_per_tensor_size_vs_float32": pt_size_ratio,
        "raw_pixel_int8_agreement_1000": raw["models"]["int8"]["agreement"],
        "raw_pixel_int8_top1_1000": raw["models"]["int8"]["top1"],
        "targets": {
            "int8_within_0.5_points": float_top1 - models["int8"]["top1"] <= 0.005,
            "qat_within_0.2_points": float_top1 - models["qat"]["top1"] <= 0.002,
            "int8_file_at_most_30_percent": models["int8"]["size_vs_float32"] <= 0.30,
            "int8_per_tensor_within_0.5_points": float_top1 - pt["top1"] <= 0.005,
            "int8_per_tensor_file_at_most_30_percent": pt_size_ratio <= 0.30,
            "raw_pixel_agreement_at_least_99_percent": raw["models"]["int8"]["agreement"] >= 0.99,
        },
        "export_seconds": main_seconds,
        "image_input_export_seconds": raw_seconds,
        "per_tensor_export_seconds": per_tensor_seconds,
    }
    results = {
        "machine": common.machine(),
        "workdir": _WORKDIR.value,
        "summary": summary,
        "report": report,
        "image_input_report": raw,
        "per_tensor_report": per_tensor,
    }
    print(json.dumps(summary, indent=2))
    common.write_results(_OUT.value, results)


if __name__ == "__main__":
    app.run(main)
