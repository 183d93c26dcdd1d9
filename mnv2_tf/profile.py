"""Multiply-adds and parameters of a Keras model, per layer and in total.

The paper (Section 5, Table 3) and the slim checkpoint table measure a network by its
multiply-adds (MACs): one per weight per output position of every convolution, depthwise
convolution and dense layer, nothing for batch norm, biases, activations, pooling or adds.
Parameters are reported with and without BatchNorm's four per-channel values (the slim
table counts them without). Nested models and wrapped layers (e.g. tfmot's quantize
wrappers) are counted through.

    python -m mnv2_tf.profile --model mobilenet_v2 --alpha 1.0 --input_size 224
    python -m mnv2_tf.profile --detector ssdlite --input_size 320 --num_classes 81

Detectors (paper Tables 5 and 6) are counted with their prediction layers (the extra
feature layers and the box/class predictors) subtotalled; segmenters (Table 7) with their
DeepLab head subtotalled.

    python -m mnv2_tf.profile --segmenter --input_size 513 --num_classes 21 [--aspp]

Atrous convolutions: `atrous="dense"` counts a dilated conv's output positions as they are;
`atrous="space_to_batch"` counts them as TensorFlow's graph profiler did on the 2018 graphs,
where a dilated conv ran as SPACE_TO_BATCH_ND + a plain conv over the map padded to a
multiple of the rate (a 33x33 map at rate 6, 12 or 18 is computed as 36x36): the paper's
Table 7 MAdds with ASPP follow that convention (see tests/test_deeplab.py).
"""

from __future__ import annotations

import dataclasses
import math

import tf_keras

layers = tf_keras.layers

# The layers SSD adds to the backbone (mnv2_tf.models.ssdlite): the paper's Table 5 counts them.
PREDICTION_LAYERS = ("ssd_extra_", "box_predictor_", "class_predictor_")


@dataclasses.dataclass(frozen=True)
class LayerProfile:
    """One layer's share."""

    name: str
    type: str
    output_shape: tuple
    macs: int
    params: int
    is_batch_norm: bool


@dataclasses.dataclass(frozen=True)
class Profile:
    """Totals (integers) and the per-layer rows."""

    macs: int
    params: int
    params_without_bn: int
    layers: tuple[LayerProfile, ...]
    # BN's scale and offset counted, its moving mean and variance not (what reaches the
    # output of a trained model: TensorFlow Model Garden's count).
    params_without_bn_statistics: int = 0

    def table(self, all_layers: bool = False) -> str:
        """A fixed-width table: layers with MACs or parameters (or all), then the totals."""
        rows = [r for r in self.layers if all_layers or r.macs or r.params]
        name_width = max([len(r.name) for r in rows] + [5])
        lines = [
            f"{'layer':<{name_width}}  {'type':<22} {'output':<18} {'MACs':>13} {'params':>10}",
            "-" * (name_width + 68),
        ]
        for r in rows:
            shape = "x".join(str(d) for d in r.output_shape)
            lines.append(
                f"{r.name:<{name_width}}  {r.type:<22} {shape:<18} {r.macs:>13,} {r.params:>10,}"
            )
        lines.append("-" * (name_width + 68))
        lines.append(f"MACs:                 {self.macs:>15,}  ({self.macs / 1e6:.1f} M)")
        lines.append(f"parameters:           {self.params:>15,}  ({self.params / 1e6:.3f} M)")
        lines.append(
            f"parameters (no BN):   {self.params_without_bn:>15,}  "
            f"({self.params_without_bn / 1e6:.3f} M)"
        )
        lines.append(
            f"parameters (no BN moving statistics): {self.params_without_bn_statistics:,}  "
            f"({self.params_without_bn_statistics / 1e6:.3f} M)"
        )
        return "\n".join(lines)

    def subtotal(self, prefixes: tuple[str, ...]) -> tuple[int, int]:
        """(MACs, parameters without BN) of the layers whose names start with `prefixes`."""
        rows = [r for r in self.layers if r.name.startswith(prefixes)]
        return sum(r.macs for r in rows), sum(r.params for r in rows if not r.is_batch_norm)

    def to_dict(self) -> dict:
        return {
            "macs": self.macs,
            "params": self.params,
            "params_without_bn": self.params_without_bn,
            "params_without_bn_statistics": self.params_without_bn_statistics,
        }


def _shape(tensor_shape) -> tuple:
    shape = tuple(tensor_shape)
    if any(d is None for d in shape[1:]):
        raise ValueError(
            f"cannot count multiply-adds for a dynamic shape {shape}; build the model "
            "with a fixed input size"
        )
    return shape


