"""Semantic segmentation with Mobile DeepLabv3 (paper Section 6.3).

Data: VOC-layout or images/ + masks/ folders, TFDS (`mnv2_tf.data.segmentation`), image and
mask scaled, cropped and flipped together (`segmentation_preprocess`).
Training model: logits at input resolution [B, H, W, K]; loss: per-pixel softmax
cross-entropy over the labelled pixels. Evaluation: mIOU from one confusion matrix over the
eval set (`segmentation.metrics`), per-class IoU and pixel accuracy; `best/` by mIOU.
Inference model: the same weights ending at the logits on the feature map (1/16 or 1/8 of
the input); the TFLite model (batch 1: a dilated depthwise conv stays one op only at a fixed
batch) upsamples them in its graph: per-pixel class scores at input resolution ("scores",
softmax of the bilinearly upsampled logits), or with `export.category_mask` the class id per
pixel ("category_mask", uint8), computed as `segmentation.mask_upsampling` says. A converted
model is checked by its mIOU beside the Keras model's and the pixel agreement of their masks.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf
import tf_keras

from mnv2_tf import app_io, data, fileio
from mnv2_tf import config as config_lib
from mnv2_tf.data import segmentation as segmentation_data
from mnv2_tf.data import segmentation_preprocess
from mnv2_tf.errors import UserError
from mnv2_tf.models import deeplab
from mnv2_tf.models.common import Preprocessing
from mnv2_tf.segmentation import loss as loss_lib
from mnv2_tf.segmentation import metrics as metrics_lib
from mnv2_tf.tasks import base

# The self-check (see classification.py: it catches a broken conversion; the quality
# targets live in benchmarks/). float32: the Keras model's mIOU to MAX_FLOAT32_MIOU_GAP and
# its mask on MIN_FLOAT32_AGREEMENT of the pixels; an integer model: MIN_INTEGER_AGREEMENT of
# the pixels, judged once the Keras model segments something (mIOU >= MIN_MIOU_TO_CHECK).
MAX_FLOAT32_MIOU_GAP = 0.001
MIN_FLOAT32_AGREEMENT = 0.999
MIN_INTEGER_AGREEMENT = 0.8
MIN_MIOU_TO_CHECK = 0.2


def scores(logits, size: int):
    """Class probabilities at input resolution from the feature-map logits."""
    return tf.nn.softmax(tf.image.resize(tf.cast(logits, tf.float32), [size, size]), axis=-1)


def category_mask(logits, size: int, method: str = "logits", stride: int = 4):
    """The class id per pixel (uint8 [B, H, W, 1]) from the feature-map logits:
    "logits" upsamples every logit to the input and takes the argmax there; "argmax_nearest"
    takes it on the feature map and upsamples the ids; "scores_bilinear" upsamples the logits
    to 1/`stride` of the input, takes the argmax there and upsamples the ids (nearest)."""
    logits = tf.cast(logits, tf.float32)
    if method == "argmax_nearest":
        low = logits
    elif method == "scores_bilinear" and stride > 1:
        low = tf.image.resize(logits, [-(-size // stride)] * 2)
    elif method in ("logits", "scores_bilinear"):
        low = tf.image.resize(logits, [size, size])
    else:
        raise UserError(f"segmentation.mask_upsampling={method!r}; use {deeplab.MASK_UPSAMPLING}")
    ids = tf.cast(tf.argmax(low, axis=-1, output_type=tf.int32), tf.uint8)[..., None]
    if low.shape[1] != size:
        ids = deeplab.nearest_ids(ids, size)
    return ids


def predicted_ids(outputs: dict) -> np.ndarray:
    """[B, H, W] class ids from a model's serving outputs (scores or category mask)."""
    if "category_mask" in outputs:
        return np.asarray(outputs["category_mask"])[..., 0].astype(np.int64)
    return np.asarray(outputs["scores"]).argmax(-1)


