"""The export stage: a training workdir -> `.tflite` files, each checked and measured.

For every mode: convert, list the ops (an integer model with a float compute op fails
unless allowed), write the file atomically, then run all files through LiteRT on the eval
split beside the float Keras model. Each file must agree with the Keras model (float32
within 1e-4 on every output; the other modes by top-1 agreement), or the export fails
and the file is renamed `*.rejected.tflite`. The report (`export_report.json` and `.md`)
holds size, op histogram, I/O, top-1 of each model and of Keras, agreement and error.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import tensorflow as tf

from mnv2_tf import profile
from mnv2_tf.data import make_dataset, sources
from mnv2_tf.errors import UserError
from mnv2_tf.export import convert, debug, evaluate, qat
from mnv2_tf.export import run as run_lib
from mnv2_tf.models.common import DEFAULT_PREPROCESSING
from mnv2_tf.train.trainer import write_json_atomic, write_text_atomic

# The self-check: what each mode must show against the Keras model it was converted from,
# on the eval images. These catch a broken conversion (wrong weights, wrong input scaling,
# a misread output: agreement near chance), not a quality bar: how much int8 loses is
# measured and reported, and the quality targets live in benchmarks/. Agreement is checked
# on the images the Keras model has decided (top-1 ahead by evaluate.DECIDED_MARGIN): on
# near-ties honest rounding flips the argmax, and a barely trained model is near-ties almost
# everywhere. With fewer than MIN_DECIDED decided images the check says "unchecked".
MAX_FLOAT32_ERROR = 1e-4
MIN_AGREEMENT = {"float16": 0.98, "dynamic": 0.95, "int8": 0.9, "qat": 0.9}
MIN_DECIDED = 20
CALIBRATION_BATCH = 32


def check_failed(check: str) -> bool:
    """Whether a model's `check` entry ("passed", "unchecked: ...", "failed: ...") failed."""
    return check.startswith("failed")


@dataclasses.dataclass
class Options:
    modes: tuple[str, ...] = ("float32", "int8")
    output_dir: str | None = None  # default <workdir>/export
    weights: str = "final"
    calibration_steps: int = 16  # batches of CALIBRATION_BATCH training images
    io_type: str = "int8"
    image_input: str | None = None  # "uint8": raw RGB pixels in, normalization in the graph
    allow_float_ops: bool = False
    per_tensor: bool = False  # int8 PTQ weights: one scale per tensor, not per channel
    debug_quantization: bool = False
    qat_epochs: float = 1.0
    qat_learning_rate: float = 1e-3
    max_eval_examples: int | None = None
    eval_batch_size: int = 250
    check: bool = True


def write_bytes_atomic(path: str, content: bytes) -> None:
    tmp = f"{path}.tmp"
    with tf.io.gfile.GFile(tmp, "wb") as f:
        f.write(content)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def calibration_images(run: run_lib.Run, steps: int) -> np.ndarray:
    """`steps` batches of training images, shuffled, with the eval preprocessing."""
    data_cfg = run.config.data
    try:
        source = sources.load(data_cfg, data_cfg.train_split)
    except UserError as e:
        raise UserError(f"calibration data missing: {e}") from e
    source.dataset = source.dataset.shuffle(min(source.num_examples, 10_000), seed=0)
    ds, _ = make_dataset(
        data_cfg, run.preprocessing, data_cfg.train_split, training=False,
        batch_size=CALIBRATION_BATCH, source=source,
    )  # fmt: skip
    images = []
    for batch in ds.take(steps).as_numpy_iterator():
        images.append(batch["image"][batch["mask"] > 0])
    if not images:
        raise UserError(f"calibration data missing: the {data_cfg.train_split} split is empty")
    return np.concatenate(images)


def _representative(images: np.ndarray):
    def generate():
        for i in range(0, len(images), CALIBRATION_BATCH):
            yield [images[i : i + CALIBRATION_BATCH]]

    return generate


