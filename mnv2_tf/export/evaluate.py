"""Runs `.tflite` models with LiteRT on held-out images, side by side with the Keras model.

Every model sees the same batches as the float Keras model; the task compares their named
outputs (`Task.comparison`), so what is measured (accuracy and agreement, mAP, mIOU, output
error) is the task's, on identical inputs. Inputs are quantized with the model's own input
parameters, as an app would; a raw-pixel (`image_input`) model is fed the de-normalized
uint8 pixels. A model with metadata is fed as its metadata says (normalize with its mean and
std, then quantize): the way MediaPipe Tasks feeds it.
"""

from __future__ import annotations

import numpy as np
import tf_keras

from mnv2_tf.export import metadata
from mnv2_tf.export.convert import load_interpreter
from mnv2_tf.models.common import Preprocessing
from mnv2_tf.tasks import Task


def to_pixels(images: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """Normalized images -> the whole pixel values 0-255 they came from (float)."""
    return np.clip(np.round(images * preprocessing.std + preprocessing.mean), 0, 255)


def on_pixel_grid(images: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """Normalized images rounded to what whole uint8 pixels normalize to."""
    pixels = to_pixels(images, preprocessing)
    return ((pixels - preprocessing.mean) / preprocessing.std).astype(np.float32)


class Runner:
    """A `.tflite` model that takes normalized float images and returns its outputs by
    name (the serving function's names, from the model's signature), as float32."""

    def __init__(
        self,
        content: bytes,
        preprocessing: Preprocessing,
        raw_pixels: bool = False,
        num_threads: int | None = None,
    ):
        self.interpreter = load_interpreter(content, num_threads=num_threads)
        self.preprocessing = preprocessing
        self.raw_pixels = raw_pixels
        meta = metadata.read(content)
        # (mean, std) from the metadata, "raw" for an input that takes pixels as they are,
        # None without metadata (then `preprocessing` and `raw_pixels` say).
        self.normalization = None
        if meta is not None:
            self.normalization = meta.inputs[0].normalization or "raw"
        self.batch = None
        self.interpreter.allocate_tensors()
        self._details()

    def _details(self) -> None:
        self.input = self.interpreter.get_input_details()[0]
        if self.interpreter.get_signature_list():
            named = self.interpreter.get_signature_runner().get_output_details()
            self.outputs = {name: detail for name, detail in named.items()}
        else:  # a file converted without a signature: outputs by position
            details = self.interpreter.get_output_details()
            self.outputs = {f"output_{i}": d for i, d in enumerate(details)}

    def _resize(self, batch: int) -> None:
        if batch == self.batch:
            return
        shape = [batch, *self.input["shape"][1:]]
        self.interpreter.resize_tensor_input(self.input["index"], shape, strict=False)
        self.interpreter.allocate_tensors()
        self._details()
        self.batch = batch

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Normalized float images -> what the model's input tensor takes."""
        values = images
        dtype = np.dtype(self.input["dtype"])
        if self.raw_pixels or self.normalization == "raw":  # camera pixels, as an app feeds them
            return to_pixels(images, self.preprocessing).astype(dtype)
        if self.normalization is not None:  # the pixels, normalized as the metadata says
            (mean,), (std,) = self.normalization
            p = self.preprocessing
            values = ((images * p.std + p.mean) - mean) / std
        if dtype.kind == "f":
            return values.astype(dtype)
        scale, zero_point = self.input["quantization"]
        if scale:
            values = np.round(values / scale + zero_point)
        info = np.iinfo(dtype)
        return np.clip(np.round(values), info.min, info.max).astype(dtype)

    @staticmethod
    def decode(values: np.ndarray, detail: dict) -> np.ndarray:
        scale, zero_point = detail["quantization"]
        if np.dtype(values.dtype).kind != "f" and scale:
            return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)
        return values.astype(np.float32)

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        fixed = int(self.input["shape_signature"][0])
        if fixed > 0:  # a model of a fixed batch: the images go through in chunks of it
            chunks = [self._run(images[i : i + fixed]) for i in range(0, len(images), fixed)]
            return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}
        return self._run(images)

    def _run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        fixed = int(self.input["shape_signature"][0])
        count = len(images)
        if fixed > 0 and count < fixed:  # the last chunk: padded, the padding dropped
            images = np.concatenate([images, np.repeat(images[-1:], fixed - count, 0)])
        else:
            self._resize(count)
        self.interpreter.set_tensor(self.input["index"], self.encode(images))
        self.interpreter.invoke()
        return {
            name: self.decode(self.interpreter.get_tensor(detail["index"]), detail)[:count]
            for name, detail in self.outputs.items()
        }


def _numpy(outputs: dict) -> dict[str, np.ndarray]:
    return {name: np.asarray(value, np.float32) for name, value in outputs.items()}


def compare(
    task: Task,
    model: tf_keras.Model,
    runners: dict[str, Runner],
    batches,
    own_references: dict[str, tf_keras.Model] | None = None,
) -> dict[str, dict]:
    """The task's comparison of each runner against `model`, on the same batches.

    Args:
      task: the run's task (its serving outputs and comparison).
      model: the float Keras inference model.
      runners: name -> Runner.
      batches: an iterable of numpy batches of the eval pipeline ({"image", labels...,
        "valid"}).
      own_references: name -> the Keras model a runner was converted from when it is not
        `model` (the QAT model); the comparison with that one is reported too, under
        `own_keras`: it measures the conversion alone.
    """
    own_references = own_references or {}
    raw = [r.preprocessing for r in runners.values() if r.raw_pixels]
    results = {name: task.comparison() for name in runners}
    own = {name: task.comparison() for name in own_references}
    for batch in batches:
        keep = np.asarray(batch["valid"]) > 0
        if not keep.any():
            continue
        batch = {k: np.asarray(v)[keep] for k, v in batch.items()}
        images = batch["image"]
        if raw:
            # A raw-pixel model sees whole pixel values: so does the reference.
            images = on_pixel_grid(images, raw[0])
        reference = _numpy(task.serving_outputs(model, images))
        for name, runner in runners.items():
            outputs = runner(images)
            results[name].add(batch, outputs, reference)
            if name in own:
                theirs = _numpy(task.serving_outputs(own_references[name], images))
                own[name].add(batch, outputs, theirs)
    summaries = {name: comparison.summary() for name, comparison in results.items()}
    for name, comparison in own.items():
        summaries[name]["own_keras"] = comparison.summary()
    return summaries
