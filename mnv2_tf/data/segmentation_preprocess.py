"""Per-example preprocessing of segmentation data: pixels and mask move together.

Training (DeepLab's `preprocess_image_and_label`): a random scale in [min_scale, max_scale]
of the evaluation view's (the image's longer side at the input size: DeepLab's raw scales
assume images about the crop's size, as VOC's ~500 px at 513; relative to the evaluation
view they mean the same for any image and input size), image bilinear, mask
nearest-neighbour (ids are never interpolated), padding to at least
the crop size (image with the mean pixel, so it normalizes to 0; mask with 255, ignored),
a random crop of the model's input size taken at the same offset from both, a horizontal
flip of both (p = 0.5).
Evaluation: the image scaled so that its longer side is the input size (aspect kept) and
padded to a square, the mask alike (nearest, padded with 255): every labelled pixel is
scored once, at the model's resolution.
Both give `{"image": float32 [S, S, 3] normalized, "mask": uint8 [S, S]}`.
"""

from __future__ import annotations

import tensorflow as tf

from mnv2_tf.data import preprocess
from mnv2_tf.models.common import Preprocessing

IGNORE = 255


def decode_mask(mask: tf.Tensor) -> tf.Tensor:
    """uint8 [H, W, 1] class ids from a grayscale PNG (the sources' re-encoding) or ids."""
    if mask.dtype == tf.string:
        return tf.io.decode_png(mask, channels=1)
    return tf.cast(tf.reshape(mask, tf.concat([tf.shape(mask)[:2], [1]], 0)), tf.uint8)


def _pad_to(image, mask, height, width, mean: float):
    """Pads image (float, with `mean`) and mask (with IGNORE) at the bottom/right to at least
    height x width."""
    shape = tf.shape(image)[:2]
    pad_h, pad_w = tf.maximum(height - shape[0], 0), tf.maximum(width - shape[1], 0)
    paddings = [[0, pad_h], [0, pad_w], [0, 0]]
    image = tf.pad(image - mean, paddings) + mean
    mask = tf.pad(tf.cast(mask, tf.int32) - IGNORE, paddings) + IGNORE
    return image, tf.cast(mask, tf.uint8)


def augment(image, mask, size: int, min_scale: float, max_scale: float, mean: float):
    """Random scale (relative to the evaluation view), pad, crop `size` x `size` and flip of
    an image (uint8/float [H, W, 3]) and its mask (uint8 [H, W, 1]), together."""
    image = tf.cast(image, tf.float32)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.random.uniform([], min_scale, max_scale) * size / tf.reduce_max(shape)
    new = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), 1)
    image = tf.image.resize(image, new, method="bilinear")
    mask = tf.image.resize(mask, new, method="nearest")
    image, mask = _pad_to(image, mask, size, size, mean)
    both = tf.concat([image, tf.cast(mask, tf.float32)], axis=-1)
    both = tf.image.random_crop(both, [size, size, 4])
    both = tf.cond(tf.random.uniform([]) < 0.5, lambda: tf.reverse(both, axis=[1]), lambda: both)
    return both[..., :3], tf.cast(both[..., 3:], tf.uint8)


def fit(image, mask, size: int, mean: float):
    """The evaluation view: longer side to `size` (aspect kept), padded to a square."""
    image = tf.cast(image, tf.float32)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = size / tf.reduce_max(shape)
    new = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), 1)
    image = tf.image.resize(image, new, method="bilinear")
    mask = tf.image.resize(mask, new, method="nearest")
    return _pad_to(image, mask, size, size, mean)


def make_fn(
    preprocessing: Preprocessing,
    *,
    training: bool,
    encoded: bool,
    min_scale: float = 0.5,
    max_scale: float = 2.0,
):
    """The per-example map of a segmentation source ({"image", "mask"})."""
    size = preprocessing.input_size

    def fn(example: dict) -> dict:
        image = preprocess.decode(example["image"], encoded)
        mask = decode_mask(example["mask"])
        if training:
            image, mask = augment(image, mask, size, min_scale, max_scale, preprocessing.mean)
        else:
            image, mask = fit(image, mask, size, preprocessing.mean)
        image = image * preprocessing.scale + preprocessing.offset
        image = tf.ensure_shape(image, [size, size, 3])
        return {"image": image, "mask": tf.ensure_shape(mask[..., 0], [size, size])}

    return fn


def blank(size: int) -> dict:
    """The labels of an eval padding example: every pixel ignored."""
    return {"mask": tf.fill([size, size], tf.constant(IGNORE, tf.uint8))}
