"""Runs `.tflite` models with LiteRT on held-out images, side by side with the Keras model.

Every model sees the same batches as the float Keras model, so top-1, agreement (how often
both predict the same class) and the output error are measured on identical inputs. Inputs
are quantized with the model's own input parameters, as an app would; a raw-pixel
(`image_input`) model is fed the de-normalized uint8 pixels.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tf_keras

from mnv2_tf.export.convert import load_interpreter
from mnv2_tf.models.common import Preprocessing


def to_pixels(images: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """Normalized images -> the whole pixel values 0-255 they came from (float)."""
    return np.clip(np.round(images * preprocessing.std + preprocessing.mean), 0, 255)


def on_pixel_grid(images: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """Normalized images rounded to what whole uint8 pixels normalize to."""
    pixels = to_pixels(images, preprocessing)
    return ((pixels - preprocessing.mean) / preprocessing.std).astype(np.float32)


class Runner:
    """A `.tflite` model that takes normalized float images and returns probabilities."""

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
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.batch = None

    def _resize(self, batch: int) -> None:
        if batch == self.batch:
            return
        shape = [batch, *self.input["shape"][1:]]
        self.interpreter.resize_tensor_input(self.input["index"], shape, strict=False)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.batch = batch

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Normalized float images -> what the model's input tensor takes."""
        values = images
        dtype = np.dtype(self.input["dtype"])
        if self.raw_pixels:  # camera pixels, as an app feeds them
            return to_pixels(images, self.preprocessing).astype(dtype)
        if dtype.kind == "f":
            return values.astype(dtype)
        scale, zero_point = self.input["quantization"]
        if scale:
            values = np.round(values / scale + zero_point)
        info = np.iinfo(dtype)
        return np.clip(np.round(values), info.min, info.max).astype(dtype)

    def decode(self, outputs: np.ndarray) -> np.ndarray:
        scale, zero_point = self.output["quantization"]
        if np.dtype(outputs.dtype).kind != "f" and scale:
            return ((outputs.astype(np.float32) - zero_point) * scale).astype(np.float32)
        return outputs.astype(np.float32)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self._resize(len(images))
        self.interpreter.set_tensor(self.input["index"], self.encode(images))
        self.interpreter.invoke()
        return self.decode(self.interpreter.get_tensor(self.output["index"]))


# An image is "decided" when the reference model's top-1 probability leads the runner-up by
# this much: there, a correct conversion keeps the argmax, while on near-ties an honest
# rounding may flip it (a barely trained model is near-ties everywhere).
DECIDED_MARGIN = 0.1


@dataclasses.dataclass
class Comparison:
    """One model against the float Keras model, on the same images."""

    examples: int = 0
    correct: int = 0
    reference_correct: int = 0
    agree: int = 0
    decided: int = 0  # examples where the reference's top-1 leads by >= DECIDED_MARGIN
    decided_agree: int = 0
    max_abs_error: float = 0.0
    sum_abs_error: float = 0.0

    def add(self, probs: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> None:
        predicted, expected = probs.argmax(-1), reference.argmax(-1)
        self.examples += len(labels)
        self.correct += int((predicted == labels).sum())
        self.reference_correct += int((expected == labels).sum())
        same = predicted == expected
        self.agree += int(same.sum())
        top2 = np.sort(reference, axis=-1)[:, -2:]
        decided = top2[:, 1] - top2[:, 0] >= DECIDED_MARGIN
        self.decided += int(decided.sum())
        self.decided_agree += int((same & decided).sum())
        error = np.abs(probs - reference)
        self.max_abs_error = max(self.max_abs_error, float(error.max()))
        self.sum_abs_error += float(error.mean(-1).sum())

    def summary(self) -> dict:
        n = max(self.examples, 1)
        return {
            "eval_examples": self.examples,
            "top1": self.correct / n,
            "keras_top1": self.reference_correct / n,
            "agreement": self.agree / n,
            "decided_examples": self.decided,
            "decided_agreement": self.decided_agree / self.decided if self.decided else None,
            "max_abs_error": self.max_abs_error,
            "mean_abs_error": self.sum_abs_error / n,
        }


def compare(
    model: tf_keras.Model,
    runners: dict[str, Runner],
    batches,
    own_references: dict[str, tf_keras.Model] | None = None,
) -> dict[str, dict]:
    """Top-1, agreement and output error of each runner against `model`.

    Args:
      model: the float Keras model (probability outputs).
      runners: name -> Runner.
      batches: an iterable of {"image", "label", "mask"} numpy batches (the eval pipeline).
      own_references: name -> the Keras model a runner was converted from when it is not
        `model` (the QAT model); its agreement with that one is reported as well
        (`own_keras_agreement`, `own_keras_top1`): that measures the conversion alone.
    """
    own_references = own_references or {}
    raw = [r.preprocessing for r in runners.values() if r.raw_pixels]
    results = {name: Comparison() for name in runners}
    own = {name: Comparison() for name in own_references}
    for batch in batches:
        keep = np.asarray(batch["mask"]) > 0
        if not keep.any():
            continue
        images = np.asarray(batch["image"])[keep]
        if raw:
            # A raw-pixel model sees whole pixel values: so does the reference.
            images = on_pixel_grid(images, raw[0])
        labels = np.asarray(batch["label"])[keep]
        reference = model(images, training=False).numpy().astype(np.float32)
        for name, runner in runners.items():
            probs = runner(images)
            results[name].add(probs, reference, labels)
            if name in own:
                theirs = own_references[name](images, training=False).numpy().astype(np.float32)
                own[name].add(probs, theirs, labels)
    summaries = {name: comparison.summary() for name, comparison in results.items()}
    for name, comparison in own.items():
        summary = comparison.summary()
        summaries[name].update(
            own_keras_top1=summary["keras_top1"],
            own_keras_agreement=summary["agreement"],
            own_keras_decided_examples=summary["decided_examples"],
            own_keras_decided_agreement=summary["decided_agreement"],
        )
    return summaries