class Evaluator(base.Evaluator):
    """mIOU, per-class IoU and pixel accuracy over the eval set."""

    def __init__(self, task: Segmentation):
        self.task = task
        self.matrix = metrics_lib.ConfusionMatrix(task.num_classes)
        self.examples = 0

    def update(self, batch: dict, outputs) -> None:
        valid = np.asarray(batch["valid"]) > 0
        prediction = np.asarray(outputs).argmax(-1)
        self.matrix.update(np.asarray(batch["mask"])[valid], prediction[valid])
        self.examples += int(valid.sum())

    def result(self) -> dict[str, float]:
        out = self.matrix.result(self.task.class_names)
        del out["pixels"]
        out["examples"] = self.examples
        return out


@dataclasses.dataclass
class Comparison(base.Comparison):
    """A converted model's masks and the Keras model's: both scored, and how often they
    agree pixel for pixel."""

    num_classes: int
    class_names: list
    examples: int = 0
    pixels: int = 0
    agree: int = 0
    max_score_error: float = 0.0

    def __post_init__(self):
        self.tflite = metrics_lib.ConfusionMatrix(self.num_classes)
        self.keras = metrics_lib.ConfusionMatrix(self.num_classes)

    def add(self, batch: dict, outputs: dict, reference: dict) -> None:
        mine, theirs = predicted_ids(outputs), predicted_ids(reference)
        self.tflite.update(batch["mask"], mine)
        self.keras.update(batch["mask"], theirs)
        self.examples += len(mine)
        self.pixels += mine.size
        self.agree += int((mine == theirs).sum())
        if "scores" in outputs:
            error = np.abs(np.asarray(outputs["scores"]) - np.asarray(reference["scores"]))
            self.max_score_error = max(self.max_score_error, float(error.max(initial=0.0)))

    def summary(self) -> dict:
        mine, theirs = self.tflite.result(self.class_names), self.keras.result(self.class_names)
        return {
            "eval_examples": self.examples,
            "miou": mine["miou"],
            "keras_miou": theirs["miou"],
            "miou_gap": mine["miou"] - theirs["miou"],
            "pixel_accuracy": mine["pixel_accuracy"],
            "pixel_agreement": self.agree / max(self.pixels, 1),
            "max_score_error": self.max_score_error,
            "per_class_iou": {k[4:]: v for k, v in mine.items() if k.startswith("iou/")},
        }


