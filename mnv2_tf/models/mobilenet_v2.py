"""MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
CVPR 2018) as a functional tf_keras model.

The body is the paper's Table 2 held as data (`MNV2_BLOCK_SPECS`, rows t, c, n, s) and one
loop that builds each row from the inverted residual block of Section 3.3 / Table 1:
1x1 expansion (ReLU6) -> 3x3 depthwise (ReLU6) -> 1x1 linear projection, with a shortcut
between bottlenecks when input and output shapes match.

Layer names and channel rounding are those of `tf_keras.applications.MobileNetV2` and its
outputs are the same for the same weights, so Keras' ImageNet `.h5` files load by name
(see `weights.py`). On top of that the builder
exposes the paper's ablations (expansion factor, linear vs ReLU6 bottleneck, shortcut
placement, Section 6.4 / Figure 6), DeepLabv3's `output_stride` with atrous depthwise
convolutions (Section 6.3), feature endpoints for SSDLite (Section 6.2), and a small-input
mode that removes early downsampling.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import tf_keras

from mnv2_tf.models import common

layers = tf_keras.layers


class BlockSpec(NamedTuple):
    """One row of the paper's Table 2: `n` inverted residual blocks with `c` output channels,
    expansion factor `t`, the first block strided by `s`."""

    t: float
    c: int
    n: int
    s: int


# Table 2 of the paper, between the stem (conv2d 3x3, 32, stride 2) and the final conv2d 1x1.
MNV2_BLOCK_SPECS: tuple[BlockSpec, ...] = (
    BlockSpec(t=1, c=16, n=1, s=1),
    BlockSpec(t=6, c=24, n=2, s=2),
    BlockSpec(t=6, c=32, n=3, s=2),
    BlockSpec(t=6, c=64, n=4, s=2),
    BlockSpec(t=6, c=96, n=3, s=1),
    BlockSpec(t=6, c=160, n=3, s=2),
    BlockSpec(t=6, c=320, n=1, s=1),
)
STEM_FILTERS = 32
STEM_STRIDE = 2
LAST_CONV_FILTERS = 1280
SHORTCUTS = ("bottleneck", "expansion", "none")


def _blocks(block_specs: Sequence[BlockSpec]) -> list[tuple[float, int, int]]:
    """Expands the table into one (t, c, stride) triple per block."""
    return [
        (spec.t, spec.c, spec.s if i == 0 else 1) for spec in block_specs for i in range(spec.n)
    ]


def nominal_strides(block_specs: Sequence[BlockSpec] = MNV2_BLOCK_SPECS) -> list[int]:
    """The network's strides as the paper has them: the stem's, then one per block."""
    return [STEM_STRIDE] + [stride for _, _, stride in _blocks(block_specs)]


def _bn(x, name: str, momentum: float, epsilon: float):
    return layers.BatchNormalization(axis=-1, momentum=momentum, epsilon=epsilon, name=name)(x)


def _inverted_res_block(
    inputs,
    expanded_before,
    *,
    block_id: int,
    expansion: float,
    filters: int,
    stride: int,
    dilation: int,
    linear_bottleneck: bool,
    shortcut: str,
    bn_momentum: float,
    bn_epsilon: float,
):
    """One inverted residual block (paper Table 1), named as Keras names it.

    Args:
      inputs: the block's input (the previous bottleneck).
      expanded_before: the previous block's expansion output, for the "expansion" shortcut.
      block_id: index of the block; block 0 is Keras' `expanded_conv`.
      expansion: expansion factor t; t == 1 builds no expansion layer.
      filters: output channels, already multiplied by the width and rounded.
      stride, dilation: of the depthwise convolution.
      linear_bottleneck: False adds ReLU6 after the projection (paper Figure 6a ablation).
      shortcut: "bottleneck" (the paper's), "expansion" (between expansion layers, as a
        classic residual bottleneck would, Figure 6b) or "none".

    Returns:
      (output, expansion output or None).
    """
    in_channels = inputs.shape[-1]
    prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
    x = inputs
    expanded = None
    if expansion != 1:
        expanded_channels = common.make_divisible(in_channels * expansion, 8)
        x = layers.Conv2D(
            expanded_channels, 1, padding="same", use_bias=False, name=prefix + "expand"
        )(x)
        x = _bn(x, prefix + "expand_BN", bn_momentum, bn_epsilon)
        x = layers.ReLU(6.0, name=prefix + "expand_relu")(x)
        if (
            shortcut == "expansion"
            and expanded_before is not None
            and expanded_before.shape[1:] == x.shape[1:]
        ):
            x = layers.Add(name=prefix + "expand_add")([expanded_before, x])
        expanded = x
    # Keras pads explicitly (ZeroPadding2D + "valid"); for every static input size that is
    # the same arithmetic as TF's "same" padding, which converts to one TFLite op, not two.
    x = layers.DepthwiseConv2D(
        3,
        strides=stride,
        dilation_rate=dilation,
        padding="same",
        use_bias=False,
        name=prefix + "depthwise",
    )(x)
    x = _bn(x, prefix + "depthwise_BN", bn_momentum, bn_epsilon)
    x = layers.ReLU(6.0, name=prefix + "depthwise_relu")(x)
    x = layers.Conv2D(filters, 1, padding="same", use_bias=False, name=prefix + "project")(x)
    x = _bn(x, prefix + "project_BN", bn_momentum, bn_epsilon)
    if not linear_bottleneck:
        x = layers.ReLU(6.0, name=prefix + "project_relu")(x)
    if shortcut == "bottleneck" and stride == 1 and in_channels == filters:
        x = layers.Add(name=prefix + "add")([inputs, x])
    return x, expanded


def mobilenet_v2(
    alpha: float = 1.0,
    input_shape: Sequence[int | None] = (224, 224, 3),
    num_classes: int = 1000,
    include_top: bool = True,
    dropout: float = 0.2,
    pooling: str | None = None,
    classifier_activation: str | None = "softmax",
    *,
    expansion: float | None = None,
    linear_bottleneck: bool = True,
    shortcut: str = "bottleneck",
    output_stride: int | None = None,
    remove_early_strides: int = 0,
    atrous: bool = True,
    bn_momentum: float = 0.999,
    bn_epsilon: float = 1e-3,
    block_specs: Sequence[BlockSpec] = MNV2_BLOCK_SPECS,
    name: str | None = None,
) -> tf_keras.Model:
    """Builds MobileNetV2.

    With the defaults it is the paper's network and, weight for weight, Keras'
    `tf_keras.applications.MobileNetV2` (plus a dropout layer, which has no weights).

    Args:
      alpha: width multiplier; every layer's channels are scaled and rounded to a multiple
        of 8. The last 1x1 conv keeps 1280 channels for alpha <= 1 (paper Section 6.1).
      input_shape: (height, width, channels); at least the network's total stride (32, or less with
        `output_stride` / `remove_early_strides`), None for a dynamic size.
      num_classes: classifier outputs, with `include_top`.
      include_top: add global pooling, dropout and the `predictions` dense layer.
      dropout: dropout rate before the classifier (the paper trains with 0.2).
      pooling: without the top: None (the feature map), "avg" or "max".
      classifier_activation: "softmax", or None for logits.
      expansion: overrides the expansion factor t of every row whose t is not 1
        (the paper uses 6; Section 6.1 notes 5-10 work alike).
      linear_bottleneck: False puts ReLU6 after each projection (ablation of Figure 6a).
      shortcut: "bottleneck" (paper), "expansion" or "none" (ablation of Figure 6b).
      output_stride: 8, 16 or 32 (None = 32); past it, strides become atrous rates.
      atrous: False removes the strides past `output_stride` without dilating (small-image
        classification).
      remove_early_strides: 1 makes the stem stride 1, 2 also the first stride-2 block,
        for 28-32 px images. 0 is the paper.
      bn_momentum, bn_epsilon: of every BatchNormalization (Keras: 0.999, 1e-3).
      block_specs: the body table; tests use a tiny one.
      name: the model's name; default `mobilenetv2_{alpha}_{size}` as Keras.

    Returns:
      A functional `tf_keras.Model`.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    if shortcut not in SHORTCUTS:
        raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
    blocks = _blocks(block_specs)
    strides = common.plan_strides(
        nominal_strides(block_specs), output_stride, remove_early_strides, atrous
    )
    height, width, channels = common.check_input_shape(input_shape, strides)

    inputs = layers.Input(shape=(height, width, channels), name="input")
    x = layers.Conv2D(
        common.make_divisible(STEM_FILTERS * alpha, 8),
        3,
        strides=strides[0].stride,
        padding="same",
        use_bias=False,
        name="Conv1",
    )(inputs)
    x = _bn(x, "bn_Conv1", bn_momentum, bn_epsilon)
    x = layers.ReLU(6.0, name="Conv1_relu")(x)

    expanded = None
    for block_id, ((t, c, _), plan) in enumerate(zip(blocks, strides[1:], strict=True)):
        if expansion is not None and t != 1:
            t = expansion
        x, expanded = _inverted_res_block(
            x,
            expanded,
            block_id=block_id,
            expansion=t,
            # int() before rounding, as Keras does: it decides e.g. 0.35 * 16 -> 8.
            filters=common.make_divisible(int(c * alpha), 8),
            stride=plan.stride,
            dilation=plan.dilation,
            linear_bottleneck=linear_bottleneck,
            shortcut=shortcut,
            bn_momentum=bn_momentum,
            bn_epsilon=bn_epsilon,
        )

    last_filters = (
        common.make_divisible(LAST_CONV_FILTERS * alpha, 8) if alpha > 1.0 else LAST_CONV_FILTERS
    )
    x = layers.Conv2D(last_filters, 1, use_bias=False, name="Conv_1")(x)
    x = _bn(x, "Conv_1_bn", bn_momentum, bn_epsilon)
    x = layers.ReLU(6.0, name="out_relu")(x)

    if include_top:
        x = layers.GlobalAveragePooling2D(name="global_average_pooling2d")(x)
        if dropout:
            x = layers.Dropout(dropout, name="dropout")(x)
        # float32 even under a mixed-precision policy: softmax and the loss need the range.
        x = layers.Dense(
            num_classes, activation=classifier_activation, dtype="float32", name="predictions"
        )(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="global_average_pooling2d")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="global_max_pooling2d")(x)

    if name is None:
        name = f"mobilenetv2_{alpha:0.2f}_{height}"
    return tf_keras.Model(inputs, x, name=name)


