"""Test set-up: mnv2_tf is imported first so that TF_USE_LEGACY_KERAS is set in its one place."""

import mnv2_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

# isort: split
import contextlib
import fcntl
import os
import pathlib
import shutil

import numpy as np
import pytest
import tf_keras


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Every test starts from a clean Keras graph and fixed seeds."""
    tf_keras.backend.clear_session()
    tf_keras.utils.set_random_seed(0)
    np.random.seed(0)
    yield
    tf_keras.mixed_precision.set_global_policy("float32")


def _randomize_weights(model: tf_keras.Model, seed: int = 0) -> None:
    """Gives every variable (BN moving statistics included) random values, so that a
    transplant test cannot pass by accident on default initialisation."""
    rng = np.random.default_rng(seed)
    for var in model.weights:
        if "moving_variance" in var.name or "gamma" in var.name:
            value = rng.uniform(0.5, 1.5, var.shape)
        else:
            value = rng.normal(0.0, 0.1, var.shape)
        var.assign(value.astype(var.dtype.as_numpy_dtype))


@pytest.fixture
def randomize_weights():
    return _randomize_weights


# --- in CI a skipped test is a failure ------------------------------------------------------
# CI installs everything the suite needs (the Fashion-MNIST package included), so a test that
# skips there has silently stopped testing anything.
_skipped: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped and report.when in ("setup", "call"):
        _skipped.append(report.nodeid)


def pytest_terminal_summary(terminalreporter):
    if os.environ.get("CI") and _skipped:
        terminalreporter.write_line(
            f"CI: {len(_skipped)} skipped test(s) count as failures: {', '.join(_skipped)}",
            red=True,
        )


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("CI") and _skipped and exitstatus == 0:
        session.exitstatus = 1


# --- fixtures built once per test session, whichever worker asks first ------------------------


def built_once(tmp_path_factory, name: str, build) -> pathlib.Path:
    """A folder `build(folder)` fills once per session and every pytest-xdist worker then
    reads (tests that change it work on a copy). The first worker to ask builds it under a
    file lock while the other waits, instead of both training the same run."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # this session's
    folder, done = root / f"shared_{name}", root / f"shared_{name}.done"
    with open(root / f"shared_{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not done.exists():
                if folder.exists():
                    shutil.rmtree(folder)
                folder.mkdir()
                build(folder)
                done.write_text("")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return folder


# --- a user's data is read-only to us ---------------------------------------------------------


def tree_digest(root) -> dict[str, str]:
    """Every file and folder under `root` (relative path -> sha256 of its bytes, or "dir"):
    equal before and after a stage means the stage wrote nothing there."""
    import hashlib

    root = pathlib.Path(root)
    digest = {}
    for path in sorted(root.rglob("*")):
        key = path.relative_to(root).as_posix()
        digest[key] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


def _chattr(flag: str, root) -> bool:
    import subprocess

    done = subprocess.run(["chattr", "-R", flag, str(root)], capture_output=True, check=False)
    return done.returncode == 0


@contextlib.contextmanager
def read_only_tree(root):
    """`root` made immutable for the block (`chattr +i`: even root cannot write, create or
    delete there; CI runs as root, so permission bits alone would prove nothing), and its
    digest compared after. Yields whether the file system took the immutable flag (ext4
    does; where one does not, the digest alone checks)."""
    before = tree_digest(root)
    immutable = _chattr("+i", root)
    try:
        yield immutable
    finally:
        if immutable:
            _chattr("-i", root)
    after = tree_digest(root)
    assert after == before, f"files under {root} changed: " + ", ".join(
        sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))[:5]
    )


# --- the longest files first ------------------------------------------------------------------
# pytest-xdist (--dist loadfile) hands files to the two workers in collection order; the files
# that build trained fixtures go first, so that no long file starts last while the other
# worker has nothing left to do.
FIRST = ("test_detection_task.py", "test_export.py", "test_segmentation_task.py",
         "test_pipeline.py", "test_tasks.py", "test_train.py", "test_bench.py")  # fmt: skip


def pytest_collection_modifyitems(session, config, items):
    def rank(item):
        name = item.path.name
        return FIRST.index(name) if name in FIRST else len(FIRST)

    items.sort(key=rank)  # stable: the order within a file is kept
