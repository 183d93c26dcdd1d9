"""The export stage: a training workdir -> `.tflite` files, each checked and measured.

For every mode: convert, list the ops (an integer model with a float compute op fails
unless allowed), write the file atomically, then run all files through LiteRT on the eval
split beside the float Keras model and let the run's task compare them (`Task.comparison`
and `Task.check`: for classification, float32 within 1e-4 on every output and the other
modes by how often the predicted class agrees). A file that fails is renamed
`*.rejected.tflite` and the export fails. The report (`export_report.json` and `.md`) holds
size, op histogram, I/O and the task's figures of each model.

The settings are the config's `export` section: the run's own (saved in its config.json),
with the caller's overrides on top (`--config.export.FIELD=VALUE`).
"""

from __future__ import annotations

import dataclasses
import os
import time

import ml_collections
import numpy as np
import tensorflow as tf

from mnv2_tf import config as config_lib
from mnv2_tf import fileio, profile, tasks
from mnv2_tf.data import sources
from mnv2_tf.errors import UserError
from mnv2_tf.export import app, convert, debug, evaluate, qat
from mnv2_tf.export import run as run_lib
from mnv2_tf.models.common import DEFAULT_PREPROCESSING

CALIBRATION_BATCH = 32
# The pixel value an integer input's zero point stands for, calibrated to exactly [-1, 1]:
# the converter puts the int8 zero point at -1 (uint8: 127).
PREDICTED_PIXEL_MEAN = 127.0


def check_failed(check: str) -> bool:
    """Whether a model's `check` entry ("passed", "unchecked: ...", "failed: ...") failed."""
    return check.startswith("failed")


def settings_of(run_config, overrides: dict | None = None) -> ml_collections.ConfigDict:
    """The export section of the run's config with `overrides` ({field: value}) on top,
    checked: unknown modes, image inputs or field names are one-line errors."""
    settings = run_config.export.copy_and_resolve_references()
    for field, value in (overrides or {}).items():
        if field not in settings:
            raise UserError(
                f"unknown config field export.{field}; valid fields of export: "
                f"{', '.join(settings.keys())}"
            )
        settings[field] = value
    modes = modes_of(settings)
    unknown = [m for m in modes if m not in convert.MODES]
    if unknown or not modes:
        raise UserError(
            f"unknown quantization mode {','.join(unknown) or '(none)'} in export.modes; "
            f"choose from {','.join(convert.MODES)}"
        )
    if settings.image_input not in ("", "uint8"):
        raise UserError(f"export.image_input must be uint8 or empty, got {settings.image_input!r}")
    if settings.io_type not in convert.IO_TYPES:
        raise UserError(
            f"unknown export.io_type {settings.io_type!r}; choose from {', '.join(convert.IO_TYPES)}"
        )
    if settings.calibration_steps < 1:
        raise UserError("export.calibration_steps must be at least 1")
    if settings.mediapipe and not settings.metadata:
        raise UserError(
            "export.mediapipe=True needs the metadata (MediaPipe reads labels and "
            "normalization there); leave export.metadata=True"
        )
    return settings


def modes_of(settings) -> tuple[str, ...]:
    return config_lib.parse_list(settings.modes, field="export.modes")


def calibration_images(run: run_lib.Run, steps: int) -> np.ndarray:
    """`steps` batches of training images, shuffled, with the eval preprocessing."""
    data_cfg = run.config.data.copy_and_resolve_references()
    data_cfg.cache = False  # a few batches of a shuffled split: a partial cache would warn
    try:
        source = run.task.load_source(data_cfg, data_cfg.train_split)
    except UserError as e:
        raise UserError(f"calibration data missing: {e}") from e
    source.dataset = source.dataset.shuffle(min(source.num_examples, 10_000), seed=0)
    ds, _ = run.task.dataset(
        run.preprocessing, data_cfg.train_split, training=False,
        batch_size=CALIBRATION_BATCH, source=source, data_cfg=data_cfg,
    )  # fmt: skip
    images = []
    for batch in ds.take(steps).as_numpy_iterator():
        images.append(batch["image"][batch["valid"] > 0])
    if not images:
        raise UserError(f"calibration data missing: the {data_cfg.train_split} split is empty")
    return np.concatenate(images)


