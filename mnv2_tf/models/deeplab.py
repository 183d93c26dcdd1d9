"""Mobile DeepLabv3 (paper Section 6.3, Table 7) on MobileNetV2 or MobileNetV1.

The head reads the backbone's last feature map before the 1x1 conv to 1280 channels
(MobileNetV2's layer 18, 320 channels at alpha 1: the paper's "MNet V2*"; MobileNetV1's
last pointwise conv, 1024 channels), at output stride 16 or 8: past it the backbone's
strides become atrous rates (`mobilenet_v2(output_stride=...)`), as the original DeepLab
code does: the block that would have strided keeps rate 1 and the blocks after it are
dilated (TensorFlow Model Garden's `mnv2_deeplabv3_pascal` dilates that first 160-channel
block too; the multiply-adds are the same, the receptive field is not).

Head (DeepLabv3, Chen et al. 2017, Section 3.3, without the decoder):
  - a 1x1 conv branch (256, BN, ReLU);
  - image pooling: global average pool, 1x1 conv 256 + BN + ReLU, bilinear upsampling back to
    the feature map;
  - with `aspp`: three 3x3 atrous convs (256, BN, ReLU) at rates 6, 12, 18 for output stride
    16 (doubled at 8), regular convolutions as in the paper's Table 7 row counts;
  - concatenation, 1x1 projection 256 + BN + ReLU, dropout, 1x1 logits with bias, bilinear
    upsampling to the input size.
The mobile candidate of the paper drops ASPP (`aspp=False`): 2.11M parameters, 2.75B
multiply-adds at 513x513.

Outputs: the training model gives logits at input resolution [B, H, W, K]; `output`
chooses the inference model's: "probabilities" (softmax of the upsampled logits), or
"category_mask" (the class id per pixel, uint8, what an app draws) with `mask_upsampling`:
"logits" upsamples every class's logit to the input and takes the argmax there (the
reference), "argmax_nearest" takes the argmax on the feature map and upsamples the ids
(nearest; fast, blocky), "scores_bilinear" upsamples the logits by bilinear interpolation at
a lower resolution (`mask_stride` of the input) and the argmax ids from there by nearest.
All share the training model's weights in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tf_keras

from mnv2_tf.models.mobilenet_v1 import mobilenet_v1
from mnv2_tf.models.mobilenet_v2 import MNV2_BLOCK_SPECS, block_output_layer, mobilenet_v2

layers = tf_keras.layers

HEAD_PREFIXES = ("aspp", "image_pooling", "concat_projection", "logits", "upsample")
OUTPUTS = ("logits", "probabilities", "category_mask")
MASK_UPSAMPLING = ("logits", "argmax_nearest", "scores_bilinear")
ASPP_RATES_OS16 = (6, 12, 18)
V1_FEATURE = "conv_pw_13_relu"


def backbone_feature(net: tf_keras.Model, backbone: str, block_specs=None):
    """The backbone's last feature map before MobileNetV2's 1280-channel conv."""
    if backbone == "mobilenet_v1":
        return net.get_layer(V1_FEATURE).output
    blocks = sum(spec.n for spec in (block_specs or MNV2_BLOCK_SPECS))
    return block_output_layer(net, blocks - 1).output


def nearest_ids(ids, size: int):
    """Class ids [B, h, w, C] (uint8) resized to size x size by nearest neighbour with half-pixel
    centres (as `tf.image.resize(..., "nearest")`), as two GATHERs: TFLite's
    RESIZE_NEAREST_NEIGHBOR takes no plain uint8, GATHER does, and moves bytes only."""
    h, w = int(ids.shape[1]), int(ids.shape[2])
    rows = np.minimum(np.floor((np.arange(size) + 0.5) * h / size), h - 1).astype(np.int32)
    cols = np.minimum(np.floor((np.arange(size) + 0.5) * w / size), w - 1).astype(np.int32)
    return tf.gather(tf.gather(ids, rows, axis=1), cols, axis=2)


def _conv_bn_relu(x, filters, kernel, name, momentum, epsilon, rate=1):
    x = layers.Conv2D(
        filters, kernel, padding="same", dilation_rate=rate, use_bias=False, name=name
    )(x)
    x = layers.BatchNormalization(momentum=momentum, epsilon=epsilon, name=name + "_BN")(x)
    return layers.ReLU(name=name + "_relu")(x)


class _Resize(layers.Layer):
    """Bilinear (or nearest) resizing to a fixed size: RESIZE_BILINEAR /
    RESIZE_NEAREST_NEIGHBOR in TFLite. A layer of our own (not `layers.Resizing`) so that
    tfmot's quantize wrappers pass it through and its name prefix marks it as the head's."""

    def __init__(self, size, method="bilinear", **kwargs):
        super().__init__(**kwargs)
        self.size = tuple(int(s) for s in size)
        self.method = method

    def call(self, x):
        if self.method == "nearest":
            return nearest_ids(x, self.size[0])
        return tf.image.resize(x, self.size, method="bilinear")

    def get_config(self):
        return {**super().get_config(), "size": self.size, "method": self.method}


class _Argmax(layers.Layer):
    """The class id per pixel as uint8 [B, H, W, 1] (ARG_MAX then CAST in TFLite)."""

    def call(self, x):
        return tf.cast(tf.argmax(x, axis=-1, output_type=tf.int32), tf.uint8)[..., None]


CUSTOM_OBJECTS = {"_Resize": _Resize, "_Argmax": _Argmax}


def deeplab(
    num_classes: int,
    backbone: str = "mobilenet_v2",
    alpha: float = 1.0,
    input_size: int = 513,
    *,
    output_stride: int = 16,
    aspp: bool = False,
    atrous_rates: Sequence[int] | None = None,
    depth: int = 256,
    dropout: float = 0.1,
    bn_momentum: float = 0.99,
    bn_epsilon: float = 1e-3,
    block_specs=None,
    output: str = "logits",
    mask_upsampling: str = "logits",
    mask_stride: int = 4,
    backbone_kwargs: dict | None = None,
    name: str | None = None,
) -> tf_keras.Model:
    """Builds Mobile DeepLabv3.

    Args:
      num_classes: classes including the background.
      backbone: "mobilenet_v2" or "mobilenet_v1".
      alpha: the backbone's width multiplier (the head's `depth` does not scale).
      input_size: square input side.
      output_stride: 16 or 8 (the feature map is input/output_stride).
      aspp: add the three atrous 3x3 branches.
      atrous_rates: ASPP's rates; None: 6, 12, 18 scaled by 16 / output_stride.
      depth: channels of every head branch and of the projection (256).
      dropout: before the logits (DeepLab's keep_prob 0.9).
      bn_momentum, bn_epsilon: of every BatchNormalization.
      block_specs: MobileNetV2's table (tests use a tiny one).
      output: "logits" (training), "probabilities" or "category_mask" (inference).
      mask_upsampling, mask_stride: how "category_mask" reaches the input size (module doc).
      backbone_kwargs: further arguments of the backbone builder (ablation fields).
      name: the model's name.
    """
    if output_stride not in (8, 16):
        raise ValueError(f"DeepLab's output_stride is 8 or 16, got {output_stride}")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if mask_upsampling not in MASK_UPSAMPLING:
        raise ValueError(
            f"mask_upsampling must be one of {MASK_UPSAMPLING}, got {mask_upsampling!r}"
        )
    if num_classes < 2:
        raise ValueError(
            f"segmentation needs at least 2 classes (background + one), got {num_classes}"
        )
    shape = (input_size, input_size, 3)
    kwargs = dict(alpha=alpha, input_shape=shape, include_top=False, output_stride=output_stride)
    kwargs.update(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon, **(backbone_kwargs or {}))
    if backbone == "mobilenet_v2":
        specs = tuple(block_specs) if block_specs else MNV2_BLOCK_SPECS
        net = mobilenet_v2(**kwargs, block_specs=specs)
    elif backbone == "mobilenet_v1":
        net, specs = mobilenet_v1(**kwargs), None
    else:
        raise ValueError(f"unknown backbone {backbone!r}; use mobilenet_v2 or mobilenet_v1")
    features = backbone_feature(net, backbone, specs)
    size = tuple(int(d) for d in features.shape[1:3])
    m, e = bn_momentum, bn_epsilon

    pooled = layers.GlobalAveragePooling2D(keepdims=True, name="image_pooling_gap")(features)
    pooled = _conv_bn_relu(pooled, depth, 1, "image_pooling", m, e)
    # Bilinear upsampling of a 1x1 map is tiling it: nearest UpSampling2D does that, and
    # tfmot's quantization-aware training knows the layer.
    branches = [layers.UpSampling2D(size, name="image_pooling_upsample")(pooled)]
    branches.append(_conv_bn_relu(features, depth, 1, "aspp0", m, e))
    if aspp:
        rates = atrous_rates or tuple(r * 16 // output_stride for r in ASPP_RATES_OS16)
        for i, rate in enumerate(rates):
            branches.append(_conv_bn_relu(features, depth, 3, f"aspp{i + 1}", m, e, rate=rate))
    x = layers.Concatenate(name="concat")(branches)
    x = _conv_bn_relu(x, depth, 1, "concat_projection", m, e)
    if dropout:
        x = layers.Dropout(dropout, name="concat_projection_dropout")(x)
    logits = layers.Conv2D(num_classes, 1, name="logits")(x)
    full = (input_size, input_size)
    if output == "category_mask" and mask_upsampling == "argmax_nearest":
        y = _Argmax(name="upsample_argmax")(logits)
        y = _Resize(full, "nearest", name="upsample_mask")(y)
    elif output == "category_mask" and mask_upsampling == "scores_bilinear":
        low = -(-input_size // mask_stride)
        y = _Resize((low, low), name="upsample_logits", dtype="float32")(logits)
        y = _Argmax(name="upsample_argmax")(y)
        y = _Resize(full, "nearest", name="upsample_mask")(y)
    else:
        y = _Resize(full, name="upsample_logits", dtype="float32")(logits)
        if output == "probabilities":
            y = layers.Softmax(name="probabilities", dtype="float32")(y)
        elif output == "category_mask":
            y = _Argmax(name="upsample_argmax")(y)
    if name is None:
        name = f"deeplabv3_{backbone}_{alpha:0.2f}_{input_size}_os{output_stride}"
        name += "_aspp" if aspp else ""
    return tf_keras.Model(net.inputs, y, name=name)


def is_head(layer_name: str) -> bool:
    return layer_name.startswith(HEAD_PREFIXES) or layer_name in ("concat", "probabilities")
