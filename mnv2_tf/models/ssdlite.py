"""SSDLite (paper Section 6.2) on MobileNetV2 or MobileNetV1, as the TF Object Detection API
builds `ssdlite_mobilenet_v2` / `ssdlite_mobilenet_v1`.

Feature maps: two of the backbone's (MobileNetV2: the expansion output of layer 15, at
stride 16, and the final 1x1 conv at stride 32; MobileNetV1: the pointwise outputs of
layers 11 and 13) and four extra layers of depths 512, 256, 256, 128, each a 1x1 conv to
half the depth then a stride-2 3x3 depthwise and a 1x1 conv (BN + ReLU6 after each). Depths
scale with `alpha` and stay at least `min_depth`.

Predictors, per feature map: for boxes and for classes, a 3x3 depthwise conv (BN + ReLU6)
then a 1x1 conv with bias to anchors x 4 codes and anchors x class outputs. `head="ssd"`
builds SSD's regular 3x3 convolutions instead (the extra layers' stride-2 conv and the
predictors): the paper's Table 5 compares the two.

The model is one flat graph (backbone layers keep their Keras names, so ImageNet weights
and a classification run's weights load by name) with two outputs: box codes [B, anchors, 4]
and class logits [B, anchors, K]. `score_activation` ("sigmoid" or "softmax") gives the
inference model: [codes, scores], the inputs of the detection post-process (same weights,
same order).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import tf_keras

from mnv2_tf.detection import boxes as box_lib
from mnv2_tf.models.mobilenet_v1 import mobilenet_v1
from mnv2_tf.models.mobilenet_v2 import MNV2_BLOCK_SPECS, endpoint_layer_names, mobilenet_v2

layers = tf_keras.layers

EXTRA_DEPTHS = (512, 256, 256, 128)
HEADS = ("ssdlite", "ssd")
V1_FEATURES = ("conv_pw_11_relu", "conv_pw_13_relu")


def backbone_features(backbone: tf_keras.Model, name: str, block_specs=None) -> list:
    """The two backbone feature maps SSD predicts from (stride 16 and 32)."""
    if name == "mobilenet_v1":
        return [backbone.get_layer(n).output for n in V1_FEATURES]
    specs = block_specs or MNV2_BLOCK_SPECS
    endpoints = endpoint_layer_names(backbone, specs)
    first = next((v for k, v in endpoints.items() if k.endswith("_expansion_output")), None)
    if first is None:
        raise ValueError("the backbone's block table has no stride-16 expansion to predict from")
    return [backbone.get_layer(first).output, backbone.get_layer(endpoints["final"]).output]


def _conv_bn(x, filters, kernel, stride, name, momentum, epsilon, depthwise=False):
    if depthwise:
        x = layers.DepthwiseConv2D(
            kernel, strides=stride, padding="same", use_bias=False, name=name + "_depthwise"
        )(x)
        name = name + "_depthwise"
    else:
        x = layers.Conv2D(
            filters, kernel, strides=stride, padding="same", use_bias=False, name=name
        )(x)
    x = layers.BatchNormalization(momentum=momentum, epsilon=epsilon, name=name + "_BN")(x)
    return layers.ReLU(6.0, name=name + "_relu")(x)


def _predictor(x, outputs, prefix, head, momentum, epsilon, bias=0.0):
    init = tf_keras.initializers.Constant(bias)
    if head == "ssdlite":
        x = _conv_bn(x, None, 3, 1, prefix, momentum, epsilon, depthwise=True)
        return layers.Conv2D(outputs, 1, padding="same", bias_initializer=init, name=prefix)(x)
    return layers.Conv2D(outputs, 3, padding="same", bias_initializer=init, name=prefix)(x)


def ssd(
    num_outputs: int,
    backbone: str = "mobilenet_v2",
    alpha: float = 1.0,
    input_size: int = 300,
    *,
    head: str = "ssdlite",
    min_depth: int = 16,
    extra_depths: Sequence[int] = EXTRA_DEPTHS,
    bn_momentum: float = 0.99,
    bn_epsilon: float = 1e-3,
    block_specs=None,
    score_activation: str | None = None,
    class_prior: float | None = None,
    reduce_boxes_in_lowest_layer: bool = True,
    name: str | None = None,
) -> tf_keras.Model:
    """Builds SSD / SSDLite.

    Args:
      num_outputs: class outputs per anchor (classes, or background + classes).
      backbone: "mobilenet_v2" or "mobilenet_v1".
      alpha: the backbone's width multiplier; the extra layers' depths scale with it.
      input_size: square input side (the anchors depend on it).
      head: "ssdlite" (depthwise-separable) or "ssd" (regular 3x3 convolutions).
      min_depth: the extra layers' smallest depth.
      extra_depths: depths of the extra feature maps.
      bn_momentum, bn_epsilon: of every BatchNormalization.
      block_specs: MobileNetV2's table (tests use a tiny one).
      score_activation: None (training: [codes, logits]), or "sigmoid" / "softmax"
        (inference: [codes, scores]).
      class_prior: with sigmoid class outputs, the class logits' initial bias makes every
        score start at this probability (RetinaNet's 0.01: the loss of the many
        background anchors does not swamp the first steps); None: zero.
      reduce_boxes_in_lowest_layer: 3 anchors per position on the first feature map (SSD's
        and the API's default), or the 6 of the other maps.
      name: the model's name.
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    shape = (input_size, input_size, 3)
    common = dict(alpha=alpha, input_shape=shape, include_top=False)
    common.update(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon)
    if backbone == "mobilenet_v2":
        specs = tuple(block_specs) if block_specs else MNV2_BLOCK_SPECS
        net = mobilenet_v2(**common, block_specs=specs)
    elif backbone == "mobilenet_v1":
        net = mobilenet_v1(**common)
        specs = None
    else:
        raise ValueError(f"unknown backbone {backbone!r}; use mobilenet_v2 or mobilenet_v1")
    features = backbone_features(net, backbone, specs)

    def depth(d):
        return max(int(d * alpha), min_depth)

    x = features[-1]
    for i, d in enumerate(extra_depths):
        prefix = f"ssd_extra_{i + 2}"
        x = _conv_bn(x, depth(d // 2), 1, 1, f"{prefix}_1x1", bn_momentum, bn_epsilon)
        if head == "ssdlite":
            x = _conv_bn(x, None, 3, 2, f"{prefix}_3x3", bn_momentum, bn_epsilon, depthwise=True)
            x = _conv_bn(x, depth(d), 1, 1, f"{prefix}_3x3_pointwise", bn_momentum, bn_epsilon)
        else:
            x = _conv_bn(x, depth(d), 3, 2, f"{prefix}_3x3", bn_momentum, bn_epsilon)
        features.append(x)

    per_location = box_lib.anchors_per_location(
        len(features), reduce_boxes_in_lowest_layer=reduce_boxes_in_lowest_layer
    )
    codes, logits = [], []
    for i, (feature, k) in enumerate(zip(features, per_location, strict=True)):
        box = _predictor(feature, k * 4, f"box_predictor_{i}", head, bn_momentum, bn_epsilon)
        codes.append(layers.Reshape((-1, 4), name=f"box_reshape_{i}")(box))
        cls = _predictor(
            feature, k * num_outputs, f"class_predictor_{i}", head, bn_momentum, bn_epsilon,
            bias=-math.log((1 - class_prior) / class_prior) if class_prior else 0.0,
        )  # fmt: skip
        logits.append(layers.Reshape((-1, num_outputs), name=f"class_reshape_{i}")(cls))
    codes = layers.Concatenate(axis=1, name="box_encodings", dtype="float32")(codes)
    logits = layers.Concatenate(axis=1, name="class_logits", dtype="float32")(logits)
    if name is None:
        name = f"ssd{'lite' if head == 'ssdlite' else ''}_{backbone}_{alpha:0.2f}_{input_size}"
    # One (weightless) layer after each branch in both models: the same graph, so the
    # weights come in the same order and `set_weights` of one fits the other.
    codes = layers.Activation("linear", name="box_codes", dtype="float32")(codes)
    scores = layers.Activation(score_activation or "linear", name="class_scores", dtype="float32")(
        logits
    )
    return tf_keras.Model(net.inputs, [codes, scores], name=name)


def feature_sizes(model: tf_keras.Model) -> list[int]:
    """The sizes of the feature maps the predictors read (for the anchors)."""
    sizes = []
    i = 0
    while True:
        try:
            layer = model.get_layer(f"box_predictor_{i}")
        except ValueError:
            return sizes
        sizes.append(int(layer.output.shape[1]))
        i += 1
