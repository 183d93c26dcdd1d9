"""Optimizers and learning-rate schedules: the paper's recipe and a modern one.

Paper (Section 6.1): RMSProp with decay 0.9, momentum 0.9 and epsilon 1.0 (TF1 semantics:
epsilon inside the square root, which `tf_keras.optimizers.RMSprop` keeps), learning rate
0.045 for a batch of 96 scaled linearly with the batch, x0.98 per epoch, weight decay 4e-5.
Modern: SGD with Nesterov momentum or AdamW, linear warm-up then cosine decay.
DeepLab: SGD with momentum, polynomial decay ("poly": peak x (1 - progress) ^ 0.9).
"""

from __future__ import annotations

import math

import tensorflow as tf
import tf_keras

from mnv2_tf.errors import UserError

OPTIMIZERS = ("rmsprop", "sgd", "adamw")
SCHEDULES = ("exponential", "cosine", "poly")
POLY_POWER = 0.9  # DeepLab's learning_power


class WarmupSchedule(tf_keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0, then exponential (staircase per `decay_steps`), cosine or
    polynomial decay."""

    def __init__(
        self,
        peak: float,
        total_steps: int,
        warmup_steps: int = 0,
        kind: str = "exponential",
        decay_rate: float = 0.98,
        decay_steps: int = 1,
    ):
        super().__init__()
        if kind not in SCHEDULES:
            raise UserError(f"unknown train.schedule {kind!r}; choose one of {SCHEDULES}")
        self.peak = peak
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = int(warmup_steps)
        self.kind = kind
        self.decay_rate = decay_rate
        self.decay_steps = max(int(decay_steps), 1)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = tf.cast(self.warmup_steps, tf.float32)
        after = tf.maximum(step - warmup, 0.0)
        if self.kind == "exponential":
            decayed = self.peak * tf.pow(self.decay_rate, tf.floor(after / self.decay_steps))
        else:
            span = tf.maximum(float(self.total_steps - self.warmup_steps), 1.0)
            progress = tf.minimum(after / span, 1.0)
            if self.kind == "poly":
                decayed = self.peak * tf.pow(1.0 - progress, POLY_POWER)
            else:
                decayed = self.peak * 0.5 * (1.0 + tf.cos(math.pi * progress))
        if self.warmup_steps:
            return tf.where(step < warmup, self.peak * (step + 1.0) / warmup, decayed)
        return decayed

    def get_config(self):
        return dict(
            peak=self.peak,
            total_steps=self.total_steps,
            warmup_steps=self.warmup_steps,
            kind=self.kind,
            decay_rate=self.decay_rate,
            decay_steps=self.decay_steps,
        )


def peak_learning_rate(train_cfg) -> float:
    """The configured rate, scaled linearly from `lr_batch_size` to the global batch."""
    return train_cfg.learning_rate * train_cfg.batch_size / train_cfg.lr_batch_size


def make_schedule(train_cfg, steps_per_epoch: int) -> WarmupSchedule:
    return WarmupSchedule(
        peak=peak_learning_rate(train_cfg),
        total_steps=train_cfg.epochs * steps_per_epoch,
        warmup_steps=round(train_cfg.warmup_epochs * steps_per_epoch),
        kind=train_cfg.schedule,
        decay_rate=train_cfg.decay_rate,
        decay_steps=round(train_cfg.decay_epochs * steps_per_epoch),
    )


def make_optimizer(
    train_cfg, schedule: tf_keras.optimizers.schedules.LearningRateSchedule
) -> tf_keras.optimizers.Optimizer:
    """The configured optimizer; AdamW's decoupled decay skips depthwise kernels, BN, biases."""
    name = train_cfg.optimizer
    if name == "rmsprop":
        return tf_keras.optimizers.RMSprop(
            schedule,
            rho=train_cfg.rmsprop_rho,
            momentum=train_cfg.momentum,
            epsilon=train_cfg.rmsprop_epsilon,
        )
    if name == "sgd":
        return tf_keras.optimizers.SGD(schedule, momentum=train_cfg.momentum, nesterov=True)
    if name == "adamw":
        optimizer = tf_keras.optimizers.AdamW(schedule, weight_decay=train_cfg.weight_decay)
        optimizer.exclude_from_weight_decay(var_names=["depthwise", "bn", "BN", "bias"])
        return optimizer
    raise UserError(f"unknown train.optimizer {name!r}; choose one of {OPTIMIZERS}")


def decayed_kernels(model: tf_keras.Model) -> list[tf.Variable]:
    """Kernels that get L2 weight decay: conv and dense, not depthwise (the paper and slim
    leave depthwise filters undecayed: they have few parameters)."""
    kernels = []
    for layer in model.layers:
        if isinstance(layer, tf_keras.layers.DepthwiseConv2D):
            continue
        if isinstance(layer, (tf_keras.layers.Conv2D, tf_keras.layers.Dense)):
            kernels.append(layer.kernel)
    return kernels


def l2_penalty(kernels: list[tf.Variable], weight_decay: float) -> tf.Tensor:
    """weight_decay * sum(w^2) / 2, as slim's l2_regularizer."""
    if not kernels or not weight_decay:
        return tf.constant(0.0)
    return weight_decay * tf.add_n([tf.nn.l2_loss(tf.cast(k, tf.float32)) for k in kernels])
