"""Pieces shared by MobileNetV1 and MobileNetV2: channel rounding, stride planning and the
preprocessing constants that travel with the models.

The preprocessing constants are defined here once; the input pipeline, the int8
calibration set, the uint8-input export and the benchmarks all read them from here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import tensorflow as tf

VALID_OUTPUT_STRIDES = (8, 16, 32)


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Rounds a channel count to a multiple of `divisor`, never more than 10% below `value`.

    The rule of the reference implementations (tensorflow/models slim and Keras), which
    keeps every layer's width a multiple of 8 for efficient kernels.
    """
    if min_value is None:
        min_value = divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


@dataclasses.dataclass(frozen=True)
class LayerStride:
    """What one nominally strided layer really does after `output_stride` and early-stride removal."""

    stride: int
    dilation: int


def plan_strides(
    nominal_strides: Sequence[int],
    output_stride: int | None = None,
    remove_early_strides: int = 0,
    atrous: bool = True,
) -> list[LayerStride]:
    """Maps the paper's per-layer strides to (stride, dilation) pairs.

    Args:
      nominal_strides: the stride of every layer that may downsample, in order (stem first).
      output_stride: the wanted ratio of input to final feature-map size (8, 16, 32 or None
        for the network's own). Once it is reached, later strides become 1 and the
        dilation rate of every later depthwise conv grows instead (atrous convolution, as
        DeepLabv3 and the slim implementation do).
      remove_early_strides: how many of the first stride-2 layers become stride 1, for small
        inputs (28-32 px) where the paper's stride 32 would leave a 1x1 map.
      atrous: past `output_stride`, grow the dilation rate (True, for dense prediction) or
        keep it 1 (False: plain stride removal, for classifying small images, where a
        rate-4 3x3 kernel on a 4x4 map would see only padding around its centre).

    Returns:
      One `LayerStride` per entry of `nominal_strides`.
    """
    if output_stride is not None and output_stride not in VALID_OUTPUT_STRIDES:
        raise ValueError(
            f"output_stride must be one of {VALID_OUTPUT_STRIDES} or None, got {output_stride}"
        )
    if remove_early_strides < 0:
        raise ValueError(f"remove_early_strides must be >= 0, got {remove_early_strides}")
    plan = []
    current_stride, rate, removed = 1, 1, 0
    for stride in nominal_strides:
        if stride > 1 and removed < remove_early_strides:
            removed += 1
            plan.append(LayerStride(1, rate))
        elif output_stride is not None and current_stride >= output_stride:
            # The layer keeps the current rate; the layers after it see the grown one.
            plan.append(LayerStride(1, rate))
            if atrous:
                rate *= stride
        else:
            plan.append(LayerStride(stride, 1))
            current_stride *= stride
    return plan


def total_stride(plan: Sequence[LayerStride]) -> int:
    """The ratio of input to final feature-map size of a stride plan."""
    total = 1
    for layer in plan:
        total *= layer.stride
    return total


def check_input_shape(
    input_shape: Sequence[int | None], plan: Sequence[LayerStride]
) -> tuple[int | None, int | None, int]:
    """Validates an (H, W, C) input shape against the network's strides; returns it.

    A side must be at least the network's total stride (32 for the paper's, 8 with the stem
    stride removed and output_stride 8), so that the final feature map is at least 1x1.
    """
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), got {tuple(input_shape)}")
    height, width, channels = input_shape
    minimum = total_stride(plan)
    for side in (height, width):
        if side is not None and side < minimum:
            raise ValueError(
                f"input size must be at least {minimum} px (the network's total stride), got "
                f"{tuple(input_shape)}; upsample small images or remove strides "
                "(remove_early_strides, output_stride)"
            )
    return height, width, channels


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How images are prepared for a MobileNet: the constants live with the model.

    Pixels in [0, 255] are mapped to [-1, 1] by `(x - mean) / std`, as the reference
    checkpoints (slim, Keras) were trained; evaluation takes a central crop holding
    `crop_fraction` of the image, then resizes to `input_size`.
    """

    input_size: int = 224
    mean: float = 127.5
    std: float = 127.5
    crop_fraction: float = 0.875
    resize_method: str = "bilinear"

    @property
    def scale(self) -> float:
        """Multiplier of the affine map x * scale + offset."""
        return 1.0 / self.std

    @property
    def offset(self) -> float:
        return -self.mean / self.std

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


DEFAULT_PREPROCESSING = Preprocessing()


def preprocess_input(
    images: tf.Tensor, preprocessing: Preprocessing = DEFAULT_PREPROCESSING
) -> tf.Tensor:
    """Maps pixel values in [0, 255] (any dtype) to float32 in [-1, 1]."""
    images = tf.cast(images, tf.float32)
    return (images - preprocessing.mean) / preprocessing.std
