"""Starting a model from a classifier's `.h5`: Keras' ImageNet files, our own runs.

Our layer names are Keras', so the files of `tf_keras.applications.MobileNetV2` (and
`MobileNet` for V1) load directly, as do our classification runs' `model.h5` and the named
backbones' (`mnv2_tf/backbones.py`). What transfers is said once, in
`load_imagenet_weights`: every backbone layer by name, BN statistics included, whatever the
stride plan or input size; the head starts new. Loading checks every layer first: a file
that does not fit stops in one line naming the first layer that differs, before anything is
loaded. URLs are fetched once into ~/.cache/mnv2_tf/downloads (`fetch`, with a mirror).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request

import h5py
import numpy as np
import tensorflow as tf
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


def imagenet_weights_for(model: str, alpha: float, input_size: int) -> str:
    """The official no-top ImageNet file for a backbone of that width, at the official
    resolution nearest to `input_size` (the weights fit any size; the nearest was trained
    on objects of the most similar scale)."""
    sizes = IMAGENET_SIZES if model == "mobilenet_v2" else IMAGENET_SIZES[1:]
    size = min(sizes, key=lambda s: (abs(s - input_size), -s))
    return imagenet_weights_url(alpha, size, include_top=False, model=model)


@dataclasses.dataclass
class LoadReport:
    """What `load_imagenet_weights` did."""

    path: str
    loaded: list[str]
    skipped_head: list[str]  # head layers left new (absent from the file, or another shape)
    not_in_file: list[str]  # head layers the file lacks (a subset of skipped_head)


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def download_cache() -> str:
    """Where downloaded weights are kept: ~/.cache/mnv2_tf/downloads."""
    return os.path.join(os.path.expanduser("~"), ".cache", "mnv2_tf", "downloads")


def is_url(path_or_url: str) -> bool:
    return urllib.parse.urlparse(path_or_url).scheme in ("http", "https", "ftp", "file", "gs")


def _copy_checked(read, url: str, target: str) -> None:
    """Writes what `read()` (a file object) yields to `target` through a temporary file,
    and renames it into place only if it is a whole HDF5 file: an interrupted download
    leaves nothing a later run would take for the weights."""
    tmp = f"{target}.tmp{os.getpid()}"
    try:
        with read() as source, open(tmp, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
        with open(tmp, "rb") as f:
            if f.read(len(HDF5_SIGNATURE)) != HDF5_SIGNATURE:
                raise UserError(f"{url} is not an HDF5 (.h5) weights file")
        try:
            h5py.File(tmp, "r").close()
        except OSError as e:
            raise UserError(
                f"{url} arrived incomplete ({e}); run again to download it again"
            ) from e
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def fetch(url: str, cache_dir: str | None = None, mirror: str | None = None) -> str:
    """A local copy of the weights at `url` (http(s), ftp, file, gs), downloaded once.

    The copy is `cache_dir` (default `download_cache()`)/<the URL's file name>; a run that
    finds it there reads no network. `mirror` (a folder, local or gs://, holding files under
    their URL's names) is looked in first: the way on when a bucket has vanished."""
    name = os.path.basename(urllib.parse.urlparse(url).path)
    if not name:
        raise UserError(f"{url} names no file; give the URL of a .h5 file")
    cache_dir = cache_dir or download_cache()
    target = os.path.join(cache_dir, name)
    if os.path.isfile(target):
        return target
    os.makedirs(cache_dir, exist_ok=True)
    if mirror:
        mirrored = os.path.join(mirror, name)
        if not tf.io.gfile.exists(mirrored):
            raise UserError(
                f"model.weights_mirror: {mirrored} not found; put {name} (from {url}) in "
                f"{mirror}, or unset the mirror to download it"
            )
        _copy_checked(lambda: tf.io.gfile.GFile(mirrored, "rb"), mirrored, target)
        return target
    if urllib.parse.urlparse(url).scheme == "gs":
        read = lambda: tf.io.gfile.GFile(url, "rb")  # noqa: E731
    else:
        read = lambda: urllib.request.urlopen(url, timeout=60)  # noqa: E731
    try:
        _copy_checked(read, url, target)
    except (OSError, urllib.error.URLError, tf.errors.OpError) as e:
        raise UserError(
            f"could not download {url} ({type(e).__name__}: {e}); download it where there is "
            "a network and pass its local path, or put it in a folder given as "
            "--config.model.weights_mirror=FOLDER"
        ) from e
    return target


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
    model: tf_keras.Model,
    path_or_url: str,
    cache_dir: str | None = None,
    head_layers=HEAD_LAYERS,
    mirror: str | None = None,
) -> LoadReport:
    """Loads Keras ImageNet (or any Keras-named) `.h5` weights into `model` by layer name.

    What transfers: every layer of the backbone (each layer not in `head_layers`), weights
    and BatchNorm statistics, by name; the stride plan and input size may differ (no weight
    depends on them). The head keeps its initialization unless the file holds a layer of
    its name and shapes (another run of the same task and classes).

    Args:
      model: a MobileNet classifier, or a detector / segmenter built on one.
      path_or_url: a local `.h5` file (Keras weights or a whole model), or a URL (`fetch`:
        downloaded once into the cache). `imagenet_weights_url()` gives the official ones.
      cache_dir: where downloads are kept (default ~/.cache/mnv2_tf/downloads).
      head_layers: the names of the layers that make up the model's head.
      mirror: a folder looked in for a URL's file before the network.

    Returns:
      A `LoadReport`.

    Raises:
      UserError: the file is missing, unreadable or incomplete, or does not fit the
        backbone: the first backbone layer that the file lacks or holds in other shapes is
        named (weights of another width multiplier, or of MobileNetV1 into V2).
    """
    path = fetch(path_or_url, cache_dir, mirror) if is_url(path_or_url) else path_or_url
    if not os.path.isfile(path):
        raise UserError(f"weights file not found: {path}; pass a local .h5 path or a URL")
    stored = _read_h5_weights(path)
    head = set(head_layers) | set(HEAD_LAYERS)
    loaded, skipped_head, not_in_file, assignments = [], [], [], []
    for layer in model.layers:
        if not layer.weights:
            continue
        shapes = [tuple(w.shape) for w in layer.weights]
        values = stored.get(layer.name)
        fits = values is not None and shapes == [v.shape for v in values]
        if layer.name in head:
            if fits:
                assignments.append((layer, values))
                loaded.append(layer.name)
            else:
                skipped_head.append(layer.name)
                if values is None:
                    not_in_file.append(layer.name)
            continue
        if values is None:
            some = ", ".join(list(stored)[:3])
            raise UserError(
                f"{path} does not fit {model.name}: its backbone layer {layer.name} (the first "
                f"that differs) is not in the file, which holds {some}, ...: weights of another "
                "model (MobileNetV1 and V2 name their layers apart) or of another model.blocks"
            )
        if not fits:
            raise UserError(
                f"{path} does not fit {model.name}: layer {layer.name} (the first that differs) "
                f"has shapes {[v.shape for v in values]} in the file but {shapes} in the model; "
                "the weights are for another width multiplier (model.alpha) or model"
            )
        assignments.append((layer, values))
        loaded.append(layer.name)
    for layer, values in assignments:
        layer.set_weights(values)
    return LoadReport(path=path, loaded=loaded, skipped_head=skipped_head, not_in_file=not_in_file)
