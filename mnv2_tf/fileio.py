"""Reading and writing a run's files, on local paths, Drive mounts and `gs://` alike.

Every stage (training, export, benchmark, pipeline, report) writes through these helpers,
so a workdir on Cloud Storage works for all of them. Writes are atomic: the content goes
to a temporary name beside the target, which is then renamed over it, so an interrupted
write leaves the previous file (or none), never half of one.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
import warnings

import tensorflow as tf

from mnv2_tf.errors import UserError


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


def readable(path: str):
    """What PIL and ElementTree can open: a local path as it is, anything else (gs://,
    another TensorFlow file system) as its bytes."""
    return path if "://" not in path else io.BytesIO(read_bytes(path))


def isdir(path: str) -> bool:
    return tf.io.gfile.isdir(path)


def listdir(path: str) -> list[str]:
    return tf.io.gfile.listdir(path)


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


# --- one writer per workdir ---------------------------------------------------------------
LOCK_NAME = "workdir.lock"
HEARTBEAT_S = 30.0  # the holder rewrites its lock this often
STALE_S = 600.0  # a lock not rewritten for this long was left by a run that is gone
_held: dict[str, int] = {}  # workdirs this process holds, with their nesting depth
_held_guard = threading.Lock()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(holder: dict | None, age_s: float) -> bool:
    """Whether a lock's holder is gone: a dead process of this host, or no heartbeat for
    STALE_S (another machine's run: a Colab runtime on the same Drive folder)."""
    if holder is None:  # unreadable: a holder killed between creating and writing it
        return age_s > 2 * HEARTBEAT_S
    if holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", -1))):
        return True
    return time.time() - float(holder.get("beat", 0.0)) > STALE_S


def _read_lock(path: str) -> dict | None:
    try:
        return json.loads(read_bytes(path).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, tf.errors.OpError):
        return None


def _try_create(path: str, content: bytes) -> bool:
    """Creates `path` only if it does not exist: O_EXCL on local files (Drive mounts
    included); on a bucket, write then read back (the last writer wins, and knows it)."""
    if "://" not in path:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        return True
    if exists(path):
        return False
    write_bytes_atomic(path, content)
    time.sleep(1.0)
    return read_bytes(path) == content


@contextlib.contextmanager
def workdir_lock(workdir: str, what: str):
    """Holds `workdir` for one writer (re-entrant within a process). A second run on the
    same workdir, from this machine or another sharing the folder, stops with one line
    naming the holder; a lock left by a run that died is taken over. A missing workdir has
    nothing to protect (its stage creates it, or says it is missing)."""
    key = os.path.abspath(workdir) if "://" not in workdir else workdir
    with _held_guard:
        if key in _held:
            _held[key] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    if not isdir(workdir):
        yield
        return
    path = os.path.join(workdir, LOCK_NAME)
    token = uuid.uuid4().hex
    holder = {"what": what, "host": socket.gethostname(), "pid": os.getpid(), "token": token,
              "started": time.time()}  # fmt: skip

    def content() -> bytes:
        return json.dumps({**holder, "beat": time.time()}).encode("utf-8")

    for _ in range(2):
        if _try_create(path, content()):
            break
        other = _read_lock(path)
        age = time.time() - mtime(path) if exists(path) else 0.0
        if not _stale(other, age):
            since = datetime.datetime.fromtimestamp(float((other or {}).get("started", 0)))
            raise UserError(
                f"workdir {workdir} is in use by {(other or {}).get('what', 'another run')} "
                f"(pid {(other or {}).get('pid', '?')} on {(other or {}).get('host', '?')}, "
                f"since {since:%Y-%m-%d %H:%M:%S}): wait for it to end or give another "
                f"--workdir (if that run is gone, delete {path})"
            )
        tf.io.gfile.remove(path)  # left by a run that is gone
    else:
        raise UserError(f"could not take the lock {path}: another run took it first; try again")

    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            if (_read_lock(path) or {}).get("token") == token:
                write_bytes_atomic(path, content())

    thread = threading.Thread(target=beat, name="workdir-lock", daemon=True)
    thread.start()
    with _held_guard:
        _held[key] = 1
    try:
        yield
    finally:
        stop.set()
        thread.join()
        with _held_guard:
            del _held[key]
        if (_read_lock(path) or {}).get("token") == token:
            tf.io.gfile.remove(path)
