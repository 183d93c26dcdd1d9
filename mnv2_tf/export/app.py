"""What an app needs from an exported model: its metadata, and whether MediaPipe Tasks runs it.

Every exported `.tflite` carries TFLite metadata (`metadata.py`): a name, version and
description (architecture, alpha, input size, dataset, the figure measured on the eval
split), the input's normalization, the labels file packed in the model and each output's
role, as MediaPipe Tasks (ImageClassifier, ObjectDetector, ImageSegmenter) and the TFLite
Task Library read them.

The input's normalization is the one the file was evaluated with. A float input: the
model's own constants, (x - 127.5) / 127.5. An integer model's input grid is calibrated to
exactly [-1, 1] (scale 2/255), which puts every whole pixel half a level between two grid
points under (x - 127.5) / 127.5: how an app rounds (MediaPipe computes x * 2/255 - 1)
would decide the int8 input. The export therefore moves the normalization's mean by that half
level, to the pixel value the input's zero point stands for (128 for a uint8 input, 128 +
zero point for int8 and for a float input that the model quantizes), and takes the shift
back in the first convolution (`convert.compensate_input_offset`): pixel p then maps to
grid point p exactly, whoever normalizes. A raw-pixel input (uint8, normalization inside
the graph) has no normalization to write.

MediaPipe's rules (mediapipe 1.2.2, measured): one 1xHxWx3 input, uint8 or float32 (float
needs the normalization; uint8 gets raw 0-255 pixels whatever its quantization says);
classifier and detector outputs float32 or uint8, segmenter outputs any type. `problems`
says why a file breaks them; `settings_problems` says it before converting, from the export
settings, so that `export.mediapipe=True` refuses a combination in one line.
"""

from __future__ import annotations

import os

import mnv2_tf
from mnv2_tf.export import convert, metadata

LABELS_FILE = "labels.txt"
APP_INPUT_TYPES = ("uint8", "float32")


def io_types(mode: str, settings, task) -> tuple[str, list[str]]:
    """(input dtype, output dtypes) a mode's file will have under `settings`."""
    integer = mode in convert.INTEGER_MODES
    image_input = settings.image_input or None
    if not integer:
        return ("uint8" if image_input else "float32"), ["float32"]
    input_type = "uint8" if image_input else settings.io_type
    output_type = "float32" if task.float_outputs else settings.io_type
    return input_type, [output_type]


def settings_problems(modes, settings, task) -> list[str]:
    """Why MediaPipe would refuse a file these settings produce (before converting)."""
    if not task.mediapipe_api:
        return [f"the {task.name} task has no MediaPipe Tasks API"]
    found = []
    for mode in modes:
        input_type, output_types = io_types(mode, settings, task)
        if input_type not in APP_INPUT_TYPES:
            found.append(
                f"the {mode} model would take {input_type} input, {task.mediapipe_api} takes "
                "uint8 or float32 (--config.export.image_input=uint8)"
            )
        found += [f"the {mode} model: {p}" for p in task.mediapipe_type_problems(output_types)]
    return found


def problems(info: convert.ModelInfo, task) -> list[str]:
    """Why MediaPipe's task API would refuse this file (empty: it runs it)."""
    if not task.mediapipe_api:
        return [f"the {task.name} task has no MediaPipe Tasks API"]
    out = []
    if len(info.inputs) != 1:
        out.append(f"{len(info.inputs)} inputs, MediaPipe takes one image")
    else:
        io = info.inputs[0]
        if len(io.shape) != 4 or io.shape[0] != 1 or io.shape[3] != 3:
            out.append(f"input shape {io.shape}, MediaPipe takes [1, H, W, 3]")
        if io.dtype not in APP_INPUT_TYPES:
            out.append(f"{io.dtype} input, MediaPipe takes uint8 or float32")
    return out + task.mediapipe_output_problems(info.outputs)


def pixel_mean(info: convert.ModelInfo, preprocessing) -> float:
    """The pixel value the input's zero point stands for, when the file's input grid is one
    pixel level per step (see above); else the model's own mean."""
    quantization = info.input_grid
    if quantization is None:
        return preprocessing.mean
    scale, zero_point, dtype = quantization
    if abs(scale * preprocessing.std - 1.0) > 1e-3:
        return preprocessing.mean
    return float(zero_point + (128 if dtype == "int8" else 0))


def input_metadata(info: convert.ModelInfo, preprocessing, mean: float) -> metadata.Tensor:
    io = info.inputs[0]
    height, width = io.shape[1], io.shape[2]
    raw = io.dtype == "uint8" and not io.scale  # pixels in, normalized in the graph
    std = preprocessing.std
    return metadata.Tensor(
        "image",
        "RGB pixels, 0-255" + ("" if raw else f", normalized as (pixel - {mean:g}) / {std:g}"),
        "image",
        color_space="RGB",
        image_size=(width, height),
        normalization=None if raw else ([mean], [std]),
        stats=([0.0], [255.0]) if raw else ([(0.0 - mean) / std], [(255.0 - mean) / std]),
    )


def _architecture(cfg) -> str:
    names = {"mobilenet_v2": "MobileNetV2", "mobilenet_v1": "MobileNetV1"}
    return names.get(cfg.model.name, cfg.model.name)


def describe(run, mode: str, figure: str = "") -> str:
    cfg = run.config
    data = cfg.data
    dataset = data.name or (
        os.path.basename(str(data.data_dir).rstrip("/")) if data.data_dir else ""
    )
    arch = _architecture(cfg)
    text = (
        f"{arch} alpha {cfg.model.alpha:g} {run.task.app_name} at {cfg.model.input_size}x"
        f"{cfg.model.input_size} px, {run.num_classes} classes, trained on "
        f"{dataset or data.source} ({data.source}); {mode} TFLite from mnv2_tf."
    )
    return text + (f" Measured on {figure}." if figure else "")


def model_metadata(
    run, mode: str, info: convert.ModelInfo, mean: float, labels_file: str, figure: str = ""
) -> metadata.Model:
    cfg = run.config
    run_name = os.path.basename(os.path.normpath(run.workdir))
    return metadata.Model(
        name=f"{_architecture(cfg)} {cfg.model.alpha:g} {run.task.app_name} ({mode})",
        description=describe(run, mode, figure),
        version=f"mnv2_tf {mnv2_tf.__version__}, run {run_name}",
        author="mnv2_tf",
        inputs=[input_metadata(info, run.preprocessing, mean)],
        outputs=run.task.output_metadata(labels_file)
        or [metadata.Tensor(o.name) for o in info.outputs],
        custom=(
            {metadata.SEGMENTER_METADATA: metadata.segmenter_options(run.task.output_activation)}
            if run.task.output_activation
            else {}
        ),
    )


def figure_text(task, entry: dict) -> str:
    """The headline figure of a converted model, for its description."""
    value = entry.get(task.headline)
    examples = entry.get("eval_examples")
    if value is None:
        return ""
    return f"the eval split with LiteRT: {task.headline_label} {value:.4f}" + (
        f" on {examples} images" if examples else ""
    )


def with_metadata(content: bytes, model: metadata.Model, labels: list[str]) -> bytes:
    files = {LABELS_FILE: ("\n".join(labels) + "\n").encode()}
    return metadata.write(content, model, files)
