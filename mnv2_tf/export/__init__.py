"""Export: a training workdir -> TFLite models (float32, float16, dynamic, int8, QAT int8),
each checked against the float Keras model on held-out data."""

from mnv2_tf.export.convert import MODES, inspect
from mnv2_tf.export.exporter import Options, export
from mnv2_tf.export.run import Run, load

__all__ = ["MODES", "Options", "Run", "export", "inspect", "load"]
