"""Per-pixel softmax cross-entropy over the labelled pixels (255 = ignore)."""

from __future__ import annotations

import tensorflow as tf
import tf_keras

IGNORE = 255


def per_example(logits, mask) -> tf.Tensor:
    """Mean cross-entropy over each image's labelled pixels [B] (0 for an image without
    any): logits [B, H, W, K] at the mask's size, mask [B, H, W] of ids / IGNORE."""
    logits = tf.cast(logits, tf.float32)
    mask = tf.cast(mask, tf.int32)
    valid = tf.not_equal(mask, IGNORE)
    labels = tf.where(valid, mask, 0)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    weight = tf.cast(valid, tf.float32)
    total = tf.reduce_sum(ce * weight, axis=[1, 2])
    count = tf.reduce_sum(weight, axis=[1, 2])
    return tf.math.divide_no_nan(total, count)


def pixel_accuracy(logits, mask) -> tf.Tensor:
    """Per-image share of labelled pixels whose argmax is right [B]."""
    mask = tf.cast(mask, tf.int32)
    valid = tf.cast(tf.not_equal(mask, IGNORE), tf.float32)
    right = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), mask), tf.float32)
    return tf.math.divide_no_nan(
        tf.reduce_sum(right * valid, axis=[1, 2]), tf.reduce_sum(valid, axis=[1, 2])
    )


class IgnoringCrossEntropy(tf_keras.losses.Loss):
    """For `fit` (quantization-aware fine-tuning of the inference model): its feature-map
    logits, upsampled bilinearly to `size` as the training model does, against the mask
    [B, size, size], labelled pixels only."""

    def __init__(self, size: int, name="ignoring_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.size = size

    def call(self, y_true, y_pred):
        logits = tf.image.resize(tf.cast(y_pred, tf.float32), [self.size, self.size])
        mask = tf.reshape(y_true, tf.shape(logits)[:3])
        return per_example(logits, mask)

    def get_config(self):
        return {**super().get_config(), "size": self.size}