def export(workdir: str, options: Options, log=print) -> dict:
    """Runs the export; returns the report (also written to the output folder)."""
    unknown = [m for m in options.modes if m not in convert.MODES]
    if unknown or not options.modes:
        raise UserError(
            f"unknown quantization mode {','.join(unknown) or '(none)'}; "
            f"choose from {','.join(convert.MODES)}"
        )
    if options.image_input not in (None, "uint8"):
        raise UserError(f"--image_input must be uint8 or empty, got {options.image_input!r}")
    if options.calibration_steps < 1:
        raise UserError("--calibration_steps must be at least 1")
    run = run_lib.load(workdir, options.weights)
    out = options.output_dir or os.path.join(workdir, "export")
    tf.io.gfile.makedirs(out)
    log(f"exporting {run.weights_from} ({run.model.name}) to {out}")

    needs_calibration = any(m in convert.INTEGER_MODES for m in options.modes)
    calibration = None
    if needs_calibration or options.debug_quantization:
        calibration = calibration_images(run, options.calibration_steps)
        if options.image_input:
            # Two pixels at the ends of the range (black, white) make the input's range
            # exactly [-1, 1] whatever the images hold: the uint8 input then takes pixels.
            p = run.preprocessing
            calibration[0, 0, 0, :] = (0.0 - p.mean) / p.std
            calibration[0, 0, 1, :] = (255.0 - p.mean) / p.std
    representative = _representative(calibration) if calibration is not None else None

    report = {
        "workdir": workdir,
        "weights": run.weights_from,
        "model": run.model.name,
        "config": {
            "name": run.config.model.name,
            "alpha": run.config.model.alpha,
            "input_size": run.config.model.input_size,
            "num_classes": run.num_classes,
        },
        "preprocessing": run.preprocessing.to_dict(),
        "options": dataclasses.asdict(options),
        "calibration_images": 0 if calibration is None else len(calibration),
        "models": {},
    }
    counted = profile.count(run.model)
    report["macs"], report["params"] = counted.macs, counted.params

    contents: dict[str, bytes] = {}
    own_references = {}
    for mode in options.modes:
        start = time.time()
        entry: dict = {"file": convert.file_name(mode)}
        model = run.model
        if mode == "qat":
            model, entry["qat"] = qat.finetune(
                run, epochs=options.qat_epochs, learning_rate=options.qat_learning_rate, log=log
            )
            own_references[mode] = model
        content = convert.convert(
            model, mode, run.preprocessing,
            representative=representative if mode in convert.INTEGER_MODES else None,
            io_type=options.io_type, image_input=options.image_input,
            per_tensor=options.per_tensor,
        )  # fmt: skip
        scales = convert.weight_scales(mode, options.per_tensor)
        if scales:
            entry["weight_scales"] = scales
        info = convert.inspect(content)
        if options.image_input and mode == "int8":
            content, info, entry["input_offset_compensated"] = _compensate(
                run, content, info, representative, options
            )
        entry.update(
            size_bytes=info.size_bytes,
            ops=info.ops,
            float_ops=info.float_ops,
            inputs=[dataclasses.asdict(t) for t in info.inputs],
            outputs=[dataclasses.asdict(t) for t in info.outputs],
            convert_seconds=time.time() - start,
        )
        check_integer(mode, info, options, run.preprocessing)
        write_bytes_atomic(os.path.join(out, entry["file"]), content)
        log(
            f"wrote {entry['file']}: {info.size_bytes / 1024:.1f} KiB, {sum(info.ops.values())} ops"
        )
        contents[mode] = content
        report["models"][mode] = entry

    float_bytes = report["models"].get("float32", {}).get("size_bytes")
    for entry in report["models"].values():
        if float_bytes:
            entry["size_vs_float32"] = entry["size_bytes"] / float_bytes

    log("evaluating on the eval split with LiteRT ...")
    runners = {
        mode: evaluate.Runner(content, run.preprocessing, raw_pixels=bool(options.image_input))
        for mode, content in contents.items()
    }
    data_cfg = run.config.data
    if options.max_eval_examples is not None:
        data_cfg = data_cfg.copy_and_resolve_references()
        data_cfg.max_eval_examples = options.max_eval_examples
    eval_ds, _ = make_dataset(
        data_cfg, run.preprocessing, data_cfg.eval_split, training=False,
        batch_size=options.eval_batch_size,
    )  # fmt: skip
    results = evaluate.compare(
        run.model, runners, eval_ds.as_numpy_iterator(), own_references=own_references
    )
    failures = []
    for mode, result in results.items():
        entry = report["models"][mode]
        entry.update(result)
        entry["check"] = _check(mode, result)
        if check_failed(entry["check"]):
            failures.append(f"{mode}: {entry['check']}")

    if options.debug_quantization:
        log("running the quantization debugger ...")
        converter = convert.converter_for(
            convert.serving_function(
                run.model, run.preprocessing, "float32" if options.image_input else None
            ),
            run.model,
        )
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        convert.set_weight_scales(converter, convert.weight_scales("int8", options.per_tensor))
        rows = debug.layer_errors(converter, representative)
        debug.write(
            rows,
            os.path.join(out, "quantization_debug.csv"),
            os.path.join(out, "quantization_debug.md"),
        )
        report["quantization_debug"] = rows[:10]

    write_text_atomic(os.path.join(out, "labels.txt"), "\n".join(run.class_names) + "\n")
    write_json_atomic(os.path.join(out, "export_report.json"), report)
    write_text_atomic(os.path.join(out, "export_report.md"), markdown(report))
    if failures and options.check:
        for mode in results:
            if check_failed(report["models"][mode]["check"]):
                path = os.path.join(out, report["models"][mode]["file"])
                tf.io.gfile.rename(
                    path, path.replace(".tflite", ".rejected.tflite"), overwrite=True
                )
        raise UserError(
            "self-check failed (" + "; ".join(failures) + "); the files were renamed "
            "*.rejected.tflite, see export_report.md"
        )
    return report