def _layer_macs(
    layer: tf_keras.layers.Layer, called: tf_keras.layers.Layer, atrous: str = "dense"
) -> int:
    """Multiply-adds of one (unwrapped) `layer` for a batch of one.

    `called` is the layer as it stands in the graph (a wrapper, or `layer` itself): its
    input and output hold the shapes.
    """
    if not isinstance(
        layer, (layers.Conv2D, layers.DepthwiseConv2D, layers.SeparableConv2D, layers.Dense)
    ):
        return 0
    inp, out = _shape(called.input.shape), _shape(called.output.shape)
    if isinstance(layer, layers.Dense):
        return math.prod(inp[1:-1]) * inp[-1] * layer.units
    positions = out[1] * out[2]
    rate = max(getattr(layer, "dilation_rate", (1, 1)))
    if atrous == "space_to_batch" and rate > 1:
        positions = math.ceil(out[1] / rate) * rate * math.ceil(out[2] / rate) * rate
    kh, kw = layer.kernel_size
    if isinstance(layer, layers.DepthwiseConv2D):
        return positions * kh * kw * out[3]
    if isinstance(layer, layers.SeparableConv2D):
        depthwise_channels = inp[-1] * layer.depth_multiplier
        return positions * (kh * kw * depthwise_channels + depthwise_channels * out[3])
    return positions * kh * kw * (inp[-1] // layer.groups) * out[3]


def _unwrap(layer):
    while isinstance(layer, layers.Wrapper):
        layer = layer.layer
    return layer


def _walk(model: tf_keras.Model):
    for layer in model.layers:
        if isinstance(layer, tf_keras.Model):
            yield from _walk(layer)
        else:
            yield layer


def count(model: tf_keras.Model, atrous: str = "dense") -> Profile:
    """Counts multiply-adds and parameters of `model` for one input image; `atrous`:
    "dense" or "space_to_batch" (module doc)."""
    if atrous not in ("dense", "space_to_batch"):
        raise ValueError(f"atrous must be 'dense' or 'space_to_batch', got {atrous!r}")
    rows = []
    statistics = 0
    for layer in _walk(model):
        inner = _unwrap(layer)
        is_bn = isinstance(inner, layers.BatchNormalization)
        macs = _layer_macs(inner, layer, atrous)
        if is_bn:
            statistics += sum(math.prod(w.shape) for w in inner.non_trainable_weights)
        rows.append(
            LayerProfile(
                name=layer.name,
                type=type(inner).__name__,
                output_shape=tuple(layer.output.shape[1:]),
                macs=macs,
                params=sum(math.prod(w.shape) for w in inner.weights),
                is_batch_norm=is_bn,
            )
        )
    params = sum(r.params for r in rows)
    return Profile(
        macs=sum(r.macs for r in rows),
        params=params,
        params_without_bn=params - sum(r.params for r in rows if r.is_batch_norm),
        layers=tuple(rows),
        params_without_bn_statistics=params - statistics,
    )


def main(argv: list[str]) -> None:
    from absl import flags

    from mnv2_tf import models
    from mnv2_tf.errors import UserError

    del argv
    f = flags.FLAGS
    if f.detector:
        from mnv2_tf.models import ssdlite

        try:
            model = ssdlite.ssd(f.num_classes, f.model, f.alpha, f.input_size, head=f.detector)
        except ValueError as e:
            raise UserError(str(e)) from e
        counted = count(model)
        print(model.name)
        print(counted.table(all_layers=f.all_layers))
        macs, params = counted.subtotal(PREDICTION_LAYERS)
        print(f"prediction layers:    {macs:>15,} MACs, {params:,} parameters (no BN)")
        return
    if f.segmenter:
        from mnv2_tf.models import deeplab

        try:
            model = deeplab.deeplab(
                f.num_classes, f.model, f.alpha, f.input_size, aspp=f.aspp,
                output_stride=f.output_stride or 16,
            )  # fmt: skip
        except ValueError as e:
            raise UserError(str(e)) from e
        counted = count(model, f.atrous_count)
        print(model.name)
        print(counted.table(all_layers=f.all_layers))
        macs, params = counted.subtotal(deeplab.HEAD_PREFIXES)
        print(f"DeepLab head:         {macs:>15,} MACs, {params:,} parameters (no BN)")
        return
    try:
        model = models.build(
            f.model,
            alpha=f.alpha,
            input_shape=(f.input_size, f.input_size, 3),
            num_classes=f.num_classes,
            include_top=f.include_top,
            output_stride=f.output_stride,
            remove_early_strides=f.remove_early_strides,
            atrous=f.atrous,
        )
    except ValueError as e:  # the builder's argument checks
        raise UserError(str(e)) from e
    print(model.name)
    print(count(model, f.atrous_count).table(all_layers=f.all_layers))


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_enum("model", "mobilenet_v2", ["mobilenet_v2", "mobilenet_v1"], "Which network.")
    flags.DEFINE_float("alpha", 1.0, "Width multiplier.")
    flags.DEFINE_integer("input_size", 224, "Input height and width.")
    flags.DEFINE_integer("num_classes", 1001, "Classifier outputs (slim's table uses 1001).")
    flags.DEFINE_bool("include_top", True, "Count the classifier.")
    flags.DEFINE_integer("output_stride", None, "8, 16 or 32 (atrous past it).")
    flags.DEFINE_integer("remove_early_strides", 0, "Stride-2 layers made stride 1 (small inputs).")
    flags.DEFINE_bool("atrous", True, "Dilate past output_stride (False: plain stride removal).")
    flags.DEFINE_bool("all_layers", False, "List layers without MACs or parameters too.")
    flags.DEFINE_enum(
        "detector",
        None,
        ["ssdlite", "ssd"],
        "Count an SSD detector on the model instead; "
        "--num_classes is then its class outputs (81 for COCO's 80 classes + background).",
    )
    flags.DEFINE_bool(
        "segmenter",
        False,
        "Count Mobile DeepLabv3 on the model instead (--num_classes "
        "with the background: 21 for VOC; --output_stride 16 or 8).",
    )
    flags.DEFINE_bool("aspp", False, "With --segmenter: add ASPP's atrous branches.")
    flags.DEFINE_enum(
        "atrous_count",
        "dense",
        ["dense", "space_to_batch"],
        "How dilated convolutions' positions are counted (see the module doc).",
    )


if __name__ == "__main__":
    from mnv2_tf import cli

    _define_flags()
    cli.run(main)
