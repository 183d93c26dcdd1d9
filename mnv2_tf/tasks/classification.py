"""Image classification (paper Section 6.1): one label per image, softmax over classes.

Training: cross-entropy with label smoothing on the logits, running top-1. Evaluation:
loss (no smoothing) and top-1 over the whole eval set; `best/` is the epoch of the best
`eval_top1`. The deployable model ends in a softmax; its TFLite model has one output,
`probabilities`. A converted model is checked by top-1 agreement with the Keras model on
the images the Keras model has decided (see `MIN_AGREEMENT`), and float32 to 1e-4 on every
probability.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf
import tf_keras

from mnv2_tf import app_io
from mnv2_tf.models import weights as weights_lib
from mnv2_tf.models.common import Preprocessing
from mnv2_tf.tasks import base

# The self-check: what each mode must show against the Keras model it was converted from,
# on the eval images. These catch a broken conversion (wrong weights, wrong input scaling,
# a misread output: agreement near chance), not a quality bar: how much int8 loses is
# measured and reported, and the quality targets live in benchmarks/. Agreement is checked
# on the images the Keras model has decided (top-1 ahead by DECIDED_MARGIN): on near-ties
# honest rounding flips the argmax, and a barely trained model is near-ties almost
# everywhere. With fewer than MIN_DECIDED decided images the check says "unchecked".
MAX_FLOAT32_ERROR = 1e-4
MIN_AGREEMENT = {"float16": 0.98, "dynamic": 0.95, "int8": 0.9, "qat": 0.9}
MIN_DECIDED = 20
DECIDED_MARGIN = 0.1


class Evaluator(base.Evaluator):
    """Loss and top-1 over every valid eval image."""

    def __init__(self):
        self.loss_sum = self.correct = self.count = 0.0

    def update(self, batch: dict, outputs) -> None:
        logits = np.asarray(outputs, np.float64)
        labels = np.asarray(batch["label"]).astype(np.int64)
        valid = np.asarray(batch["valid"], np.float64)
        top = logits.max(-1, keepdims=True)
        log_norm = np.log(np.exp(logits - top).sum(-1)) + top[:, 0]
        loss = log_norm - np.take_along_axis(logits, labels[:, None], -1)[:, 0]
        self.loss_sum += float((loss * valid).sum())
        self.correct += float(((logits.argmax(-1) == labels) * valid).sum())
        self.count += float(valid.sum())

    def result(self) -> dict[str, float]:
        n = max(self.count, 1.0)
        return {"loss": self.loss_sum / n, "top1": self.correct / n, "examples": round(self.count)}


@dataclasses.dataclass
class Comparison(base.Comparison):
    """One converted model against the Keras model, on the same images."""

    examples: int = 0
    correct: int = 0
    reference_correct: int = 0
    agree: int = 0
    decided: int = 0  # examples where the reference's top-1 leads by >= DECIDED_MARGIN
    decided_agree: int = 0
    max_abs_error: float = 0.0
    sum_abs_error: float = 0.0

    def add(self, batch: dict, outputs: dict, reference: dict) -> None:
        probs, expected_probs = outputs["probabilities"], reference["probabilities"]
        labels = np.asarray(batch["label"])
        predicted, expected = probs.argmax(-1), expected_probs.argmax(-1)
        self.examples += len(labels)
        self.correct += int((predicted == labels).sum())
        self.reference_correct += int((expected == labels).sum())
        same = predicted == expected
        self.agree += int(same.sum())
        top2 = np.sort(expected_probs, axis=-1)[:, -2:]
        decided = top2[:, 1] - top2[:, 0] >= DECIDED_MARGIN
        self.decided += int(decided.sum())
        self.decided_agree += int((same & decided).sum())
        error = np.abs(probs - expected_probs)
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


class Classification(base.Task):
    name = "classification"
    best_metric = "eval_top1"
    best_label = "top-1"
    headline = "top1"
    headline_label = "top-1"
    train_metric_names = ("top1",)
    head_layers = frozenset(weights_lib.HEAD_LAYERS)
    mediapipe_api = "ImageClassifier"
    app_name = "image classifier"
    export_columns = (
        base.Column("top1", "top-1 TFLite"),
        base.Column("keras_top1", "top-1 Keras"),
        base.Column("agreement", "agreement"),
        base.Column("decided_agreement", "decided: agreement"),
        base.Column("decided_examples", "decided images", "int"),
        base.Column("max_abs_error", "max abs err"),
        base.Column("mean_abs_error", "mean abs err"),
    )
    summary_columns = (
        base.Column("keras_top1", "top-1 Keras", "pct"),
        base.Column("top1", "top-1 TFLite", "pct"),
        base.Column("agreement", "agreement", "pct"),
    )

    def build_model(self) -> tf_keras.Model:
        return self.build_backbone(classifier_activation=None)

    def build_inference_model(self) -> tf_keras.Model:
        return self.build_backbone(classifier_activation="softmax")

    def blank_labels(self, preprocessing: Preprocessing) -> dict:
        return {"label": tf.constant(0, tf.int64)}

    def loss(self, batch: dict, outputs) -> tf.Tensor:
        onehot = tf.one_hot(batch["label"], self.num_classes)
        return tf_keras.losses.categorical_crossentropy(
            onehot, outputs, from_logits=True,
            label_smoothing=self.config.train.label_smoothing,
        )  # fmt: skip

    def train_metrics(self, batch: dict, outputs) -> dict[str, tf.Tensor]:
        return {"top1": tf.cast(tf.equal(tf.argmax(outputs, -1), batch["label"]), tf.float32)}

    def evaluator(self) -> Evaluator:
        return Evaluator()

    def serving_outputs(self, model: tf_keras.Model, images: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"probabilities": model(images, training=False)}

    def output_metadata(self, labels_file: str) -> list:
        return [
            app_io.Tensor(
                "probabilities", "Softmax probability of each class, in the labels' order.",
                labels=(labels_file, "TENSOR_AXIS_LABELS"),
            )
        ]  # fmt: skip

    def mediapipe_type_problems(self, output_types: list[str]) -> list[str]:
        if len(output_types) != 1:
            return [f"{len(output_types)} outputs, ImageClassifier reads one"]
        if output_types[0] not in ("float32", "uint8"):
            return [
                f"{output_types[0]} output, ImageClassifier takes float32 or uint8 "
                "(--config.export.io_type=uint8 or float32)"
            ]
        return []

    def comparison(self) -> Comparison:
        return Comparison()

    def mediapipe_agreement(self, litert: dict, mp: dict, image_size) -> dict:
        """ImageClassifier against LiteRT: top-1 (a tie listed in another order agrees) and
        every category's score."""
        probabilities = litert["probabilities"]
        top = probabilities.argmax(-1)
        mp_top = mp["top"]
        tie = (mp_top != top) & (
            probabilities[np.arange(len(top)), mp_top] == probabilities.max(-1)
        )
        agree = (mp_top == top) | tie
        return {
            "images": len(top),
            "top1_agreement": float(agree.mean()),
            "top1_same_index": float((mp_top == top).mean()),
            "ties_ordered_differently": int(tie.sum()),
            "max_score_difference": float(np.nanmax(np.abs(mp["scores"] - probabilities))),
            "passed": bool(agree.all()),
        }

    def check(self, mode: str, summary: dict) -> str:
        if summary["eval_examples"] == 0:
            return "failed: no eval images"
        if mode == "float32":
            if summary["max_abs_error"] > MAX_FLOAT32_ERROR:
                return (
                    f"failed: max output error {summary['max_abs_error']:.2g} > {MAX_FLOAT32_ERROR}"
                )
            return "passed"
        # A QAT model is checked against the Keras model it was converted from: fine-tuning
        # moves it away from the float model on purpose.
        own = summary.get("own_keras", summary)
        decided, agreement = own["decided_examples"], own["decided_agreement"]
        if decided < MIN_DECIDED:
            return (
                f"unchecked: only {decided} of {own['eval_examples']} images decided (top-1 "
                f"ahead by {DECIDED_MARGIN}); overall agreement {own['agreement']:.3f}"
            )
        if agreement < MIN_AGREEMENT[mode]:
            return (
                f"failed: agreement {agreement:.3f} < {MIN_AGREEMENT[mode]} on the {decided} "
                "images the Keras model decided"
            )
        return "passed"

    def finetune(self):
        return (
            lambda ex: (ex["image"], ex["label"]),
            tf_keras.losses.SparseCategoricalCrossentropy(),
            ["accuracy"],
        )