def block_output_layer(model: tf_keras.Model, block_id: int) -> tf_keras.layers.Layer:
    """The last layer of block `block_id` of a model built by `mobilenet_v2`."""
    prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
    for suffix in ("add", "project_relu", "project_BN"):
        try:
            return model.get_layer(prefix + suffix)
        except ValueError:
            continue
    raise ValueError(f"model {model.name!r} has no block {block_id}")


def endpoint_layer_names(
    model: tf_keras.Model, block_specs: Sequence[BlockSpec] = MNV2_BLOCK_SPECS
) -> dict[str, str]:
    """Names the layers whose outputs are the backbone's feature endpoints.

    Endpoints, by the stride the paper's network has there (with `output_stride` or
    `remove_early_strides` the actual maps are larger, the names stay):
      - `stride2` ... `stride32`: the output of the last block at that stride;
      - `layer_15_expansion_output`: the expansion (ReLU6) of the first block at stride 32,
        at stride 16 (576 channels at alpha 1), where SSDLite attaches its first head; the
        number is slim's layer numbering (stem = layer 1), so a shorter table gives another;
      - `final`: the last 1x1 conv (1280 channels), SSDLite's second head and the
        classifier's input.
    """
    names = {}
    current = STEM_STRIDE
    first_of_stride = {}
    for block_id, (_, _, stride) in enumerate(_blocks(block_specs)):
        current *= stride
        first_of_stride.setdefault(current, block_id)
        names[f"stride{current}"] = block_output_layer(model, block_id).name
    deepest = max(first_of_stride)
    block_id = first_of_stride[deepest]
    if deepest > STEM_STRIDE and block_id > 0:
        expand_layers = [f"block_{block_id}_expand_add", f"block_{block_id}_expand_relu"]
        present = [n for n in expand_layers if n in {layer.name for layer in model.layers}]
        if present:
            names[f"layer_{block_id + 2}_expansion_output"] = present[0]
    names["final"] = "out_relu"
    return names


def feature_extractor(
    model: tf_keras.Model,
    endpoints: Sequence[str] | None = None,
    block_specs: Sequence[BlockSpec] = MNV2_BLOCK_SPECS,
) -> tf_keras.Model:
    """A model sharing `model`'s layers whose outputs are a dict of feature endpoints.

    Args:
      model: built by `mobilenet_v2` (with or without top).
      endpoints: names from `endpoint_layer_names`; None for all.
      block_specs: the table `model` was built from.
    """
    available = endpoint_layer_names(model, block_specs)
    if endpoints is None:
        endpoints = list(available)
    unknown = [e for e in endpoints if e not in available]
    if unknown:
        raise ValueError(f"unknown endpoints {unknown}; available: {sorted(available)}")
    outputs = {e: model.get_layer(available[e]).output for e in endpoints}
    return tf_keras.Model(model.inputs, outputs, name=f"{model.name}_features")
