"""Exponential moving average of the weights (paper Section 6.1: decay 0.9999).

As slim (tf.train.ExponentialMovingAverage with num_updates), the decay used at step n is
min(decay, (1 + n) / (10 + n)), so short runs average over their own length instead of
being dominated by the initial weights. BatchNorm's moving statistics are averaged too.
Evaluation and export use the averaged weights (`swapped`).
"""

from __future__ import annotations

import contextlib

import tensorflow as tf
import tf_keras


class EMA(tf.Module):
    """Shadow copies of a model's weights, updated after each optimizer step."""

    def __init__(self, model: tf_keras.Model, decay: float):
        super().__init__(name="ema")
        self.decay = decay
        weights = list(model.weights)
        # A closure, not an attribute: the checkpoint saves the model's weights once, under
        # `model/`, and only the shadows under `ema/`.
        self._model_weights = lambda: weights
        self.shadows = [
            tf.Variable(w, trainable=False, name=w.name.split(":")[0].replace("/", "_") + "_ema")
            for w in weights
        ]

    def update(self, step: tf.Tensor) -> None:
        n = tf.cast(step, tf.float32)
        decay = tf.minimum(self.decay, (1.0 + n) / (10.0 + n))
        for shadow, weight in zip(self.shadows, self._model_weights(), strict=True):
            shadow.assign(shadow * decay + tf.cast(weight, shadow.dtype) * (1.0 - decay))

    def copy_to_model(self) -> None:
        for shadow, weight in zip(self.shadows, self._model_weights(), strict=True):
            weight.assign(shadow)

    @contextlib.contextmanager
    def swapped(self):
        """Inside: the model holds the averaged weights; after: its own again."""
        backup = [tf.identity(w) for w in self._model_weights()]
        self.copy_to_model()
        try:
            yield
        finally:
            for value, weight in zip(backup, self._model_weights(), strict=True):
                weight.assign(value)
