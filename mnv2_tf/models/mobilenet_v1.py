"""MobileNetV1 (Howard et al., 2017), the baseline MobileNetV2 is compared with
(paper Sections 1, 3.3 and Table 3).

Each block is a depthwise separable convolution: 3x3 depthwise -> BN -> ReLU6 ->
1x1 pointwise -> BN -> ReLU6. Its non-linearity after the narrow pointwise layer is what
MobileNetV2's linear bottleneck removes. Layer names, padding and head are those of
`tf_keras.applications.MobileNet`, so Keras' `.h5` weights load by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import tf_keras

from mnv2_tf.models import common

layers = tf_keras.layers


class SeparableSpec(NamedTuple):
    """One depthwise separable block: `c` pointwise channels, depthwise stride `s`."""

    c: int
    s: int


# Table 1 of the MobileNetV1 paper, after the stem (conv 3x3, 32, stride 2).
MNV1_BLOCK_SPECS: tuple[SeparableSpec, ...] = (
    SeparableSpec(64, 1),
    SeparableSpec(128, 2),
    SeparableSpec(128, 1),
    SeparableSpec(256, 2),
    SeparableSpec(256, 1),
    SeparableSpec(512, 2),
    *(SeparableSpec(512, 1) for _ in range(5)),
    SeparableSpec(1024, 2),
    SeparableSpec(1024, 1),
)
STEM_FILTERS = 32
STEM_STRIDE = 2


def _bn(x, name: str, momentum: float, epsilon: float):
    return layers.BatchNormalization(axis=-1, momentum=momentum, epsilon=epsilon, name=name)(x)


def mobilenet_v1(
    alpha: float = 1.0,
    input_shape: Sequence[int | None] = (224, 224, 3),
    num_classes: int = 1000,
    include_top: bool = True,
    dropout: float = 1e-3,
    pooling: str | None = None,
    classifier_activation: str | None = "softmax",
    *,
    depth_multiplier: int = 1,
    output_stride: int | None = None,
    remove_early_strides: int = 0,
    atrous: bool = True,
    bn_momentum: float = 0.99,
    bn_epsilon: float = 1e-3,
    block_specs: Sequence[SeparableSpec] = MNV1_BLOCK_SPECS,
    name: str | None = None,
) -> tf_keras.Model:
    """Builds MobileNetV1, weight for weight `tf_keras.applications.MobileNet`.

    Args:
      alpha: width multiplier (channels are `int(c * alpha)`, as the V1 paper and Keras).
      input_shape: (height, width, channels); at least the network's total stride (32, or less with
        `output_stride` / `remove_early_strides`).
      num_classes, include_top, dropout, pooling, classifier_activation: as Keras.
      depth_multiplier: depthwise channel multiplier (the V1 paper's resolution
        multiplier is the input size instead).
      output_stride, remove_early_strides, atrous: as in `mobilenet_v2`.
      bn_momentum, bn_epsilon: of every BatchNormalization (Keras: 0.99, 1e-3).
      block_specs: the body table.
      name: default `mobilenet_{alpha}_{size}` as Keras.
    """
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
    nominal = [STEM_STRIDE] + [spec.s for spec in block_specs]
    strides = common.plan_strides(nominal, output_stride, remove_early_strides, atrous)
    height, width, channels = common.check_input_shape(input_shape, strides)

    inputs = layers.Input(shape=(height, width, channels), name="input")
    x = layers.Conv2D(
        int(STEM_FILTERS * alpha),
        3,
        strides=strides[0].stride,
        padding="same",
        use_bias=False,
        name="conv1",
    )(inputs)
    x = _bn(x, "conv1_bn", bn_momentum, bn_epsilon)
    x = layers.ReLU(6.0, name="conv1_relu")(x)

    for block_id, (spec, plan) in enumerate(zip(block_specs, strides[1:], strict=True), start=1):
        if plan.stride == 2:
            x = layers.ZeroPadding2D(((0, 1), (0, 1)), name=f"conv_pad_{block_id}")(x)
        x = layers.DepthwiseConv2D(
            3,
            strides=plan.stride,
            dilation_rate=plan.dilation,
            padding="valid" if plan.stride == 2 else "same",
            depth_multiplier=depth_multiplier,
            use_bias=False,
            name=f"conv_dw_{block_id}",
        )(x)
        x = _bn(x, f"conv_dw_{block_id}_bn", bn_momentum, bn_epsilon)
        x = layers.ReLU(6.0, name=f"conv_dw_{block_id}_relu")(x)
        x = layers.Conv2D(
            int(spec.c * alpha), 1, padding="same", use_bias=False, name=f"conv_pw_{block_id}"
        )(x)
        x = _bn(x, f"conv_pw_{block_id}_bn", bn_momentum, bn_epsilon)
        x = layers.ReLU(6.0, name=f"conv_pw_{block_id}_relu")(x)

    if include_top:
        x = layers.GlobalAveragePooling2D(keepdims=True, name="global_average_pooling2d")(x)
        if dropout:
            x = layers.Dropout(dropout, name="dropout")(x)
        x = layers.Conv2D(num_classes, 1, padding="same", dtype="float32", name="conv_preds")(x)
        x = layers.Reshape((num_classes,), dtype="float32", name="reshape_2")(x)
        x = layers.Activation(classifier_activation, dtype="float32", name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="global_average_pooling2d")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="global_max_pooling2d")(x)

    if name is None:
        name = f"mobilenet_{alpha:0.2f}_{height}"
    return tf_keras.Model(inputs, x, name=name)