def _compensate(run, content, info, representative, options):
    """Pixels fed to the uint8 input mean (p - zero_point) * scale, half a level off
    (p - mean) / std: the first layer takes the offset back (`compensate_input_offset`)."""
    io = info.inputs[0]
    offset = (run.preprocessing.mean - io.zero_point) * io.scale
    if abs(offset) < 1e-9:
        return content, info, 0.0
    model = convert.compensate_input_offset(run.model, offset)
    if model is None:
        return content, info, 0.0
    content = convert.convert(
        model, "int8", run.preprocessing, representative=representative,
        io_type=options.io_type, image_input=options.image_input,
        per_tensor=options.per_tensor,
    )  # fmt: skip
    return content, convert.inspect(content), offset


def check_integer(
    mode: str, info: convert.ModelInfo, options: Options, preprocessing=DEFAULT_PREPROCESSING
) -> None:
    """An integer model runs every compute op in int8, and a raw-pixel input takes the
    pixels as they are; otherwise the export fails."""
    if mode not in convert.INTEGER_MODES:
        return
    if info.float_ops and not options.allow_float_ops:
        raise UserError(
            f"the {mode} model still has {len(info.float_ops)} float ops "
            f"({', '.join(info.float_ops[:5])}{' ...' if len(info.float_ops) > 5 else ''}); "
            "pass --allow_float_ops to keep it"
        )
    if options.image_input:
        io, p = info.inputs[0], preprocessing
        pixels = (
            io.dtype == "uint8"
            and abs(io.scale * p.std - 1.0) < 1e-3  # scale 1/127.5 = 2/255
            and abs(io.zero_point - p.mean) <= 0.5
        )
        if not pixels:
            raise UserError(
                f"the {mode} model's image input is {io.dtype} with scale {io.scale:g} and zero "
                f"point {io.zero_point}, not raw pixels; report this with the model's config"
            )


