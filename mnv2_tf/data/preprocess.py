"""Image preprocessing as small pure functions, composed into one map over example dicts.

Training (paper Section 6.1 trains with Inception preprocessing):
  - "inception": random-resized crop (area 8%-100%, aspect 3/4-4/3; a JPEG decodes only the
    crop through `tf.image.decode_and_crop_jpeg`), horizontal flip.
  - "small": for 28-32 px sources (Fashion-MNIST, CIFAR): resize to the model's input size,
    zero-pad, random crop back, flip, optional random erasing (Zhong et al. 2017).
  - "paste": for grayscale items on black (Fashion-MNIST, MNIST), pretraining a backbone for
    scenes: the item's pixels as its opacity, tinted one random colour, at a random scale
    and place over a random colour gradient with noise (as the detection and segmentation
    composites draw their items), flip. Evaluation: the plain resize, as "small".
Evaluation: a central square crop holding `crop_fraction` of the shorter side, resized
("inception"), or a plain resize ("small"). Grayscale becomes RGB. Pixels map to [-1, 1]
by the model's own `Preprocessing` constants.

Every function works eagerly and inside `tf.data` (tests check both).
"""

from __future__ import annotations

import tensorflow as tf

from mnv2_tf.models.common import Preprocessing, preprocess_input


def to_rgb(image: tf.Tensor) -> tf.Tensor:
    """uint8 HxWx1 or HxWx3 -> HxWx3."""
    if image.shape[-1] == 1:
        return tf.image.grayscale_to_rgb(image)
    if image.shape[-1] is None:
        return tf.cond(
            tf.shape(image)[-1] == 1,
            lambda: tf.image.grayscale_to_rgb(image),
            lambda: image[..., :3],
        )
    return image[..., :3]


def decode(image: tf.Tensor, encoded: bool) -> tf.Tensor:
    """The whole image as uint8 RGB, from bytes (any format TF decodes) or an array."""
    if encoded:
        return tf.io.decode_image(image, channels=3, expand_animations=False)
    return to_rgb(image)


def image_shape(image: tf.Tensor, encoded: bool) -> tf.Tensor:
    """(height, width) of an encoded or decoded image, reading only the header for JPEG."""
    if not encoded:
        return tf.shape(image)[:2]
    return tf.cond(
        tf.io.is_jpeg(image),
        lambda: tf.image.extract_jpeg_shape(image)[:2],
        lambda: tf.shape(tf.io.decode_image(image, channels=3, expand_animations=False))[:2],
    )


