"""mnv2_tf: MobileNetV2 from training to a phone.

Importing this package is the one place that selects Keras 2: TensorFlow 2.16+ maps
`tf.keras` to Keras 3 unless `TF_USE_LEGACY_KERAS=1` is set before TensorFlow is first
imported, and tensorflow-model-optimization (QAT) only accepts Keras 2 (`tf_keras`) models.
Every module of the package imports `tf_keras` directly.
"""

import os
import sys

if "tensorflow" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    # Too late to switch tf.keras for this process; our own code is unaffected (it uses
    # tf_keras), but tensorflow-model-optimization would see Keras 3.
    import warnings

    warnings.warn(
        "tensorflow was imported before mnv2_tf; import mnv2_tf first (or set "
        "TF_USE_LEGACY_KERAS=1) so that tf.keras is Keras 2 for quantization-aware training",
        stacklevel=2,
    )
os.environ["TF_USE_LEGACY_KERAS"] = "1"
# TensorFlow's C++ INFO lines (CUDA probing, CPU features) drown the useful output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

__version__ = "0.1.0"