class Segmentation(base.Task):
    name = "segmentation"
    best_metric = "eval_miou"
    best_label = "mIOU"
    headline = "miou"
    headline_label = "mIOU"
    train_metric_names = ("pixel_accuracy",)
    serving_batch = 1  # a dilated depthwise conv stays one DEPTHWISE_CONV_2D
    float_outputs = True  # scores as float32; the category mask is uint8 either way
    mediapipe_api = "ImageSegmenter"
    app_name = "image segmenter"
    output_activation = "NONE"  # the scores are probabilities already: none to apply
    draws_examples = True
    export_columns = (
        base.Column("miou", "mIOU TFLite", "pct"),
        base.Column("keras_miou", "mIOU Keras", "pct"),
        base.Column("pixel_accuracy", "pixel acc", "pct"),
        base.Column("pixel_agreement", "pixels agree", "pct"),
        base.Column("max_score_error", "max score err"),
    )
    summary_columns = (
        base.Column("keras_miou", "mIOU Keras", "pct"),
        base.Column("miou", "mIOU TFLite", "pct"),
        base.Column("pixel_agreement", "pixels agree", "pct"),
    )

    def __init__(self, config, num_classes: int, class_names: list[str] | None = None):
        super().__init__(config, num_classes, class_names)

        def probe():
            return sorted(
                layer.name for layer in self.build_model().layers if deeplab.is_head(layer.name)
            )

        self.head_layers = frozenset(base.probed(config, "segmentation", num_classes, probe))
        self.size = config.model.input_size

    # --- model ---------------------------------------------------------------------------

    def _build(self, output: str = "logits"):
        model_cfg, seg = self.config.model, self.config.segmentation
        kwargs = config_lib.model_kwargs(model_cfg, self.num_classes)
        backbone_kwargs = {
            k: kwargs[k]
            for k in ("expansion", "linear_bottleneck", "shortcut", "remove_early_strides")
            if k in kwargs
        }
        try:
            return deeplab.deeplab(
                self.num_classes,
                model_cfg.name,
                model_cfg.alpha,
                model_cfg.input_size,
                output_stride=model_cfg.output_stride or 16,
                aspp=seg.aspp,
                atrous_rates=tuple(seg.atrous_rates) or None,
                depth=seg.depth,
                dropout=seg.dropout,
                bn_momentum=model_cfg.bn_momentum,
                bn_epsilon=model_cfg.bn_epsilon,
                block_specs=kwargs.get("block_specs"),
                output=output,
                backbone_kwargs=backbone_kwargs,
            )
        except ValueError as e:
            raise UserError(f"config model/segmentation section: {e}") from e

    def build_model(self) -> tf_keras.Model:
        return self._build()

    def build_inference_model(self) -> tf_keras.Model:
        """The training model's layers up to the feature-map logits (its upsampling has no
        weights): the TFLite graph upsamples (`serving_outputs`)."""
        model = self._build()
        return tf_keras.Model(model.inputs, model.get_layer("logits").output, name=model.name)

    def build_backbone(self, **overrides) -> tf_keras.Model:
        return self._build()

    # --- data ----------------------------------------------------------------------------

    @classmethod
    def load_source(cls, data_cfg, split: str) -> data.Source:
        return segmentation_data.load(data_cfg, split)

    def example_fn(self, source: data.Source, preprocessing: Preprocessing, training: bool):
        seg = self.config.segmentation
        return segmentation_preprocess.make_fn(
            preprocessing, training=training, encoded=source.encoded,
            min_scale=seg.min_scale, max_scale=seg.max_scale,
        )  # fmt: skip

    def blank_labels(self, preprocessing: Preprocessing) -> dict:
        return segmentation_preprocess.blank(preprocessing.input_size)

    # --- training and evaluation -------------------------------------------------------------

    def loss(self, batch: dict, outputs) -> tf.Tensor:
        return loss_lib.per_example(outputs, batch["mask"])

    def train_metrics(self, batch: dict, outputs) -> dict[str, tf.Tensor]:
        return {"pixel_accuracy": loss_lib.pixel_accuracy(outputs, batch["mask"])}

    def evaluator(self) -> Evaluator:
        return Evaluator(self)

    # --- export --------------------------------------------------------------------------

    def serving_outputs(self, model: tf_keras.Model, images: tf.Tensor) -> dict[str, tf.Tensor]:
        logits = model(images, training=False)
        size = int(images.shape[1])
        if self.config.export.get("category_mask"):
            seg = self.config.segmentation
            mask = category_mask(logits, size, seg.mask_upsampling, seg.mask_stride)
            return {"category_mask": mask}
        return {"scores": scores(logits, size)}

    def output_metadata(self, labels_file: str) -> list:
        if self.config.export.get("category_mask"):
            name, what, kind = "category_mask", "Class id of each pixel", "TENSOR_VALUE_LABELS"
        else:
            name, what = "scores", "Probability of each class at each pixel (softmax)"
            kind = "TENSOR_AXIS_LABELS"
        return [
            app_io.Tensor(
                name, f"{what}, at input size; classes: the labels file.", "image",
                color_space="GRAYSCALE", value_range=(1, 2), labels=(labels_file, kind),
            )
        ]  # fmt: skip

    def mediapipe_type_problems(self, output_types: list[str]) -> list[str]:
        if self.config.export.get("category_mask"):
            return [
                "a category_mask output, ImageSegmenter makes the mask from per-class "
                "scores (export without --category_mask)"
            ]
        return []

    def mediapipe_output_problems(self, outputs: list) -> list[str]:
        found = self.mediapipe_type_problems([o.dtype for o in outputs])
        if not found and (len(outputs) != 1 or len(outputs[0].shape) != 4):
            found.append("ImageSegmenter reads one [1, H, W, classes] output")
        return found

    def comparison(self) -> Comparison:
        return Comparison(self.num_classes, self.class_names)

    def mediapipe_agreement(self, litert: dict, mp: dict, image_size) -> dict:
        """ImageSegmenter against LiteRT: the category masks, pixel for pixel."""
        ours = litert["scores"].argmax(-1)
        theirs = mp["category_mask"].astype(np.int64)
        if theirs.shape != ours.shape:
            return {"passed": False, "shapes": [list(ours.shape), list(theirs.shape)]}
        same = ours == theirs
        return {
            "images": len(ours),
            "pixel_agreement": float(same.mean()),
            "identical_images": int(same.all(axis=(1, 2)).sum()),
            "passed": bool(same.all()),
        }

    def check(self, mode: str, summary: dict) -> str:
        if summary["eval_examples"] == 0:
            return "failed: no eval images"
        own = summary.get("own_keras", summary)
        if mode == "float32":
            if abs(own["miou_gap"]) > MAX_FLOAT32_MIOU_GAP:
                return f"failed: mIOU {own['miou']:.4f} vs Keras {own['keras_miou']:.4f}"
            if own["pixel_agreement"] < MIN_FLOAT32_AGREEMENT:
                return f"failed: pixel agreement {own['pixel_agreement']:.4f} < {MIN_FLOAT32_AGREEMENT}"
            return "passed"
        if own["keras_miou"] < MIN_MIOU_TO_CHECK:
            return (
                f"unchecked: the Keras model's mIOU is {own['keras_miou']:.3f} (< "
                f"{MIN_MIOU_TO_CHECK}); pixel agreement {own['pixel_agreement']:.3f}"
            )
        if own["pixel_agreement"] < MIN_INTEGER_AGREEMENT:
            return (
                f"failed: pixel agreement {own['pixel_agreement']:.3f} < "
                f"{MIN_INTEGER_AGREEMENT} with the Keras model"
            )
        return "passed"

    def examples_png(self, batch: dict, outputs: dict, preprocessing: Preprocessing) -> bytes:
        """Rows of image | ground truth | prediction (each class in one colour, the same in
        truth and prediction, over the faded image; the truth's ignored pixels white), and a
        swatch key of the classes shown in a column of its own."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from mnv2_tf.data import synthetic

        palette = np.asarray(synthetic.voc_palette(), np.float32).reshape(256, 3)
        palette[255] = 255
        predicted = predicted_ids(outputs)
        count = len(batch["image"])
        present = sorted({int(c) for c in np.unique(predicted)} | {
            int(c) for c in np.unique(np.asarray(batch["mask"])) if c != 255})  # fmt: skip
        # Three picture columns and a key of its own beside them (never over the titles).
        fig, axes = plt.subplots(
            count, 4, figsize=(9.5, 2.5 * count), squeeze=False,
            gridspec_kw={"width_ratios": [1, 1, 1, 0.75]},
        )  # fmt: skip
        for i in range(count):
            pixels = np.clip(batch["image"][i] * preprocessing.std + preprocessing.mean, 0, 255)
            truth = np.asarray(batch["mask"][i]).astype(np.int64)
            faded = pixels * 0.45 + 255 * 0.55  # the background, so that the classes stand out
            for ax, ids, title in (
                (axes[i, 0], None, "image"),
                (axes[i, 1], truth, "ground truth"),
                (axes[i, 2], predicted[i], "prediction"),
            ):
                ax.axis("off")
                shown = pixels
                if ids is not None:
                    # Each class in its key colour exactly, truth and prediction alike.
                    shown = np.where((ids == 0)[..., None], faded, palette[ids])
                ax.imshow(shown.astype(np.uint8))
                if i == 0:
                    ax.set_title(title, fontsize=9)
            axes[i, 3].axis("off")
        from matplotlib.patches import Patch

        handles = [Patch(fc="none", ec="grey", label=f"{self.class_names[0]} (faded image)")]
        handles += [
            Patch(color=palette[c] / 255, label=self.class_names[c])
            for c in present if 0 < c < len(self.class_names)
        ]  # fmt: skip
        handles.append(Patch(fc="white", ec="grey", label="ignored (truth only)"))
        axes[0, 3].legend(
            handles=handles, loc="upper left", fontsize=8, frameon=False, title="key",
            title_fontsize=9, handlelength=1.2, borderaxespad=0,
        )  # fmt: skip
        fig.tight_layout()
        return fileio.png_bytes(fig, dpi=90)

    def finetune(self):
        size = self.size

        def to_pair(ex):
            return ex["image"], ex["mask"]

        return to_pair, loss_lib.IgnoringCrossEntropy(size), []
