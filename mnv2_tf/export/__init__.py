"""Export: a training workdir -> TFLite models (float32, float16, dynamic, int8, QAT int8),
each checked by its task against the float Keras model on held-out data."""

from mnv2_tf.export.convert import MODES, inspect
from mnv2_tf.export.exporter import export
from mnv2_tf.export.run import Run, load

__all__ = ["MODES", "Run", "export", "inspect", "load"]
