"""Loading Keras' official ImageNet `.h5` weights into our models, by layer name.

Our layer names are Keras', so the files of `tf_keras.applications.MobileNetV2` (and
`MobileNet` for V1) load directly. Loading checks every layer's shapes first: a file for
another width multiplier fails with a clear error instead of half-loading, and only the
classifier may differ (fine-tuning onto another number of classes keeps the fresh head).
"""

from __future__ import annotations

import dataclasses
import os
import urllib.parse

import h5py
import numpy as np
import tf_keras

from mnv2_tf.errors import UserError

KERAS_MOBILENET_V2_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
)
KERAS_MOBILENET_V1_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/"
# Official files exist for these (alpha, input size) pairs only.
IMAGENET_V2_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
IMAGENET_V1_ALPHAS = (0.25, 0.5, 0.75, 1.0)
IMAGENET_SIZES = (96, 128, 160, 192, 224)
HEAD_LAYERS = ("predictions", "conv_preds")


def imagenet_weights_url(
    alpha: float = 1.0, input_size: int = 224, include_top: bool = True, model: str = "mobilenet_v2"
) -> str:
    """The URL of Keras' official ImageNet weights for a MobileNet of that shape."""
    if model == "mobilenet_v2":
        if alpha not in IMAGENET_V2_ALPHAS or input_size not in IMAGENET_SIZES:
            raise UserError(
                f"no official MobileNetV2 ImageNet weights for alpha={alpha}, size={input_size}; "
                f"choose alpha in {IMAGENET_V2_ALPHAS} and size in {IMAGENET_SIZES}"
            )
        suffix = "_no_top" if not include_top else ""
        name = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{input_size}{suffix}.h5"
        return KERAS_MOBILENET_V2_URL + name
    if model == "mobilenet_v1":
        v1_sizes = (128, 160, 192, 224)
        if alpha not in IMAGENET_V1_ALPHAS or input_size not in v1_sizes:
            raise UserError(
                f"no official MobileNetV1 ImageNet weights for alpha={alpha}, size={input_size}; "
                f"choose alpha in {IMAGENET_V1_ALPHAS} and size in {v1_sizes}"
            )
        alpha_text = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}[alpha]
        suffix = "_no_top" if not include_top else ""
        return f"{KERAS_MOBILENET_V1_URL}mobilenet_{alpha_text}_{input_size}_tf{suffix}.h5"
    raise UserError(f"unknown model {model!r}; use mobilenet_v2 or mobilenet_v1")


@dataclasses.dataclass
class LoadReport:
    """What `load_imagenet_weights` did."""

    path: str
    loaded: list[str]
    skipped_head: list[str]
    not_in_file: list[str]


def _fetch(path_or_url: str, cache_dir: str | None) -> str:
    """A local path for `path_or_url`, downloading (once, cached) when it is a URL."""
    scheme = urllib.parse.urlparse(path_or_url).scheme
    if scheme in ("http", "https", "ftp", "file"):
        fname = os.path.basename(urllib.parse.urlparse(path_or_url).path)
        if cache_dir is not None:
            # get_file silently falls back to /tmp/.keras when the folder does not exist yet.
            os.makedirs(cache_dir, exist_ok=True)
        try:
            return tf_keras.utils.get_file(
                fname, path_or_url, cache_subdir="models", cache_dir=cache_dir
            )
        except Exception as e:  # get_file raises several types for network failures
            raise UserError(
                f"could not download {path_or_url} ({type(e).__name__}: {e}); "
                "download the file where there is a network and pass its local path"
            ) from e
    if not os.path.isfile(path_or_url):
        raise UserError(f"weights file not found: {path_or_url}; pass a local .h5 path or a URL")
    return path_or_url


def _read_h5_weights(path: str) -> dict[str, list[np.ndarray]]:
    """Layer name -> list of weight arrays, from a Keras `.h5` weights or model file."""
    try:
        with h5py.File(path, "r") as f:
            group = (
                f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
            )
            if "layer_names" not in group.attrs:
                raise UserError(f"{path} is not a Keras .h5 weights file (no layer_names)")
            result = {}
            for raw_name in group.attrs["layer_names"]:
                name = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
                layer_group = group[name]
                weight_names = [
                    w.decode() if isinstance(w, bytes) else str(w)
                    for w in layer_group.attrs["weight_names"]
                ]
                if weight_names:
                    result[name] = [np.asarray(layer_group[w]) for w in weight_names]
            return result
    except OSError as e:
        raise UserError(f"cannot read {path} as HDF5 ({e}); is the file complete?") from e


def load_imagenet_weights(
    model: tf_keras.Model, path_or_url: str, cache_dir: str | None = None
) -> LoadReport:
    """Loads Keras ImageNet (or any Keras-named) `.h5` weights into `model` by layer name.

    Args:
      model: a model from `mobilenet_v2` / `mobilenet_v1` (any head, any input size:
        convolution weights do not depend on it).
      path_or_url: a local `.h5` file, or a URL (downloaded once through
        `tf_keras.utils.get_file`, so it needs a network; `file://` works offline).
        `imagenet_weights_url()` gives the official ones.
      cache_dir: where downloads are kept (default `~/.keras`).

    Returns:
      A `LoadReport`. A classifier whose shape differs (another number of classes) keeps
      its fresh initialisation and is listed in `skipped_head`.

    Raises:
      UserError: the file is missing or unreadable, holds no layer of this model, or a
        backbone layer's shape differs (weights for another width multiplier).
    """
    path = _fetch(path_or_url, cache_dir)
    stored = _read_h5_weights(path)
    loaded, skipped_head, not_in_file, assignments = [], [], [], []
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in stored:
            not_in_file.append(layer.name)
            continue
        values = stored[layer.name]
        shapes = [tuple(w.shape) for w in layer.weights]
        if shapes != [v.shape for v in values]:
            if layer.name in HEAD_LAYERS:
                skipped_head.append(layer.name)
                continue
            raise UserError(
                f"{path}: layer {layer.name} has shapes {[v.shape for v in values]} in the file but "
                f"{shapes} in the model; the weights are for another width multiplier or model"
            )
        assignments.append((layer, values))
        loaded.append(layer.name)
    if not loaded:
        raise UserError(
            f"{path} holds no weights for any layer of {model.name}; is it a MobileNet file?"
        )
    for layer, values in assignments:
        layer.set_weights(values)
    return LoadReport(path=path, loaded=loaded, skipped_head=skipped_head, not_in_file=not_in_file)