def crop(image: tf.Tensor, encoded: bool, offset: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """The window (offset, size) of the image as uint8 RGB; a JPEG decodes only that window."""
    window = tf.stack([offset[0], offset[1], size[0], size[1]])
    if not encoded:
        return tf.slice(to_rgb(image), [offset[0], offset[1], 0], [size[0], size[1], 3])
    return tf.cond(
        tf.io.is_jpeg(image),
        lambda: tf.image.decode_and_crop_jpeg(image, window, channels=3),
        lambda: tf.slice(decode(image, True), [offset[0], offset[1], 0], [size[0], size[1], 3]),
    )


def random_resized_crop(
    image: tf.Tensor,
    encoded: bool,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    method: str = "bilinear",
) -> tf.Tensor:
    """Inception-style crop: a random window of `scale` of the area and `ratio` aspect,
    resized to size x size (float32, 0-255). Falls back to the whole image when no
    window fits in 10 attempts."""
    shape = image_shape(image, encoded)
    begin, window, _ = tf.image.sample_distorted_bounding_box(
        shape_with_channels(shape),
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
        min_object_covered=0.0,
        aspect_ratio_range=ratio,
        area_range=scale,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    cropped = crop(image, encoded, begin[:2], window[:2])
    return tf.image.resize(cropped, [size, size], method=method)


def shape_with_channels(shape: tf.Tensor) -> tf.Tensor:
    return tf.concat([shape, [3]], axis=0)


def center_crop(
    image: tf.Tensor, encoded: bool, size: int, crop_fraction: float, method: str = "bilinear"
) -> tf.Tensor:
    """The central square holding `crop_fraction` of the shorter side, resized to size."""
    shape = image_shape(image, encoded)
    side = tf.cast(tf.cast(tf.reduce_min(shape), tf.float32) * crop_fraction, tf.int32)
    side = tf.maximum(side, 1)
    offset = (shape - side) // 2
    cropped = crop(image, encoded, offset, tf.stack([side, side]))
    return tf.image.resize(cropped, [size, size], method=method)


def resize(image: tf.Tensor, encoded: bool, size: int, method: str = "bilinear") -> tf.Tensor:
    """The whole image resized to size x size (float32, 0-255)."""
    return tf.image.resize(tf.cast(decode(image, encoded), tf.float32), [size, size], method=method)


def pad_and_random_crop(image: tf.Tensor, size: int, pad: int) -> tf.Tensor:
    """Zero-pads by `pad` on each side, then crops a random size x size window."""
    if pad <= 0:
        return image
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    return tf.image.random_crop(padded, [size, size, 3])


def paste_on_background(
    image: tf.Tensor, encoded: bool, size: int, scale: tuple[float, float] = (0.5, 1.0)
) -> tf.Tensor:
    """A size x size float (0-255) scene: the grayscale item `image` (its intensity is its
    opacity) resized to a random `scale` of the side, tinted one random colour and placed
    at a random position over a two-colour gradient with Gaussian noise. A colour too close
    to the background's mean is inverted, so the item stays visible."""
    if encoded:
        image = tf.io.decode_image(image, channels=1, expand_animations=False)
    gray = tf.reduce_mean(tf.cast(tf.convert_to_tensor(image), tf.float32), -1, keepdims=True)
    side = tf.cast(tf.round(tf.random.uniform([], scale[0], scale[1]) * size), tf.int32)
    alpha = tf.image.resize(gray, [side, side]) / 255.0
    top = tf.random.uniform([], 0, size - side + 1, dtype=tf.int32)
    left = tf.random.uniform([], 0, size - side + 1, dtype=tf.int32)
    alpha = tf.pad(alpha, [[top, size - side - top], [left, size - side - left], [0, 0]])
    alpha = tf.clip_by_value(tf.ensure_shape(alpha, [size, size, 1]), 0.0, 1.0)
    c0 = tf.random.uniform([3], 0, 255)
    c1 = tf.random.uniform([3], 0, 255)
    angle = tf.random.uniform([], 0, 6.283185)
    ramp = tf.range(size, dtype=tf.float32) / size
    t = (tf.cos(angle) * ramp[None, :] + tf.sin(angle) * ramp[:, None] + 1.5) / 3.0
    background = c0 * (1 - t[..., None]) + c1 * t[..., None]
    background += tf.random.normal([size, size, 3], stddev=6.0)
    colour = tf.random.uniform([3], 0, 255)
    close = tf.reduce_mean(tf.abs(colour - tf.reduce_mean(background, [0, 1]))) < 60
    colour = tf.where(close, 255.0 - colour, colour)
    return tf.clip_by_value(background * (1 - alpha) + colour * alpha, 0.0, 255.0)


def random_erasing(
    image: tf.Tensor,
    probability: float,
    area: tuple[float, float] = (0.02, 0.25),
    aspect: tuple[float, float] = (0.3, 3.3),
) -> tf.Tensor:
    """With `probability`, replaces a random rectangle by zeros (the dataset's mean after
    normalization). `image` is normalized float HxWxC."""
    if probability <= 0:
        return image
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    total = tf.cast(height * width, tf.float32)
    target = tf.random.uniform([], area[0], area[1]) * total
    log_aspect = tf.random.uniform([], tf.math.log(aspect[0]), tf.math.log(aspect[1]))
    ratio = tf.exp(log_aspect)
    h = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(target * ratio)), tf.int32), 1, height)
    w = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(target / ratio)), tf.int32), 1, width)
    top = tf.random.uniform([], 0, height - h + 1, dtype=tf.int32)
    left = tf.random.uniform([], 0, width - w + 1, dtype=tf.int32)
    hole = tf.pad(tf.ones([h, w], image.dtype), [[top, height - h - top], [left, width - w - left]])
    erased = image * (1 - hole[..., None])
    return tf.cond(tf.random.uniform([]) < probability, lambda: erased, lambda: image)


def make_fn(
    *,
    training: bool,
    encoded: bool,
    preprocessing: Preprocessing,
    augment: str,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    small_pad: int = 4,
    random_erasing_prob: float = 0.0,
    flip: bool = True,
):
    """The per-example map: {"image", ...} -> {"image": float32 [-1, 1], ...}; the other
    fields (an image-level label) pass through unchanged."""
    size = preprocessing.input_size
    method = preprocessing.resize_method
    if augment not in ("inception", "small", "paste"):
        raise ValueError(f"augment must be 'inception', 'small' or 'paste', got {augment!r}")

    def fn(example: dict) -> dict:
        image = example["image"]
        if augment == "inception":
            if training:
                image = random_resized_crop(image, encoded, size, crop_scale, method=method)
            else:
                image = center_crop(image, encoded, size, preprocessing.crop_fraction, method)
        elif augment == "paste" and training:
            image = paste_on_background(image, encoded, size)
        else:
            image = resize(image, encoded, size, method)
            if training and augment == "small":
                image = pad_and_random_crop(image, size, small_pad)
        if training and flip:
            image = tf.image.random_flip_left_right(image)
        image = preprocess_input(image, preprocessing)
        if training and augment == "small":
            image = random_erasing(image, random_erasing_prob)
        image = tf.ensure_shape(image, [size, size, 3])
        return {**example, "image": image}

    return fn
