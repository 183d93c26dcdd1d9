"""Proves that exported models run unchanged in MediaPipe Tasks, by running MediaPipe itself.

MediaPipe cannot share our venv (mediapipe 1.2.2 needs absl-py ~=2.3, tensorflow-model-
optimization 0.8.1 needs ~=1.2; older releases need numpy < 2 and protobuf < 5, which TF 2.21
rejects), so it gets a venv of its own (`ensure_venv`, built once and reused) where
`mediapipe_client.py` runs ImageClassifier, ObjectDetector or ImageSegmenter on image files,
configured from each model's metadata alone. Here the same images go through LiteRT, fed as
the metadata says (`evaluate.Runner`), and the task compares the two
(`Task.mediapipe_agreement`: each task knows what its API's outputs mean); a task without a
MediaPipe API is refused in one line.

The images are eval-split images at the model's input size, as whole RGB pixels in PNG files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import tensorflow as tf

from mnv2_tf import fileio
from mnv2_tf.errors import UserError
from mnv2_tf.export import evaluate
from mnv2_tf.export import run as run_lib

REQUIREMENT = "mediapipe==1.2.2"
DEFAULT_VENV = os.path.join(os.path.expanduser("~"), ".cache", "mnv2_tf", "mediapipe-1.2.2")
CLIENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mediapipe_client.py")


def ensure_venv(path: str | None = None, log=print) -> str:
    """The python of a venv holding REQUIREMENT: `path` (default $MNV2_MEDIAPIPE_VENV, else
    ~/.cache/mnv2_tf/mediapipe-1.2.2), built with pip from the package registry if it does
    not hold it yet."""
    path = path or os.environ.get("MNV2_MEDIAPIPE_VENV") or DEFAULT_VENV
    python = os.path.join(path, "bin", "python")
    version = REQUIREMENT.split("==")[1]
    probe = f"import mediapipe; assert mediapipe.__version__ == {version!r}"
    if os.path.exists(python) and _quiet([python, "-c", probe]).returncode == 0:
        return python
    log(f"building a venv for {REQUIREMENT} at {path} (once; it is reused) ...")
    for step in (
        [sys.executable, "-m", "venv", "--clear", path],
        [python, "-m", "pip", "install", "-q", REQUIREMENT],
        [python, "-c", probe],
    ):
        done = _quiet(step)
        if done.returncode != 0:
            last = (done.stderr or done.stdout or "").strip().splitlines()[-1:] or ["no output"]
            raise UserError(
                f"could not set up {REQUIREMENT} in {path} ({last[0][:200]}); the check needs "
                "the package registry once, or MNV2_MEDIAPIPE_VENV naming a venv that has it"
            )
    return python


def _quiet(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, check=False)


def eval_pixels(run: run_lib.Run, count: int, batch_size: int = 16) -> np.ndarray:
    """The first `count` eval images at the model's input size, as uint8 RGB pixels."""
    ds, _ = run.task.dataset(
        run.preprocessing, run.config.data.eval_split, training=False, batch_size=batch_size,
    )  # fmt: skip
    images = []
    for batch in ds.as_numpy_iterator():
        images.append(batch["image"][batch["valid"] > 0])
        if sum(len(i) for i in images) >= count:
            break
    if not images:
        raise UserError(f"no eval images in the {run.config.data.eval_split} split")
    normalized = np.concatenate(images)[:count]
    return evaluate.to_pixels(normalized, run.preprocessing).astype(np.uint8)


def run_client(python: str, task: str, models: dict[str, str], image_paths: list[str]) -> dict:
    """MediaPipe's outputs ({"NAME/key": array}, see mediapipe_client.py)."""
    with tempfile.TemporaryDirectory() as tmp:
        job, out = os.path.join(tmp, "job.json"), os.path.join(tmp, "out.npz")
        with open(job, "w") as f:
            json.dump({"task": task, "models": models, "images": image_paths}, f)
        done = _quiet([python, CLIENT, job, out])
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            cause = next((line for line in lines if "Error" in line or "RET_CHECK" in line), "")
            raise UserError(
                f"MediaPipe refused or failed on the {task} models "
                f"({(cause or (lines[-1] if lines else 'no output')).strip()[:300]})"
            )
        with np.load(out) as data:
            return {key: data[key] for key in data.files}


def litert_outputs(path: str, run: run_lib.Run, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """The model's outputs on `pixels` through LiteRT, fed as its metadata says."""
    runner = evaluate.Runner(fileio.read_bytes(path), run.preprocessing)
    p = run.preprocessing
    return runner(((pixels.astype(np.float32) - p.mean) / p.std).astype(np.float32))


def check(
    workdir: str,
    export_dir: str | None = None,
    *,
    files: tuple[str, ...] = ("model_float32.tflite", "model_int8.tflite"),
    max_images: int = 200,
    python: str | None = None,
    log=print,
) -> dict:
    """Runs the exported `files` of a workdir in MediaPipe Tasks and in LiteRT on the same
    eval images; returns the comparison of each file (`passed` says it agrees)."""
    task = run_lib.read(workdir).task  # refused before the weights load
    if not task.mediapipe_api:
        raise UserError(
            f"the {task.name} task has no MediaPipe Tasks API: there is no client to check "
            "its models with"
        )
    run = run_lib.load(workdir, "final")
    export_dir = export_dir or os.path.join(workdir, "export")
    python = python or ensure_venv(log=log)
    paths = {f: os.path.join(export_dir, f) for f in files}
    for path in paths.values():
        if not fileio.exists(path):
            raise UserError(f"{path} not found; export the run first (export_tflite.py)")
    pixels = eval_pixels(run, max_images)
    size = tuple(pixels.shape[1:3])
    result = {
        "task": run.task.name,
        "api": run.task.mediapipe_api,
        "images": len(pixels),
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        image_paths = []
        for i, image in enumerate(pixels):
            path = os.path.join(tmp, f"{i:04d}.png")
            tf.io.write_file(path, tf.io.encode_png(image))
            image_paths.append(path)
        log(
            f"MediaPipe {run.task.mediapipe_api} and LiteRT on {len(pixels)} eval images: {', '.join(files)}"
        )
        mp = run_client(python, run.task.name, paths, image_paths)
    for name, path in paths.items():
        ours = litert_outputs(path, run, pixels)
        theirs = {key.split("/", 1)[1]: v for key, v in mp.items() if key.startswith(name + "/")}
        result["models"][name] = run.task.mediapipe_agreement(ours, theirs, size)
    result["passed"] = all(m["passed"] for m in result["models"].values())
    return result