def _representative(images: np.ndarray, batch: int | None = None):
    """Calibration batches, of the model's fixed batch size where it has one."""
    batch = batch or CALIBRATION_BATCH

    def generate():
        for i in range(0, len(images) - batch + 1, batch):
            yield [images[i : i + batch]]

    return generate


def export(
    workdir: str,
    overrides: dict | None = None,
    *,
    output_dir: str | None = None,
    weights: str = "final",
    check: bool = True,
    log=print,
) -> dict:
    """Runs the export; returns the report (also written to the output folder).

    Args:
      workdir: a training workdir.
      overrides: {field: value} of the config's export section, on top of the run's own.
      output_dir: default <workdir>/export.
      weights: "final", "best" or "checkpoint" (see `run.load`).
      check: reject the files that fail the self-check (False keeps them, reported).
      log: where progress lines go.

    The workdir is held for this export alone (`fileio.workdir_lock`): a second export or
    pipeline on it stops with one line instead of writing the same files.
    """
    with fileio.workdir_lock(workdir, "export"):
        return _export(
            workdir, overrides, output_dir=output_dir, weights=weights, check=check, log=log
        )


def _export(workdir, overrides, *, output_dir, weights, check, log) -> dict:
    # The settings, labels and MediaPipe rules are checked before the weights are loaded.
    described = run_lib.read(workdir)
    settings = settings_of(described.config, overrides)
    with described.config.unlocked():  # the task reads its export fields (category_mask) there
        described.config.export = settings
    modes = modes_of(settings)
    image_input = settings.image_input or None
    labels = list(described.class_names)
    if settings.labels:
        labels = sources.read_labels(settings.labels, described.num_classes)
        if labels is None:
            raise UserError(
                f"export.labels={settings.labels}: no such file; give one label per line, in "
                "class order"
            )
    if settings.mediapipe:
        found = app.settings_problems(modes, settings, described.task)
        if found:
            raise UserError(
                f"export.mediapipe=True: {found[0]}"
                + (f" (and {len(found) - 1} more)" if len(found) > 1 else "")
            )
    run = run_lib.load(workdir, weights)
    with run.config.unlocked():
        run.config.export = settings
    task = run.task
    out = output_dir or os.path.join(workdir, "export")
    fileio.makedirs(out)
    log(f"exporting {run.weights_from} ({run.model.name}, {task.name}) to {out}")

    calibration = None
    if any(m in convert.INTEGER_MODES for m in modes) or settings.debug_quantization:
        calibration = calibration_images(run, settings.calibration_steps)
        # Two pixels at the ends of the range (black, white) make the input's range exactly
        # [-1, 1] whatever the images hold: one input level per pixel level (see app.py).
        p = run.preprocessing
        calibration[0, 0, 0, :] = (0.0 - p.mean) / p.std
        calibration[0, 0, 1, :] = (255.0 - p.mean) / p.std
    representative = (
        _representative(calibration, task.serving_batch) if calibration is not None else None
    )

    report = {
        "workdir": workdir,
        "weights": run.weights_from,
        "model": run.model.name,
        "task": task.name,
        "headline": {"key": task.headline, "label": task.headline_label},
        "config": {
            "name": run.config.model.name,
            "alpha": run.config.model.alpha,
            "input_size": run.config.model.input_size,
            "num_classes": run.num_classes,
        },
        "preprocessing": run.preprocessing.to_dict(),
        "options": {**settings.to_dict(), "weights": weights, "check": check},
        "calibration_images": 0 if calibration is None else len(calibration),
        "models": {},
    }
    counted = profile.count(run.model)
    report["macs"], report["params"] = counted.macs, counted.params

    contents: dict[str, bytes] = {}
    bare: dict[str, bytes] = {}  # the files without metadata
    infos: dict[str, convert.ModelInfo] = {}
    own_references = {}

    def converted(model, mode: str) -> bytes:
        return convert.convert(
            model, mode, run.preprocessing, outputs=task.serving_outputs,
            representative=representative if mode in convert.INTEGER_MODES else None,
            io_type=settings.io_type, image_input=image_input, per_tensor=settings.per_tensor,
            batch_size=task.serving_batch, float_outputs=task.float_outputs,
        )  # fmt: skip

    for mode in modes:
        start = time.time()
        entry: dict = {"file": convert.file_name(mode)}
        model = run.model
        # One input level per pixel (see app.py), when the app is told how pixels map to
        # the input: raw pixels map by themselves; a normalized input through the metadata.
        aligned = mode in convert.INTEGER_MODES and (image_input or settings.metadata)
        offset = 0.0
        if aligned and mode == "int8":
            # The input's grid is known before converting (calibrated to exactly [-1, 1]):
            # the model takes the half-level shift back first, and converts once.
            offset = _grid_offset(run.preprocessing, PREDICTED_PIXEL_MEAN)
            model = convert.compensate_input_offset(run.model, offset) or run.model
            if model is run.model:
                offset = 0.0
        if mode == "qat":
            model, entry["qat"] = qat.finetune(
                run, epochs=settings.qat_epochs, learning_rate=settings.qat_learning_rate, log=log
            )
            own_references[mode] = model
        content = converted(model, mode)
        scales = convert.weight_scales(mode, settings.per_tensor)
        if scales:
            entry["weight_scales"] = scales
        info = convert.inspect(content)
        mean = run.preprocessing.mean
        if aligned:
            mean = app.pixel_mean(info, run.preprocessing)
            if mode == "int8" and mean != PREDICTED_PIXEL_MEAN:  # another grid: again
                offset = _grid_offset(run.preprocessing, mean)
                compensated = convert.compensate_input_offset(run.model, offset)
                if compensated is None:
                    offset = 0.0
                else:
                    content = converted(compensated, mode)
                    info = convert.inspect(content)
                    if app.pixel_mean(info, run.preprocessing) != mean:
                        raise UserError(
                            "the compensated int8 model's input grid moved; report this "
                            "with the config"
                        )
            if mode == "int8":
                entry["input_offset_compensated"] = offset
        entry["input_pixel_mean"] = mean
        bare[mode], infos[mode] = content, info
        not_ready = app.problems(info, task)
        if settings.metadata:
            content = _with_metadata(run, mode, content, info, mean, labels)
        elif info.inputs[0].dtype == "float32":
            not_ready.append("no metadata (export.metadata=False): no normalization to read")
        entry["metadata"] = bool(settings.metadata)
        entry["mediapipe"] = "ready" if not not_ready else "no: " + "; ".join(not_ready)
        if settings.mediapipe and not_ready:
            raise UserError(f"export.mediapipe=True: the {mode} model has {not_ready[0]}")
        entry.update(
            size_bytes=len(content),
            ops=info.ops,
            float_ops=info.float_ops,
            inputs=[dataclasses.asdict(t) for t in info.inputs],
            outputs=[dataclasses.asdict(t) for t in info.outputs],
            convert_seconds=time.time() - start,
        )
        check_integer(mode, info, settings, run.preprocessing)
        fileio.write_bytes_atomic(os.path.join(out, entry["file"]), content)
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
        mode: evaluate.Runner(content, run.preprocessing, raw_pixels=bool(image_input))
        for mode, content in contents.items()
    }
    data_cfg = run.config.data
    if settings.max_eval_examples is not None:
        data_cfg = data_cfg.copy_and_resolve_references()
        data_cfg.max_eval_examples = settings.max_eval_examples
    eval_ds, _ = task.dataset(
        run.preprocessing, data_cfg.eval_split, training=False,
        batch_size=settings.eval_batch_size, data_cfg=data_cfg,
    )  # fmt: skip
    results = evaluate.compare(
        task, run.model, runners, eval_ds.as_numpy_iterator(), own_references=own_references
    )
    failures = []
    for mode, result in results.items():
        entry = report["models"][mode]
        entry.update(result)
        entry["check"] = task.check(mode, result)
        if check_failed(entry["check"]):
            failures.append(f"{mode}: {entry['check']}")
        if settings.metadata:  # the description now holds the measured figure
            content = _with_metadata(
                run, mode, bare[mode], infos[mode], entry["input_pixel_mean"], labels,
                app.figure_text(task, entry),
            )  # fmt: skip
            entry["size_bytes"] = len(content)
            fileio.write_bytes_atomic(os.path.join(out, entry["file"]), content)

    if settings.debug_quantization:
        log("running the quantization debugger ...")
        converter = convert.converter_for(
            convert.serving_function(
                run.model, run.preprocessing, "float32" if image_input else None,
                task.serving_outputs, task.serving_batch,
            ),
            run.model,
        )  # fmt: skip
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        convert.set_weight_scales(converter, convert.weight_scales("int8", settings.per_tensor))
        rows = debug.layer_errors(converter, representative)
        debug.write(
            rows,
            os.path.join(out, "quantization_debug.csv"),
            os.path.join(out, "quantization_debug.md"),
        )
        report["quantization_debug"] = rows[:10]

    fileio.write_text_atomic(os.path.join(out, app.LABELS_FILE), "\n".join(labels) + "\n")
    fileio.write_json_atomic(os.path.join(out, "export_report.json"), report)
    fileio.write_text_atomic(os.path.join(out, "export_report.md"), markdown(report))
    if failures and check:
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


