"""Keras -> TFLite with `tf.lite.TFLiteConverter`, in the five modes export offers, and
the inspection of a `.tflite` file (op types, float ops, I/O) with LiteRT.

Modes:
  float32   the float model as is;
  float16   weights stored as float16 (half the size; GPU delegates run it in fp16);
  dynamic   dynamic-range quantization: int8 weights, float activations;
  int8      full-integer post-training quantization calibrated on a representative set;
  qat       full-integer conversion of a quantization-aware-trained model (see qat.py).

`image_input="uint8"` gives the model a raw RGB pixel input, so an app feeds camera pixels
as they are. Float models normalize in the graph (Cast, Mul, Add before the network). In
integer models the normalization is the input's quantization itself: the input range is
calibrated to exactly [-1, 1], so the uint8 input has scale 2/255 and zero point 128 and
a pixel p means (p - 128) * 2/255, within half a pixel level of (p - 127.5) / 127.5 - the
way TFLite's own quantized MobileNets take pixels, with no extra op and no extra rounding.
The half-level offset is then compensated in the first convolution's batch norm (or bias):
`compensate_input_offset`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import sys
import tempfile
from collections.abc import Callable, Iterable

import numpy as np
import tensorflow as tf
import tf_keras
from ai_edge_litert import interpreter as litert

from mnv2_tf.errors import UserError
from mnv2_tf.export import flatbuffer
from mnv2_tf.models.common import Preprocessing

MODES = ("float32", "float16", "dynamic", "int8", "qat")
INTEGER_MODES = ("int8", "qat")
IO_TYPES = {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}
# Ops that only convert between the float I/O of a model and its integer body.
IO_CONVERSION_OPS = ("QUANTIZE", "DEQUANTIZE")
# Ops that end an integer model in float by design: detection's post-process (decoding and
# NMS; every runtime's kernel takes float inputs there).
FLOAT_TAIL_OPS = ("TFLite_Detection_PostProcess",)
FLOAT_DTYPES = (np.float32, np.float16, np.float64)


def file_name(mode: str) -> str:
    return {"qat": "model_qat_int8.tflite"}.get(mode, f"model_{mode}.tflite")


Outputs = Callable[[tf_keras.Model, tf.Tensor], dict]


def serving_function(
    model: tf_keras.Model,
    preprocessing: Preprocessing,
    image_input: str | None,
    outputs: Outputs,
    batch_size: int | None = None,
) -> tf.types.experimental.ConcreteFunction:
    """The function that becomes the TFLite graph: batch of images -> the task's named
    outputs (`outputs(model, images)`, e.g. `Task.serving_outputs`).

    With `image_input` the input holds raw pixels (uint8, or float32 pixel values) and the
    normalization is part of the graph. `batch_size` fixes the batch dimension (None: any).
    """
    size = [batch_size, *model.input_shape[1:]]
    if image_input is None:

        @tf.function(input_signature=[tf.TensorSpec(size, tf.float32, name="input")])
        def serve(images):
            return outputs(model, images)

    else:
        dtype = tf.uint8 if image_input == "uint8" else tf.float32

        @tf.function(input_signature=[tf.TensorSpec(size, dtype, name="image")])
        def serve(images):
            x = tf.cast(images, tf.float32) * preprocessing.scale + preprocessing.offset
            return outputs(model, x)

    return serve.get_concrete_function()


def converter_for(function, model: tf_keras.Model) -> tf.lite.TFLiteConverter:
    """A converter of `function` (a concrete function over `model`).

    The converter first saves its trackable object as a SavedModel. Given the Keras model,
    that save serializes every layer (tracing each layer's call functions: ~30 s for
    MobileNetV2 0.35 here); a bare module holding only the model's variables gives the same
    flatbuffer, byte for byte, in a quarter of the time (measured 17.5 vs 4.3 s per convert).
    """
    holder = tf.Module()
    holder.model_variables = list(model.variables)
    return tf.lite.TFLiteConverter.from_concrete_functions([function], holder)


def convert(
    model: tf_keras.Model,
    mode: str,
    preprocessing: Preprocessing,
    *,
    outputs: Outputs,
    representative: Callable[[], Iterable[list[np.ndarray]]] | None = None,
    io_type: str = "int8",
    image_input: str | None = None,
    per_tensor: bool = False,
    batch_size: int | None = None,
    float_outputs: bool = False,
) -> bytes:
    """Converts `model` (float, or QAT-annotated for "qat") to a TFLite flatbuffer.

    Args:
      model: the Keras model; for "qat" the output of `qat.quantize`.
      mode: one of MODES.
      preprocessing: the model's normalization constants (used with `image_input`).
      outputs: (model, images) -> the named outputs of the TFLite model (the task's).
      representative: yields [batch] lists of normalized calibration images (with
        `image_input`, spanning exactly [-1, 1]); needed for "int8",
        optional for "qat" (it refines ranges the fake-quant nodes do not cover).
      io_type: input/output type of integer models: "int8", "uint8" or "float32".
      image_input: None, or "uint8" for a raw-pixel input.
      per_tensor: "int8" only: one scale per weight tensor instead of one per output
        channel. The file shrinks (one scale and zero point per tensor instead of per
        channel) and so may the accuracy: a depthwise kernel whose channels differ
        widely in range loses the small ones. QAT models keep the per-channel ranges their
        fake-quant nodes learned.
      batch_size: a fixed batch dimension (the task's `serving_batch`), or None for any.
      float_outputs: integer models keep float32 outputs whatever `io_type` says (the
        task's outputs are float by nature: detection's boxes, scores and count).
    """
    if mode not in MODES:
        raise UserError(f"unknown quantization mode {mode!r}; choose from {', '.join(MODES)}")
    if io_type not in IO_TYPES:
        raise UserError(f"unknown --io_type={io_type}; choose from {', '.join(IO_TYPES)}")
    integer = mode in INTEGER_MODES
    # Integer models fold the normalization into the input's quantization (see above).
    function_input = None if image_input is None or integer else "uint8"
    function = serving_function(model, preprocessing, function_input, outputs, batch_size)
    converter = converter_for(function, model)
    if mode == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif integer:
        if mode == "int8" and representative is None:
            raise ValueError("int8 conversion needs a representative dataset")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if representative is not None:
            converter.representative_dataset = representative
        set_weight_scales(converter, weight_scales(mode, per_tensor))
        # Float kernels stay allowed so that an op without an int8 kernel converts, and
        # `inspect` can name it, instead of failing the conversion with no list.
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
            tf.lite.OpsSet.TFLITE_BUILTINS,
        ]
        converter.inference_input_type = tf.uint8 if image_input else IO_TYPES[io_type]
        converter.inference_output_type = tf.float32 if float_outputs else IO_TYPES[io_type]
    try:
        with native_output_captured():
            content = converter.convert()
    except Exception as e:  # the converter raises ConverterError, RuntimeError, ValueError...
        raise UserError(
            f"TFLite conversion ({mode}) failed: {str(e).strip().splitlines()[-1][:300]}"
        ) from e
    return in_output_order(content, list(function.structured_outputs))


def in_output_order(content: bytes, names: list[str]) -> bytes:
    """`content` with its outputs listed in the order of `names` (the serving function's),
    for apps that read outputs by position (see `flatbuffer.order_outputs`)."""
    if len(names) < 2:
        return content
    details = load_interpreter(content).get_signature_runner().get_output_details()
    return flatbuffer.order_outputs(content, [int(details[n]["index"]) for n in names])


@contextlib.contextmanager
def native_output_captured():
    """Holds back what native code prints to stdout/stderr inside (the converter's
    "fully_quantize: 0, inference_type: 6 ..." and "Ignored output_format" lines, which a
    user cannot act on), and prints it only if the block raises."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 1)
        os.dup2(capture.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            if failed:
                capture.seek(0)
                sys.stderr.write(capture.read().decode("utf-8", "replace"))


def weight_scales(mode: str, per_tensor: bool) -> str | None:
    """How the weights of a `mode` model are scaled: "per-tensor" (int8 PTQ with
    `per_tensor`), "per-channel" (the other integer models: QAT keeps the per-channel
    ranges its fake-quant nodes learned), or None (float and dynamic-range models)."""
    if mode not in INTEGER_MODES:
        return None
    return "per-tensor" if per_tensor and mode == "int8" else "per-channel"


def set_weight_scales(converter: tf.lite.TFLiteConverter, scales: str | None) -> None:
    """Makes `converter` quantize weights with one scale per tensor when `scales` says so."""
    if scales == "per-tensor":
        # The converter's only switch for this (TF 2.21); private but long-lived.
        converter._experimental_disable_per_channel = True


def compensate_input_offset(model: tf_keras.Model, offset: float) -> tf_keras.Model | None:
    """A copy of `model` that gives on input `x + offset` what `model` gives on `x`.

    The first convolution sees every input value shifted by `offset`, so its outputs move by
    `offset * sum(kernel)` per channel; the batch norm after it (moving mean) or its bias
    takes that back. Exact wherever the kernel does not overlap the zero padding (at the
    border the padded taps were never shifted). Returns None when the model does not start
    with a convolution followed by batch norm or with a bias.
    """
    first = next(
        (layer for layer in model.layers if isinstance(layer, tf_keras.layers.Conv2D)), None
    )
    if first is None or isinstance(first, tf_keras.layers.DepthwiseConv2D):
        return None
    clone = tf_keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    conv = clone.get_layer(first.name)
    shift = offset * conv.kernel.numpy().sum(axis=(0, 1, 2))
    following = [node.outbound_layer for node in conv._outbound_nodes]
    norm = next((f for f in following if isinstance(f, tf_keras.layers.BatchNormalization)), None)
    if norm is not None:
        norm.moving_mean.assign(norm.moving_mean.numpy() + shift)
    elif conv.use_bias:
        conv.bias.assign(conv.bias.numpy() - shift)
    else:
        return None
    return clone


@dataclasses.dataclass
class TensorInfo:
    name: str
    shape: list[int]
    dtype: str
    scale: float
    zero_point: int


@dataclasses.dataclass
class ModelInfo:
    """What a `.tflite` file holds, as LiteRT sees it."""

    size_bytes: int
    ops: dict[str, int]  # op type -> count
    float_ops: list[str]  # compute ops with a float input or output ("NAME#index")
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    # (scale, zero point, dtype) of the grid an image input lands on: the input's own
    # quantization, or for a float input that the model quantizes first, that QUANTIZE op's
    # output's; None for a float model or a raw-pixel input.
    input_grid: tuple[float, int, str] | None = None


def _tensor_info(detail: dict) -> TensorInfo:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorInfo(
        name=detail["name"],
        shape=[int(d) for d in detail["shape"]],
        dtype=np.dtype(detail["dtype"]).name,
        scale=float(scale),
        zero_point=int(zero_point),
    )


def inspect(content: bytes) -> ModelInfo:
    """Op histogram, float compute ops and I/O of a flatbuffer."""
    interpreter = load_interpreter(content)
    ops = interpreter._get_ops_details()  # LiteRT has no public op list
    histogram = collections.Counter(op["op_name"] for op in ops)
    float_ops = []
    for op in ops:
        if op["op_name"] in IO_CONVERSION_OPS + FLOAT_TAIL_OPS:
            continue
        tensors = [t for t in (*op["inputs"], *op["outputs"]) if t >= 0]
        dtypes = [interpreter._get_tensor_details(t, 0)["dtype"] for t in tensors]
        if any(np.dtype(d).type in FLOAT_DTYPES for d in dtypes):
            float_ops.append(f"{op['op_name']}#{op['index']}")
    return ModelInfo(
        size_bytes=len(content),
        ops=dict(sorted(histogram.items(), key=lambda kv: (-kv[1], kv[0]))),
        float_ops=float_ops,
        inputs=[_tensor_info(d) for d in interpreter.get_input_details()],
        outputs=[_tensor_info(d) for d in interpreter.get_output_details()],
        input_grid=_input_grid(interpreter, ops),
    )


def _input_grid(interpreter, ops: list[dict]) -> tuple[float, int, str] | None:
    """`ModelInfo.input_grid` of a loaded model."""
    detail = interpreter.get_input_details()[0]
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if scale:
        return float(scale), int(zero_point), np.dtype(detail["dtype"]).name
    if np.dtype(detail["dtype"]).kind != "f":
        return None
    for op in ops:
        if op["op_name"] == "QUANTIZE" and detail["index"] in op["inputs"]:
            out = interpreter._get_tensor_details(op["outputs"][0], 0)
            scale, zero_point = out["quantization"]
            return float(scale), int(zero_point), np.dtype(out["dtype"]).name
    return None


def load_interpreter(content: bytes, num_threads: int | None = None) -> litert.Interpreter:
    """A LiteRT interpreter over a flatbuffer, with a one-line error if it is not one."""
    try:
        return litert.Interpreter(model_content=content, num_threads=num_threads)
    except (ValueError, RuntimeError) as e:
        raise UserError(f"not a valid TFLite model ({str(e).strip().splitlines()[0][:200]})") from e
