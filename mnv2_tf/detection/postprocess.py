"""From box codes and class scores to detections: TFLite's `TFLite_Detection_PostProcess`.

`detections` is a `tf.function` with `experimental_implements` naming that op and its
attributes: the TFLite converter replaces the whole function by the op (a builtin custom op
every TFLite runtime, MediaPipe and the Task Library ship; no `allow_custom_ops`), and in
TensorFlow the function's body runs instead, computing what the op computes: decode the
codes against the anchors, take each anchor's best class (`max_classes_per_detection` 1,
the op's fast path), drop scores below the threshold, greedy class-agnostic NMS, keep
`max_detections`. The Keras model's detections and the `.tflite` file's therefore mean the
same and compare one to one.

Outputs, in the order MediaPipe's ObjectDetector and the TFLite Task Library read them
(location, category, score, number of detections), all float32:
  detection_boxes [B, D, 4] (ymin, xmin, ymax, xmax, normalized), detection_classes [B, D]
  (0-based), detection_scores [B, D], num_detections [B].
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from mnv2_tf.detection import boxes as box_lib

OP_NAME = "TFLite_Detection_PostProcess"
OUTPUT_NAMES = ("detection_boxes", "detection_classes", "detection_scores", "num_detections")


@dataclasses.dataclass(frozen=True)
class Settings:
    max_detections: int = 100
    score_threshold: float = 1e-8
    iou_threshold: float = 0.6
    # 1 when the class scores include a background column first (softmax), else 0.
    label_offset: int = 0


def _implements(settings: Settings, num_classes: int) -> str:
    """The op and its attributes, in the text form `experimental_implements` takes."""
    y, x, h, w = box_lib.SCALE_FACTORS
    attrs = {
        "max_detections": ("i", settings.max_detections),
        "max_classes_per_detection": ("i", 1),
        "detections_per_class": ("i", 100),
        "use_regular_nms": ("b", "false"),
        "nms_score_threshold": ("f", settings.score_threshold),
        "nms_iou_threshold": ("f", settings.iou_threshold),
        "num_classes": ("i", num_classes),
        "y_scale": ("f", y),
        "x_scale": ("f", x),
        "h_scale": ("f", h),
        "w_scale": ("f", w),
    }
    parts = [f'name: "{OP_NAME}"']
    parts += [f'attr {{ key: "{k}" value {{ {t}: {v} }} }}' for k, (t, v) in attrs.items()]
    return " ".join(parts)


def reference(codes, scores, anchors, settings: Settings) -> tuple[tf.Tensor, ...]:
    """What the op computes, in TensorFlow, for a batch: (boxes, classes, scores, count)."""
    decoded = box_lib.decode(codes, anchors)  # [B, A, 4]
    scores = tf.convert_to_tensor(scores, tf.float32)[..., settings.label_offset :]
    best = tf.reduce_max(scores, axis=-1)
    best_class = tf.cast(tf.argmax(scores, axis=-1), tf.float32)
    best = tf.where(best >= settings.score_threshold, best, -1.0)
    indices, count = tf.image.non_max_suppression_padded(
        decoded,
        best,
        settings.max_detections,
        iou_threshold=settings.iou_threshold,
        score_threshold=0.0 if settings.score_threshold > 0 else -0.5,
        pad_to_max_output_size=True,
    )
    keep = tf.sequence_mask(count, settings.max_detections)
    take = lambda t: tf.gather(t, indices, batch_dims=1)  # noqa: E731
    out_boxes = tf.where(keep[..., None], take(decoded), 0.0)
    out_classes = tf.where(keep, take(best_class), 0.0)
    out_scores = tf.where(keep, take(best), 0.0)
    return out_boxes, out_classes, out_scores, tf.cast(count, tf.float32)


class PostProcess:
    """The named detection outputs of a batch; one TFLite op once converted. Built once per
    model (the function is traced once per input shape, not per call)."""

    def __init__(self, anchors: np.ndarray, settings: Settings, num_scores: int):
        self.anchors = np.asarray(anchors, np.float32)
        num_classes = num_scores - settings.label_offset

        @tf.function(experimental_implements=_implements(settings, num_classes))
        def post_process(box_encodings, class_predictions, anchor_boxes):
            return reference(box_encodings, class_predictions, anchor_boxes, settings)

        self.function = post_process

    def __call__(self, codes, scores) -> dict[str, tf.Tensor]:
        anchors = tf.constant(self.anchors)
        values = self.function(tf.cast(codes, tf.float32), tf.cast(scores, tf.float32), anchors)
        return dict(zip(OUTPUT_NAMES, values, strict=True))
