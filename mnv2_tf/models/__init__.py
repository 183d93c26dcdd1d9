"""The model zoo: MobileNetV2, its MobileNetV1 baseline, weights and preprocessing."""

from __future__ import annotations

import tf_keras

from mnv2_tf.models.common import (
    DEFAULT_PREPROCESSING,
    Preprocessing,
    make_divisible,
    preprocess_input,
)
from mnv2_tf.models.mobilenet_v1 import MNV1_BLOCK_SPECS, SeparableSpec, mobilenet_v1
from mnv2_tf.models.mobilenet_v2 import (
    MNV2_BLOCK_SPECS,
    BlockSpec,
    endpoint_layer_names,
    feature_extractor,
    mobilenet_v2,
)
from mnv2_tf.models.weights import (
    LoadReport,
    fetch,
    imagenet_weights_for,
    imagenet_weights_url,
    is_url,
    load_imagenet_weights,
)

BUILDERS = {"mobilenet_v2": mobilenet_v2, "mobilenet_v1": mobilenet_v1}


def build(name: str, **kwargs) -> tf_keras.Model:
    """Builds the model called `name` ("mobilenet_v2" or "mobilenet_v1") with `kwargs`."""
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(BUILDERS)}")
    return BUILDERS[name](**kwargs)


__all__ = [
    "BUILDERS",
    "DEFAULT_PREPROCESSING",
    "MNV1_BLOCK_SPECS",
    "MNV2_BLOCK_SPECS",
    "BlockSpec",
    "LoadReport",
    "Preprocessing",
    "SeparableSpec",
    "build",
    "endpoint_layer_names",
    "feature_extractor",
    "fetch",
    "imagenet_weights_for",
    "imagenet_weights_url",
    "is_url",
    "load_imagenet_weights",
    "make_divisible",
    "mobilenet_v1",
    "mobilenet_v2",
    "preprocess_input",
]
