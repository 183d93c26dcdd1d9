"""Exported models of all three tasks in MediaPipe Tasks itself, against LiteRT.

    python benchmarks/mediapipe_check.py [--classification=WORKDIR] [--detection=WORKDIR]
        [--segmentation=WORKDIR] [--images=1000] [--scratch=/tmp/mnv2_mediapipe]
        [--out=benchmarks/results/mediapipe_check.json]

Each workdir (a task without one is first trained with its `:quick` config into --scratch)
is exported as an app gets it, float32 and int8 with the defaults (uint8 camera pixels in;
metadata; `export.mediapipe=True`, so a file MediaPipe cannot run fails the export), and,
for classification, an int8 model with a float input too (the one whose input used to sit on
a rounding tie). Then `mnv2_tf.export.mediapipe_check` runs ImageClassifier, ObjectDetector
and ImageSegmenter (mediapipe 1.2.2, in a venv of its own, built once) and LiteRT on the same
eval images at the model's input size, and compares: top-1 agreement, detections one to one
(class, score within 1e-4, box within a pixel), category masks pixel for pixel.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from absl import app, flags

import common  # benchmarks/common.py: the script's own folder is on sys.path
import mnv2_tf  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

# isort: split
from mnv2_tf.export import exporter, mediapipe_check

TASKS = {
    "classification": "configs/fashion_mnist.py:quick",
    "detection": "configs/detection_fmnist.py:quick",
    "segmentation": "configs/segmentation_fmnist.py:quick",
}
_WORKDIRS = {
    task: flags.DEFINE_string(task, None, f"A {task} workdir (default: train {config}).")
    for task, config in TASKS.items()
}
_IMAGES = flags.DEFINE_integer("images", 1000, "Eval images per task (at most).")
_SCRATCH = flags.DEFINE_string("scratch", "/tmp/mnv2_mediapipe", "Quick runs and exports.")
_OUT = flags.DEFINE_string("out", common.results_path("mediapipe_check"), "JSON output.")

APP_EXPORT = {
    "modes": "float32,int8", "image_input": "uint8", "io_type": "uint8",
    "category_mask": False, "metadata": True, "mediapipe": True,
}  # fmt: skip
FLOAT_INPUT_INT8 = {**APP_EXPORT, "modes": "int8", "image_input": "", "io_type": "float32"}


def workdir_for(task: str) -> str:
    if _WORKDIRS[task].value:
        return _WORKDIRS[task].value
    workdir = os.path.join(_SCRATCH.value, task)
    if not os.path.exists(os.path.join(workdir, "final", "model.h5")):
        command = [sys.executable, "train.py", f"--config={TASKS[task]}", f"--workdir={workdir}"]
        print("$", " ".join(command), flush=True)
        subprocess.run(command, cwd=common.ROOT, check=True)
    return workdir


def main(argv):
    del argv
    python = mediapipe_check.ensure_venv()
    results = {"machine": common.machine(), "mediapipe": mediapipe_check.REQUIREMENT, "tasks": {}}
    for task in TASKS:
        workdir = workdir_for(task)
        variants = {"app": APP_EXPORT}
        if task == "classification":
            variants["float_input_int8"] = FLOAT_INPUT_INT8
        for variant, settings in variants.items():
            out = os.path.join(_SCRATCH.value, f"{task}_{variant}_export")
            start = time.time()
            report = exporter.export(workdir, settings, output_dir=out)
            export_seconds = time.time() - start
            files = tuple(m["file"] for m in report["models"].values())
            start = time.time()
            checked = mediapipe_check.check(
                workdir, out, files=files, max_images=_IMAGES.value, python=python
            )
            checked.update(
                workdir=workdir, export=settings, export_seconds=round(export_seconds, 1),
                check_seconds=round(time.time() - start, 1),
                inputs={m["file"]: m["inputs"][0] for m in report["models"].values()},
                outputs={m["file"]: [o["dtype"] for o in m["outputs"]] for m in report["models"].values()},
                headline={m["file"]: m.get(report["headline"]["key"]) for m in report["models"].values()},
            )  # fmt: skip
            results["tasks"][f"{task}/{variant}"] = checked
            for name, figures in checked["models"].items():
                print(f"{task}/{variant} {name}: {figures}")
    results["passed"] = all(r["passed"] for r in results["tasks"].values())
    common.write_results(_OUT.value, results)
    if not results["passed"]:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