def _check(mode: str, result: dict) -> str:
    if result["eval_examples"] == 0:
        return "failed: no eval images"
    if mode == "float32":
        if result["max_abs_error"] > MAX_FLOAT32_ERROR:
            return f"failed: max output error {result['max_abs_error']:.2g} > {MAX_FLOAT32_ERROR}"
        return "passed"
    # A QAT model is checked against the Keras model it was converted from: fine-tuning
    # moves it away from the float model on purpose.
    own = "own_keras_agreement" in result
    decided = result["own_keras_decided_examples" if own else "decided_examples"]
    agreement = result["own_keras_decided_agreement" if own else "decided_agreement"]
    if decided < MIN_DECIDED:
        overall = result["own_keras_agreement" if own else "agreement"]
        return (
            f"unchecked: only {decided} of {result['eval_examples']} images decided (top-1 "
            f"ahead by {evaluate.DECIDED_MARGIN}); overall agreement {overall:.3f}"
        )
    if agreement < MIN_AGREEMENT[mode]:
        return (
            f"failed: agreement {agreement:.3f} < {MIN_AGREEMENT[mode]} on the {decided} "
            "images the Keras model decided"
        )
    return "passed"


def _ratio(entry: dict) -> str:
    ratio = entry.get("size_vs_float32")
    return "" if ratio is None else f"{ratio:.2f}"


def _decided(entry: dict) -> str:
    agreement = entry.get("decided_agreement")
    if agreement is None:
        return f"- ({entry.get('decided_examples', 0)})"
    return f"{agreement:.4f} ({entry['decided_examples']})"


def markdown(report: dict) -> str:
    lines = [
        f"# Export of `{report['workdir']}`",
        "",
        f"Weights: `{report['weights']}`; {report['config']['name']} alpha "
        f"{report['config']['alpha']} at {report['config']['input_size']} px, "
        f"{report['macs'] / 1e6:.1f}M MACs, {report['params'] / 1e6:.3f}M parameters. "
        f"Calibration: {report['calibration_images']} training images.",
        "",
        "| model | size (KiB) | vs float32 | ops | input | top-1 TFLite | top-1 Keras | "
        "agreement | decided: agreement (images) | max abs err | mean abs err | check |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for m in report["models"].values():
        io = m["inputs"][0]
        lines.append(
            f"| {m['file']}{' (per-tensor)' if m.get('weight_scales') == 'per-tensor' else ''} | "
            f"{m['size_bytes'] / 1024:.1f} | {_ratio(m)} | "
            f"{sum(m['ops'].values())} | {io['dtype']} {'x'.join(map(str, io['shape']))} | "
            f"{m.get('top1', float('nan')):.4f} | {m.get('keras_top1', float('nan')):.4f} | "
            f"{m.get('agreement', float('nan')):.4f} | {_decided(m)} | "
            f"{m.get('max_abs_error', float('nan')):.2g} | "
            f"{m.get('mean_abs_error', float('nan')):.2g} | {m.get('check', '')} |"
        )
    lines += ["", "Op types per model:", ""]
    for mode, m in report["models"].items():
        ops = ", ".join(f"{k} {v}" for k, v in m["ops"].items())
        lines.append(
            f"- `{m['file']}`: {ops}"
            + (
                f"; float ops: {len(m['float_ops'])}"
                if m["float_ops"] and mode in convert.INTEGER_MODES
                else ""
            )
        )
    qat_entry = report["models"].get("qat", {}).get("qat")
    if qat_entry:
        lines += [
            "",
            f"QAT fine-tuning: {qat_entry['steps']} steps of {qat_entry['batch_size']} at lr "
            f"{qat_entry['learning_rate']}, {qat_entry['seconds']:.0f} s. The QAT Keras model "
            f"scores {report['models']['qat'].get('own_keras_top1', float('nan')):.4f}; its "
            f"TFLite conversion agrees with it on "
            f"{report['models']['qat'].get('own_keras_agreement', float('nan')):.2%} of images.",
        ]
    return "\n".join(lines) + "\n"
