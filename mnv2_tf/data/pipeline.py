"""The input pipeline: a source, then cache -> shuffle -> repeat -> map -> batch -> prefetch.

Training batches repeat forever (the trainer counts steps); evaluation visits every image
exactly once: the last batch is padded to full size with examples whose `valid` is 0, so
batches have a static shape (TPUs need it) and padding never counts.

The per-example map is the task's (`example_fn`, transforming pixels and labels together,
and `blank`, the labels of a padding example); the default is the image-level one of
classification sources, {"image", "label"}.
"""

from __future__ import annotations

import tensorflow as tf

from mnv2_tf.data import preprocess, sources
from mnv2_tf.models.common import Preprocessing

SMALL_SOURCE_MAX_SIDE = 64


def resolve_augment(data_cfg, source: sources.Source) -> str:
    """ "auto" picks "small" for sources of small images (IDX, 28-64 px TFDS sets)."""
    augment = data_cfg.augment
    if augment != "auto":
        return augment
    height = source.image_shape[0]
    return "small" if height is not None and height <= SMALL_SOURCE_MAX_SIDE else "inception"


def image_fn(data_cfg, source: sources.Source, preprocessing: Preprocessing, training: bool):
    """The image-level per-example map of `source` (labels pass through unchanged)."""
    return preprocess.make_fn(
        training=training,
        encoded=source.encoded,
        preprocessing=preprocessing,
        augment=resolve_augment(data_cfg, source),
        crop_scale=tuple(data_cfg.crop_scale),
        small_pad=data_cfg.small_pad,
        random_erasing_prob=data_cfg.random_erasing,
    )


def make_dataset(
    data_cfg,
    preprocessing: Preprocessing,
    split: str,
    *,
    training: bool,
    batch_size: int,
    seed: int = 0,
    source: sources.Source | None = None,
    example_fn=None,
    blank: dict | None = None,
) -> tuple[tf.data.Dataset, sources.Source]:
    """Builds the batched dataset of `split`.

    Args:
      data_cfg: the config's `data` section.
      preprocessing: the model's constants (input size, normalization, eval crop).
      split: the split to read.
      training: augment, shuffle and repeat; otherwise a single padded pass.
      batch_size: the global batch size.
      seed: shuffle seed.
      source: an already loaded source of that split.
      example_fn: the per-example map (training or not, as `training` says); default:
        `image_fn` of this source.
      blank: the non-image fields of a padding example; default {"label": 0}.

    Returns:
      (dataset of {"image": float32 [B, S, S, 3], labels...} (+ "valid" float32 [B]
      when evaluating), the source).
    """
    source = source or sources.load(data_cfg, split)
    fn = example_fn or image_fn(data_cfg, source, preprocessing, training)
    ds = source.dataset
    if data_cfg.cache:
        ds = ds.cache()
    if training:
        buffer = min(source.num_examples, data_cfg.shuffle_buffer)
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True).repeat()
        ds = ds.map(
            fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=data_cfg.get("deterministic")
        )
        ds = ds.batch(batch_size, drop_remainder=True)
    else:
        ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.map(lambda ex: {**ex, "valid": tf.constant(1.0)})
        padding = -source.num_examples % batch_size
        if padding:
            size = preprocessing.input_size
            labels = blank if blank is not None else {"label": tf.constant(0, tf.int64)}
            pad = {"image": tf.zeros([size, size, 3]), **labels, "valid": tf.constant(0.0)}
            ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat(padding))
        ds = ds.batch(batch_size, drop_remainder=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    ds = ds.with_options(options)
    return ds.prefetch(tf.data.AUTOTUNE), source
