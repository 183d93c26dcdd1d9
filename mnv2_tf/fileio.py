"""Reading and writing a run's files, on local paths, Drive mounts and `gs://` alike.

Every stage (training, export, benchmark, pipeline, report) writes through these helpers,
so a workdir on Cloud Storage works for all of them. Writes are atomic: the content goes
to a temporary name beside the target, which is then renamed over it, so an interrupted
write leaves the previous file (or none), never half of one.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import warnings

import tensorflow as tf


def _tmp_name(path: str) -> str:
    return f"{path}.tmp-{os.getpid()}"


def write_bytes_atomic(path: str, content: bytes) -> None:
    tmp = _tmp_name(path)
    with tf.io.gfile.GFile(tmp, "wb") as f:
        f.write(content)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def write_text_atomic(path: str, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str, value) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


def read_json(path: str, default=None):
    """The JSON value in `path`, or `default` where there is no such file."""
    if not tf.io.gfile.exists(path):
        return default
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def read_bytes(path: str) -> bytes:
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read()


def png_bytes(fig, dpi: int) -> bytes:
    """A matplotlib figure rendered as PNG (and closed), for the atomic writes above."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


def exists(path: str) -> bool:
    return tf.io.gfile.exists(path)


def mtime(path: str) -> float:
    """Modification time in seconds (gfile reports nanoseconds on every filesystem)."""
    return tf.io.gfile.stat(path).mtime_nsec / 1e9


def makedirs(path: str) -> None:
    tf.io.gfile.makedirs(path)


def local_copy(path: str) -> str:
    """h5py reads local files only: a gs:// or Drive path is copied to a temp folder first."""
    if os.path.exists(path):
        return path
    local = os.path.join(tempfile.mkdtemp(), os.path.basename(path))
    tf.io.gfile.copy(path, local, overwrite=True)
    return local


@contextlib.contextmanager
def _quiet_keras_save():
    """Keras' save warns on every call of things a user cannot act on: that HDF5 is a
    legacy format (it is the one Keras' ImageNet weights and tfmot load), and, for a model
    never compiled (ours: the trainer has its own loop), that its compiled metrics "have
    yet to be built"."""
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="You are saving your model as an HDF5")
            yield
    finally:
        logger.setLevel(level)


def save_h5_atomic(model, path: str) -> None:
    """A Keras model as HDF5. Keras writes HDF5 through h5py (local files only): write
    locally, then copy to a temporary name beside `path` and rename."""
    with tempfile.TemporaryDirectory() as tmp, _quiet_keras_save():
        local = os.path.join(tmp, "model.h5")
        model.save(local, include_optimizer=False)
        tf.io.gfile.copy(local, _tmp_name(path), overwrite=True)
    tf.io.gfile.rename(_tmp_name(path), path, overwrite=True)


def save_saved_model_atomic(model, path: str) -> None:
    """A Keras model as a SavedModel folder, written beside `path` and renamed into place."""
    tmp = _tmp_name(path)
    if tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)
    with _quiet_keras_save():
        model.save(tmp, include_optimizer=False, save_format="tf")
    if tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)
    tf.io.gfile.rename(tmp, path)
