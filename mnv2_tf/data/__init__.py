"""The tf.data input pipeline: sources (TFDS, image folder, IDX) and preprocessing."""

from mnv2_tf.data.pipeline import image_fn, make_dataset, resolve_augment
from mnv2_tf.data.sources import Source, find_unreadable, load, read_idx

__all__ = [
    "Source",
    "find_unreadable",
    "image_fn",
    "load",
    "make_dataset",
    "read_idx",
    "resolve_augment",
]
