"""Quantization-aware fine-tuning with tensorflow-model-optimization.

`quantize_model` annotates every layer of the trained float model (the task's inference
model) and applies the default 8-bit scheme: fake-quantization of weights (per channel) and
activations, batch norm folded into the preceding convolution, ReLU6 fused. A short
fine-tune at a low learning rate on the training split (with the training augmentation, and
the task's loss on the inference model's outputs) then lets the weights adapt to int8
rounding; the result converts to a full-integer model without calibration.
"""

from __future__ import annotations

import math
import time

import tensorflow as tf
import tf_keras

from mnv2_tf.errors import UserError
from mnv2_tf.export.run import Run


def quantize(model: tf_keras.Model) -> tf_keras.Model:
    """The QAT version of `model` (weights copied), or a one-line error naming the layer."""
    # Imported here: tfmot takes a second to import (it loads Keras 3 too), and every export
    # without QAT, every pipeline.py and export_tflite.py start, would pay it.
    import tensorflow_model_optimization as tfmot

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
      (the QAT Keras model, a summary: steps, seconds, the final training loss and the
      task's fine-tuning metrics).
    """
    config = run.config
    batch_size = batch_size or config.train.batch_size
    qat_model = quantize(run.model)
    summary = {"epochs": epochs, "learning_rate": learning_rate, "batch_size": batch_size}
    if epochs <= 0:
        summary.update(steps=0, seconds=0.0)
        return qat_model, summary
    data_cfg = config.data.copy_and_resolve_references()
    data_cfg.cache = False  # a part of one pass: a partial cache would warn
    train_ds, source = run.task.dataset(
        run.preprocessing, data_cfg.train_split, training=True, batch_size=batch_size,
        seed=config.train.seed + 1, data_cfg=data_cfg,
    )  # fmt: skip
    steps = max(1, math.ceil(epochs * source.num_examples / batch_size))
    schedule = tf_keras.optimizers.schedules.CosineDecay(learning_rate, steps)
    to_pair, loss, metrics = run.task.finetune()
    qat_model.compile(
        optimizer=tf_keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True),
        loss=loss,
        metrics=metrics,
    )
    pairs = train_ds.map(to_pair, num_parallel_calls=tf.data.AUTOTUNE)
    log(f"quantization-aware fine-tuning: {steps} steps of {batch_size} at lr {learning_rate}")
    start = time.time()
    history = qat_model.fit(pairs, epochs=1, steps_per_epoch=steps, verbose=2)
    summary.update(steps=steps, seconds=time.time() - start)
    summary.update({f"train_{k}": float(v[-1]) for k, v in history.history.items()})
    if not math.isfinite(summary["train_loss"]):
        raise UserError(
            "quantization-aware fine-tuning diverged (NaN loss); lower export.qat_learning_rate"
        )
    return qat_model, summary
