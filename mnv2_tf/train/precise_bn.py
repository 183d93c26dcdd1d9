"""Precise BatchNorm statistics (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021).

The moving averages of a short run still hold much of their initial values (at momentum 0.99,
64 steps leave half), and the averaged (EMA) weights that evaluation and export use were
never the ones those statistics were collected for. Before each evaluation and the saved
models, the trainer re-estimates them for the weights in use on `train.precise_bn_images`
training images with the eval preprocessing; export does the same for the weights of an
interrupted run's checkpoint, so both agree with what `final/model.h5` would hold.
"""

from __future__ import annotations

import math

import tensorflow as tf
import tf_keras

from mnv2_tf import data


def dataset(task, preprocessing, source: data.Source, batch_size: int) -> tf.data.Dataset | None:
    """The first `train.precise_bn_images` images of `source` (full batches of
    `batch_size`, eval preprocessing, in the source's order: the same images every time),
    or None when precise BN is off or the split is smaller than a batch."""
    config = task.config
    batches = min(
        math.ceil(config.train.precise_bn_images / batch_size), source.num_examples // batch_size
    )
    if batches <= 0:
        return None
    uncached = config.data.copy_and_resolve_references()
    uncached.cache = False  # a partly read cache would warn at every epoch
    ds, _ = task.dataset(
        preprocessing, config.data.train_split, training=False, batch_size=batch_size,
        source=source, data_cfg=uncached,
    )  # fmt: skip
    return ds.take(batches)


def update(model: tf_keras.Model, batches, strategy) -> int:
    """Sets every BatchNorm's moving statistics to the mean of its batch statistics over
    `batches` (distributed batches of {"image", ...}); returns how many batches it saw.

    The momentum of batch i (from 0) is i / (i + 1): the moving average then equals the
    running mean of the batch statistics. Eager calls: BatchNorm reads its momentum at
    call time. Under a distribution strategy each replica averages its own batches and
    the moving statistics, ON_READ variables, read back as the mean over replicas.
    """
    norms = [
        layer for layer in model.submodules if isinstance(layer, tf_keras.layers.BatchNormalization)
    ]
    if not norms:
        return 0
    momenta = [layer.momentum for layer in norms]
    seen = 0
    try:
        for inputs in batches:
            for layer in norms:
                layer.momentum = seen / (seen + 1)
            strategy.run(lambda x: model(x["image"], training=True), args=(inputs,))
            seen += 1
    finally:
        for layer, momentum in zip(norms, momenta, strict=True):
            layer.momentum = momentum
    return seen
