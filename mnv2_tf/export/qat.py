"""Quantization-aware fine-tuning with tensorflow-model-optimization.

`quantize_model` annotates every layer of the trained float model and applies the default
8-bit scheme: fake-quantization of weights (per channel) and activations, batch norm
folded into the preceding convolution, ReLU6 fused. A short fine-tune at a low learning
rate on the training split (with the training augmentation) then lets the weights adapt
to int8 rounding; the result converts to a full-integer model without calibration.
"""

from __future__ import annotations

import math
import time

import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras

from mnv2_tf.data import make_dataset
from mnv2_tf.errors import UserError
from mnv2_tf.export.run import Run


def quantize(model: tf_keras.Model) -> tf_keras.Model:
    """The QAT version of `model` (weights copied), or a one-line error naming the layer."""
    try:
        return tfmot.quantization.keras.quantize_model(model)
    except (ValueError, RuntimeError, TypeError) as e:
        raise UserError(
            f"quantization-aware training cannot wrap this model: {str(e).splitlines()[0][:200]}"
        ) from e


def finetune(
    run: Run,
    *,
    epochs: float = 1.0,
    learning_rate: float = 1e-3,
    batch_size: int | None = None,
    log=print,
) -> tuple[tf_keras.Model, dict]:
    """Quantization-aware fine-tuning of `run.model` on its training split.

    Args:
      run: the trained run.
      epochs: passes over the training split (fractions allowed); 0 converts the annotated
        model without training (the ranges then come from calibration alone).
      learning_rate: peak learning rate for `batch_size` images (SGD, Nesterov momentum
        0.9, cosine decay to 0).
      batch_size: default: the run's training batch size.

    Returns:
      (the QAT Keras model, a summary: steps, seconds, final training loss/accuracy).
    """
    config = run.config
    batch_size = batch_size or config.train.batch_size
    qat_model = quantize(run.model)
    summary = {"epochs": epochs, "learning_rate": learning_rate, "batch_size": batch_size}
    if epochs <= 0:
        summary.update(steps=0, seconds=0.0)
        return qat_model, summary
    train_ds, source = make_dataset(
        config.data, run.preprocessing, config.data.train_split, training=True,
        batch_size=batch_size, seed=config.train.seed + 1,
    )  # fmt: skip
    steps = max(1, math.ceil(epochs * source.num_examples / batch_size))
    schedule = tf_keras.optimizers.schedules.CosineDecay(learning_rate, steps)
    qat_model.compile(
        optimizer=tf_keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )
    pairs = train_ds.map(lambda ex: (ex["image"], ex["label"]), num_parallel_calls=tf.data.AUTOTUNE)
    log(f"quantization-aware fine-tuning: {steps} steps of {batch_size} at lr {learning_rate}")
    start = time.time()
    history = qat_model.fit(pairs, epochs=1, steps_per_epoch=steps, verbose=2)
    summary.update(
        steps=steps,
        seconds=time.time() - start,
        train_loss=float(history.history["loss"][-1]),
        train_accuracy=float(history.history["accuracy"][-1]),
    )
    if not math.isfinite(summary["train_loss"]):
        raise UserError(
            "quantization-aware fine-tuning diverged (NaN loss); lower --qat_learning_rate"
        )
    return qat_model, summary