def _with_metadata(run, mode, content, info, mean, labels, figure=""):
    meta = app.model_metadata(run, mode, info, mean, app.LABELS_FILE, figure)
    return app.with_metadata(content, meta, labels)


def _grid_offset(preprocessing, pixel_mean: float) -> float:
    """What the model's input gains when pixels are normalized with `pixel_mean` instead of
    the model's own mean: (mean - pixel_mean) / std."""
    return (preprocessing.mean - pixel_mean) / preprocessing.std


def check_integer(
    mode: str, info: convert.ModelInfo, settings, preprocessing=DEFAULT_PREPROCESSING
) -> None:
    """An integer model runs every compute op in int8, and a raw-pixel input takes the
    pixels as they are; otherwise the export fails."""
    if mode not in convert.INTEGER_MODES:
        return
    if info.float_ops and not settings.allow_float_ops:
        raise UserError(
            f"the {mode} model still has {len(info.float_ops)} float ops "
            f"({', '.join(info.float_ops[:5])}{' ...' if len(info.float_ops) > 5 else ''}); "
            "pass --config.export.allow_float_ops=True to keep it"
        )
    if settings.image_input:
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


def _ratio(entry: dict) -> str:
    ratio = entry.get("size_vs_float32")
    return "" if ratio is None else f"{ratio:.2f}"


