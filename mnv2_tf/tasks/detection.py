"""Object detection with SSDLite (paper Section 6.2).

Data: COCO / VOC folders or TFDS (`mnv2_tf.data.detection`), boxes moved with the pixels by
SSD's augmentation; the per-anchor targets (matching at `detection.match_threshold` IoU,
box codes) are computed per example in tf.data, so the training step only runs the network
and the loss.
Training model: box codes [B, anchors, 4] and class logits [B, anchors, K]; loss
`mnv2_tf.detection.loss` (focal by default). Evaluation: the detections the exported model
would give (`postprocess.reference`, same NMS) scored by pycocotools; `best/` is the epoch of
the best mAP@[.5:.95]. Inference model: [codes, scores]; its TFLite model ends in
`TFLite_Detection_PostProcess` with outputs boxes, classes, scores, count (MediaPipe's
order), at batch 1 (the op's only batch size). A converted model is checked by its mAP next
to the Keras model's on the same images.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf
import tf_keras

from mnv2_tf import app_io, data, fileio
from mnv2_tf import config as config_lib
from mnv2_tf.data import detection as detection_data
from mnv2_tf.data import detection_preprocess
from mnv2_tf.detection import boxes as box_lib
from mnv2_tf.detection import coco_eval, postprocess
from mnv2_tf.detection import loss as loss_lib
from mnv2_tf.errors import UserError
from mnv2_tf.models import ssdlite
from mnv2_tf.models.common import Preprocessing
from mnv2_tf.tasks import base

# What "the same" means in the MediaPipe check (`mediapipe_agreement`).
MEDIAPIPE_SCORE_TOLERANCE = 1e-4
MEDIAPIPE_BOX_TOLERANCE_PX = 1.0

# The self-check (see classification.py for the philosophy: it catches a broken
# conversion, the quality targets live in benchmarks/). float32 must score the Keras
# model's mAP to MAX_FLOAT32_MAP_GAP; an integer model at least MIN_INTEGER_MAP_RATIO of it,
# judged only once the Keras model finds something (mAP@.5 >= MIN_MAP50_TO_CHECK).
MAX_FLOAT32_MAP_GAP = 0.005
MIN_INTEGER_MAP_RATIO = 0.5
MIN_MAP50_TO_CHECK = 0.05
EXAMPLE_MIN_SCORE = 0.3
LOGGED_STATS = ("map", "map50", "map75", "map_small", "map_medium", "map_large", "ar100")


def _per_image(batch: dict, detections: dict):
    """(size, true boxes, true classes, det boxes, det classes, det scores) of each valid
    image of a batch."""
    valid = np.asarray(batch.get("valid", np.ones(len(batch["boxes"]))))
    for i in np.nonzero(valid > 0)[0]:
        n = int(batch["num_boxes"][i])
        d = int(detections["num_detections"][i])
        yield (
            batch["size"][i],
            batch["boxes"][i][:n],
            batch["classes"][i][:n],
            detections["detection_boxes"][i][:d],
            detections["detection_classes"][i][:d],
            detections["detection_scores"][i][:d],
        )


class Evaluator(base.Evaluator):
    """COCO mAP of the detections (post-processed as the exported model does)."""

    def __init__(self, task: Detection):
        self.task = task
        self.coco = coco_eval.CocoMap(task.class_names)

    def update(self, batch: dict, outputs) -> None:
        codes, logits = outputs
        detections = self.task.postprocess(codes, self.task.scores_of(logits))
        for image in _per_image(batch, detections):
            self.coco.add_image(*image)

    def result(self) -> dict[str, float]:
        stats = self.coco.result()
        out = {k: stats[k] for k in LOGGED_STATS}
        out.update({k: v for k, v in stats.items() if k.startswith("ap/")})
        out["examples"] = stats["images"]
        return out


@dataclasses.dataclass
class Comparison(base.Comparison):
    """A converted model's detections and the Keras model's, scored alike."""

    class_names: list
    examples: int = 0
    max_score_error: float = 0.0  # of the top detection of each image
    count_agreement: int = 0  # images where both find the same number of detections

    def __post_init__(self):
        self.tflite = coco_eval.CocoMap(self.class_names)
        self.keras = coco_eval.CocoMap(self.class_names)

    def add(self, batch: dict, outputs: dict, reference: dict) -> None:
        for image in _per_image(batch, outputs):
            self.tflite.add_image(*image)
        for image in _per_image(batch, reference):
            self.keras.add_image(*image)
        self.examples += int((np.asarray(batch["valid"]) > 0).sum())
        top = np.abs(outputs["detection_scores"][:, 0] - reference["detection_scores"][:, 0])
        self.max_score_error = max(self.max_score_error, float(top.max(initial=0.0)))
        self.count_agreement += int(
            (outputs["num_detections"] == reference["num_detections"]).sum()
        )

    def summary(self) -> dict:
        mine, theirs = self.tflite.result(), self.keras.result()
        return {
            "eval_examples": self.examples,
            "map": mine["map"],
            "map50": mine["map50"],
            "keras_map": theirs["map"],
            "keras_map50": theirs["map50"],
            "map_gap": mine["map"] - theirs["map"],
            "max_top_score_error": self.max_score_error,
            "count_agreement": self.count_agreement / max(self.examples, 1),
            "per_class_ap": {k[3:]: v for k, v in mine.items() if k.startswith("ap/")},
        }


class Detection(base.Task):
    name = "detection"
    best_metric = "eval_map"
    best_label = "mAP"
    headline = "map"
    headline_label = "mAP@[.5:.95]"
    train_metric_names = ("matched_anchors",)
    serving_batch = 1  # TFLite_Detection_PostProcess runs one image per call
    float_outputs = True  # boxes, classes, scores, count: the post-process op's float32
    mediapipe_api = "ObjectDetector"
    tfds_mock_examples = staticmethod(detection_data.tfds_mock_examples)
    app_name = "object detector"
    draws_examples = True
    export_columns = (
        base.Column("map", "mAP TFLite", "pct"),
        base.Column("map50", "mAP@.5 TFLite", "pct"),
        base.Column("keras_map", "mAP Keras", "pct"),
        base.Column("keras_map50", "mAP@.5 Keras", "pct"),
        base.Column("max_top_score_error", "top score err"),
        base.Column("count_agreement", "same count", "pct"),
    )
    summary_columns = (
        base.Column("keras_map", "mAP Keras", "pct"),
        base.Column("map", "mAP TFLite", "pct"),
        base.Column("map50", "mAP@.5 TFLite", "pct"),
    )

    def __init__(self, config, num_classes: int, class_names: list[str] | None = None):
        super().__init__(config, num_classes, class_names)
        det = config.detection
        self.loss_name = det.loss
        self.class_outputs = loss_lib.class_outputs(det.loss, num_classes)

        def probe():
            model = self._build(None)
            heads = sorted(layer.name for layer in model.layers if not _is_backbone(layer.name))
            return ssdlite.feature_sizes(model), heads

        sizes, heads = base.probed(config, "detection", num_classes, probe)
        self.anchors = box_lib.ssd_anchors(
            sizes, det.min_scale, det.max_scale,
            reduce_boxes_in_lowest_layer=det.reduce_boxes_in_lowest_layer,
        )  # fmt: skip
        self.head_layers = frozenset(heads)
        self.settings = postprocess.Settings(
            max_detections=det.max_detections,
            score_threshold=det.score_threshold,
            iou_threshold=det.iou_threshold,
            label_offset=0 if det.loss == "focal" else 1,
        )
        self.post_process = postprocess.PostProcess(self.anchors, self.settings, self.class_outputs)
        self._reference = None  # `postprocess`'s traced function

    # --- model ---------------------------------------------------------------------------

    def _build(self, score_activation):
        model_cfg, det = self.config.model, self.config.detection
        try:
            specs = config_lib.model_kwargs(model_cfg, self.num_classes).get("block_specs")
            return ssdlite.ssd(
                self.class_outputs,
                model_cfg.name,
                model_cfg.alpha,
                model_cfg.input_size,
                head=det.head,
                min_depth=det.min_depth,
                bn_momentum=model_cfg.bn_momentum,
                bn_epsilon=model_cfg.bn_epsilon,
                block_specs=specs,
                score_activation=score_activation,
                class_prior=det.class_prior if self.loss_name == "focal" else None,
                reduce_boxes_in_lowest_layer=det.reduce_boxes_in_lowest_layer,
            )
        except ValueError as e:
            raise UserError(f"config model/detection section: {e}") from e

    def build_model(self) -> tf_keras.Model:
        return self._build(None)

    def build_inference_model(self) -> tf_keras.Model:
        return self._build("sigmoid" if self.loss_name == "focal" else "softmax")

    def build_backbone(self, **overrides) -> tf_keras.Model:
        return self._build(None)

    # --- data ----------------------------------------------------------------------------

    @classmethod
    def load_source(cls, data_cfg, split: str) -> data.Source:
        return detection_data.load(data_cfg, split)

    def example_fn(self, source: data.Source, preprocessing: Preprocessing, training: bool):
        return detection_preprocess.make_fn(
            preprocessing, self.anchors, training=training, encoded=source.encoded,
            max_boxes=self.config.detection.max_boxes,
            match_threshold=self.config.detection.match_threshold,
        )  # fmt: skip

    def blank_labels(self, preprocessing: Preprocessing) -> dict:
        return detection_preprocess.blank(self.config.detection.max_boxes)

    # --- training and evaluation -------------------------------------------------------------

    def loss(self, batch: dict, outputs) -> tf.Tensor:
        return loss_lib.per_example(
            outputs, batch["cls_targets"], batch["box_targets"], self.loss_name, self.num_classes
        )

    def train_metrics(self, batch: dict, outputs) -> dict[str, tf.Tensor]:
        matched = tf.reduce_sum(tf.cast(batch["cls_targets"] > 0, tf.float32), axis=1)
        return {"matched_anchors": matched}

    def evaluator(self) -> Evaluator:
        return Evaluator(self)

    def scores_of(self, logits):
        logits = tf.convert_to_tensor(logits, tf.float32)
        return tf.sigmoid(logits) if self.loss_name == "focal" else tf.nn.softmax(logits)

    def postprocess(self, codes, scores) -> dict[str, np.ndarray]:
        if self._reference is None:  # traced once per batch shape: eager NMS is ~10x slower
            anchors, settings = tf.constant(self.anchors, tf.float32), self.settings
            self._reference = tf.function(
                lambda c, s: postprocess.reference(c, s, anchors, settings),
                reduce_retracing=True,
            )
        values = self._reference(tf.cast(codes, tf.float32), tf.cast(scores, tf.float32))
        return {k: np.asarray(v) for k, v in zip(postprocess.OUTPUT_NAMES, values, strict=True)}

    # --- export --------------------------------------------------------------------------

    def serving_outputs(self, model: tf_keras.Model, images: tf.Tensor) -> dict[str, tf.Tensor]:
        codes, scores = model(images, training=False)
        return self.post_process(codes, scores)

    def output_metadata(self, labels_file: str) -> list:
        # The four outputs of TFLite_Detection_PostProcess, in the order and with the names
        # MediaPipe's ObjectDetector reads them by (postprocess.OUTPUT_NAMES).
        per_detection = (2, 2)  # [1, N] / [1, N, 4]: one content object per detection
        return [
            app_io.Tensor(
                "location", "Boxes [top, left, bottom, right], fractions of the image.",
                "bounding_box", box_index=(1, 0, 3, 2), box_type="BOUNDARIES",
                box_coordinates="RATIO", value_range=per_detection,
            ),
            app_io.Tensor(
                "category", "Class of each detection: a line of the labels file.",
                labels=(labels_file, "TENSOR_VALUE_LABELS"), value_range=per_detection,
            ),
            app_io.Tensor("score", "Score of each detection.", value_range=per_detection),
            app_io.Tensor("number of detections", "How many rows hold detections."),
        ]  # fmt: skip

    def mediapipe_output_problems(self, outputs: list) -> list[str]:
        if len(outputs) != 4 or any(o.dtype != "float32" for o in outputs):
            return [
                "ObjectDetector reads the 4 float32 outputs of TFLite_Detection_PostProcess, "
                f"the model has {', '.join(o.dtype for o in outputs)}"
            ]
        return []

    def comparison(self) -> Comparison:
        return Comparison(self.class_names)

    def mediapipe_agreement(self, litert: dict, mp: dict, image_size) -> dict:
        """ObjectDetector against LiteRT: every LiteRT detection matched to one MediaPipe
        detection of the same image and class (its label; score within
        MEDIAPIPE_SCORE_TOLERANCE, box within MEDIAPIPE_BOX_TOLERANCE_PX in pixels as MediaPipe
        reports them: truncated, and clamped to the image), none left over. MediaPipe merges
        detections whose pixel boxes are identical into one with several categories: each
        category counts as a detection."""
        labels = self.class_names
        height, width = image_size
        rows, names = mp["detections"], list(mp["names"])
        matched = total = extra = 0
        worst_box = worst_score = 0.0
        for i in range(len(litert["num_detections"])):
            n = round(float(np.ravel(litert["num_detections"][i])[0]))
            ours = []
            for k in range(n):
                ymin, xmin, ymax, xmax = litert["detection_boxes"][i, k]
                box = np.array(
                    [xmin * width, ymin * height, (xmax - xmin) * width, (ymax - ymin) * height]
                )
                # MediaPipe reports pixel boxes clamped to the image, each number on its own:
                # origin to [0, side], size to at most the side (measured on boxes that leave it).
                box = np.clip(box, 0, [width, height, width, height])
                cls = int(litert["detection_classes"][i, k])
                ours.append((box, labels[cls], float(litert["detection_scores"][i, k])))
            theirs = [(r, names[j]) for j, r in enumerate(rows) if int(r[0]) == i]
            used = [False] * len(theirs)
            total += len(ours)
            for box, cls, score in ours:
                best = None
                for j, (r, name) in enumerate(theirs):
                    if used[j] or name != cls:
                        continue
                    box_error = float(np.abs(r[1:5] - box).max())
                    score_error = abs(float(r[5]) - score)
                    close = (
                        box_error <= MEDIAPIPE_BOX_TOLERANCE_PX
                        and score_error <= MEDIAPIPE_SCORE_TOLERANCE
                    )
                    if close and (best is None or score_error < best[1]):
                        best = (j, score_error, box_error)
                if best is not None:
                    used[best[0]] = True
                    matched += 1
                    worst_score = max(worst_score, best[1])
                    worst_box = max(worst_box, best[2])
            extra += used.count(False)
        return {
            "images": len(litert["num_detections"]),
            "litert_detections": total,
            "matched": matched,
            "mediapipe_unmatched": extra,
            "max_box_difference_px": worst_box,
            "max_score_difference": worst_score,
            "passed": matched == total and extra == 0 and total > 0,
        }

    def check(self, mode: str, summary: dict) -> str:
        if summary["eval_examples"] == 0:
            return "failed: no eval images"
        own = summary.get("own_keras", summary)
        if mode == "float32":
            gap = abs(own["map_gap"])
            if gap > MAX_FLOAT32_MAP_GAP:
                return f"failed: mAP {own['map']:.4f} vs Keras {own['keras_map']:.4f}"
            return "passed"
        if own["keras_map50"] < MIN_MAP50_TO_CHECK:
            return (
                f"unchecked: the Keras model's mAP@.5 is {own['keras_map50']:.3f} (< "
                f"{MIN_MAP50_TO_CHECK}): too little found to compare; TFLite {own['map50']:.3f}"
            )
        if own["map50"] < MIN_INTEGER_MAP_RATIO * own["keras_map50"]:
            return (
                f"failed: mAP@.5 {own['map50']:.3f} < {MIN_INTEGER_MAP_RATIO} x the Keras "
                f"model's {own['keras_map50']:.3f}"
            )
        return "passed"

    def examples_png(self, batch: dict, outputs: dict, preprocessing: Preprocessing) -> bytes:
        """The eval images with their true boxes (green, dashed) and the model's detections
        scoring at least EXAMPLE_MIN_SCORE (red, class and score)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        count = len(batch["image"])
        cols = min(count, 4)
        rows = -(-count // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
        size = preprocessing.input_size
        for i, ax in enumerate(axes.flat):
            ax.axis("off")
            if i >= count:
                continue
            pixels = np.clip(batch["image"][i] * preprocessing.std + preprocessing.mean, 0, 255)
            ax.imshow(pixels.astype(np.uint8))
            for box in batch["boxes"][i][: int(batch["num_boxes"][i])]:
                y0, x0, y1, x1 = box * size
                ax.add_patch(_rectangle(x0, y0, x1, y1, "lime", "--"))
            for box, c, s in zip(
                outputs["detection_boxes"][i], outputs["detection_classes"][i],
                outputs["detection_scores"][i], strict=True,
            ):  # fmt: skip
                if s < EXAMPLE_MIN_SCORE:
                    continue
                y0, x0, y1, x1 = np.clip(box, 0, 1) * size
                ax.add_patch(_rectangle(x0, y0, x1, y1, "red", "-"))
                name = self.class_names[int(c)] if int(c) < len(self.class_names) else str(c)
                ax.text(x0, y0, f"{name} {s:.2f}", color="white", fontsize=6,
                        va="bottom", bbox={"facecolor": "red", "pad": 1, "lw": 0})  # fmt: skip
        fig.suptitle(f"true boxes (green, dashed), detections >= {EXAMPLE_MIN_SCORE} (red)")
        fig.tight_layout()
        return fileio.png_bytes(fig, dpi=100)

    def finetune(self):
        def to_pair(ex):
            positive = tf.cast(ex["cls_targets"] > 0, tf.float32)[..., None]
            box_targets = tf.concat([ex["box_targets"], positive], -1)
            return ex["image"], (box_targets, tf.cast(ex["cls_targets"], tf.float32))

        return to_pair, loss_lib.for_fit(self.loss_name, self.num_classes), []


def _rectangle(x0, y0, x1, y1, colour, style):
    from matplotlib.patches import Rectangle

    return Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=colour, ls=style, lw=1.2)


def _is_backbone(name: str) -> bool:
    return not name.startswith(("ssd_extra_", "box_", "class_"))
