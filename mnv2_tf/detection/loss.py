"""SSD's training loss: smooth L1 on the box codes of matched anchors plus a classification
loss over all anchors, normalized by the number of matched anchors.

Two classification losses (`detection.loss`):

- "focal" (the default): sigmoid focal loss (Lin et al. 2017, gamma 2, alpha 0.25) over
  one logit per class, every anchor counted. It needs no per-image sort of the anchors'
  losses and no background logit, it is what the TF2 Object Detection zoo's SSD configs
  train with, and on our short runs it converged faster and more steadily than mining.
- "softmax": softmax cross-entropy over background + classes with 3:1 hard-negative
  mining (the original SSD and the paper's `ssdlite_mobilenet_v2_coco` config): all matched
  anchors, and the highest-loss unmatched anchors, three per match (at least
  `MIN_NEGATIVES` per image).
"""

from __future__ import annotations

import tensorflow as tf

LOSSES = ("focal", "softmax")
FOCAL_GAMMA = 2.0
FOCAL_ALPHA = 0.25
NEGATIVES_PER_POSITIVE = 3
MIN_NEGATIVES = 3


def class_outputs(loss: str, num_classes: int) -> int:
    """Logits per anchor: one per class (sigmoid), or background + classes (softmax)."""
    if loss not in LOSSES:
        raise ValueError(f"detection.loss must be one of {LOSSES}, got {loss!r}")
    return num_classes if loss == "focal" else num_classes + 1


def smooth_l1(codes, targets) -> tf.Tensor:
    """Huber (delta 1) summed over the 4 coordinates: [..., A]."""
    diff = tf.abs(codes - targets)
    return tf.reduce_sum(tf.where(diff < 1.0, 0.5 * diff * diff, diff - 0.5), axis=-1)


def focal(logits, cls_targets, num_classes: int) -> tf.Tensor:
    """Sigmoid focal loss summed over classes: [B, A]."""
    onehot = tf.one_hot(cls_targets - 1, num_classes)  # background (0) -> all zeros
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=onehot, logits=logits)
    p = tf.sigmoid(logits)
    p_t = onehot * p + (1 - onehot) * (1 - p)
    alpha = onehot * FOCAL_ALPHA + (1 - onehot) * (1 - FOCAL_ALPHA)
    return tf.reduce_sum(alpha * tf.pow(1 - p_t, FOCAL_GAMMA) * ce, axis=-1)


def mined_softmax(logits, cls_targets) -> tf.Tensor:
    """Softmax cross-entropy of matched anchors plus the hardest unmatched ones: [B, A]."""
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=cls_targets, logits=logits)
    positive = cls_targets > 0
    num_pos = tf.reduce_sum(tf.cast(positive, tf.int32), axis=1, keepdims=True)
    num_neg = tf.maximum(num_pos * NEGATIVES_PER_POSITIVE, MIN_NEGATIVES)
    negative_loss = tf.where(positive, -1.0, ce)
    # rank of each anchor among the negatives, by loss (0 = hardest)
    order = tf.argsort(negative_loss, axis=1, direction="DESCENDING")
    rank = tf.argsort(order, axis=1)
    hard = (rank < num_neg) & ~positive
    return ce * tf.cast(positive | hard, ce.dtype)


def per_example(outputs, cls_targets, box_targets, loss: str, num_classes: int) -> tf.Tensor:
    """The loss of each image [B], scaled so that its batch mean is the batch's summed loss
    divided by the batch's matched anchors (SSD's normalization).

    Args:
      outputs: [box codes [B, A, 4], class logits [B, A, K]] (the training model's).
      cls_targets: int32 [B, A] (0 background, class + 1).
      box_targets: [B, A, 4].
    """
    codes, logits = outputs
    positive = tf.cast(cls_targets > 0, tf.float32)
    box = tf.reduce_sum(smooth_l1(codes, box_targets) * positive, axis=1)
    if loss == "focal":
        cls = tf.reduce_sum(focal(logits, cls_targets, num_classes), axis=1)
    else:
        cls = tf.reduce_sum(mined_softmax(logits, cls_targets), axis=1)
    matches_per_image = tf.maximum(tf.reduce_mean(tf.reduce_sum(positive, axis=1)), 1.0)
    return (box + cls) / matches_per_image


def _logits_from(scores, loss: str):
    """Logits that give `scores` again (the inference model outputs scores): log-odds of
    sigmoid scores; log-probabilities of softmax ones (softmax is shift-invariant)."""
    p = tf.clip_by_value(scores, 1e-6, 1 - 1e-6)
    return tf.math.log(p) - tf.math.log1p(-p) if loss == "focal" else tf.math.log(p)


def for_fit(loss: str, num_classes: int):
    """The same loss as two Keras losses, for `fit` on the inference model ([codes, scores]):
    targets (box codes + a positive flag [B, A, 5], class targets [B, A])."""

    def normalizer(positive):
        return tf.maximum(tf.reduce_mean(tf.reduce_sum(positive, axis=1)), 1.0)

    def box_loss(y_true, y_pred):
        positive = y_true[..., 4]
        box = tf.reduce_sum(smooth_l1(y_pred, y_true[..., :4]) * positive, axis=1)
        return box / normalizer(positive)

    def class_loss(y_true, y_pred):
        cls_targets = tf.cast(tf.reshape(y_true, tf.shape(y_pred)[:2]), tf.int32)
        logits = _logits_from(tf.cast(y_pred, tf.float32), loss)
        if loss == "focal":
            per_anchor = focal(logits, cls_targets, num_classes)
        else:
            per_anchor = mined_softmax(logits, cls_targets)
        positive = tf.cast(cls_targets > 0, tf.float32)
        return tf.reduce_sum(per_anchor, axis=1) / normalizer(positive)

    return [box_loss, class_loss]