def markdown(report: dict) -> str:
    task = tasks.task_class(report.get("task", "classification"))
    columns = task.export_columns
    lines = [
        f"# Export of `{report['workdir']}`",
        "",
        f"Weights: `{report['weights']}`; {report['config']['name']} alpha "
        f"{report['config']['alpha']} at {report['config']['input_size']} px, "
        f"{report['macs'] / 1e6:.1f}M MACs, {report['params'] / 1e6:.3f}M parameters. "
        f"Calibration: {report['calibration_images']} training images.",
        "",
        "| model | size (KiB) | vs float32 | ops | input | "
        + " | ".join(c.header for c in columns)
        + " | check |",
        "|---|---:|---:|---:|---|" + "---:|" * len(columns) + "---|",
    ]
    for m in report["models"].values():
        io = m["inputs"][0]
        lines.append(
            f"| {m['file']}{' (per-tensor)' if m.get('weight_scales') == 'per-tensor' else ''} | "
            f"{m['size_bytes'] / 1024:.1f} | {_ratio(m)} | "
            f"{sum(m['ops'].values())} | {io['dtype']} {'x'.join(map(str, io['shape']))} | "
            + " | ".join(c.format(m.get(c.key)) for c in columns)
            + f" | {m.get('check', '')} |"
        )
    api = task.mediapipe_api
    ready = [m["file"] for m in report["models"].values() if m.get("mediapipe") == "ready"]
    lines += [
        "",
        f"MediaPipe Tasks ({api or 'no API for this task'}) loads unchanged: "
        f"{', '.join(ready) or 'none'}."
        + "".join(
            f" `{m['file']}`: {m['mediapipe']}."
            for m in report["models"].values()
            if m.get("mediapipe", "ready") != "ready"
        ),
    ]
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
    qat_model = report["models"].get("qat", {})
    if qat_model.get("qat"):
        q, own = qat_model["qat"], qat_model.get("own_keras", {})
        figures = ", ".join(
            f"{c.header} {c.format(own.get(c.key))}" for c in columns if c.key in own
        )
        lines += [
            "",
            f"QAT fine-tuning: {q['steps']} steps of {q['batch_size']} at lr "
            f"{q['learning_rate']}, {q['seconds']:.0f} s. Its TFLite conversion against the "
            f"QAT Keras model it came from: {figures}.",
        ]
    return "\n".join(lines) + "\n"
