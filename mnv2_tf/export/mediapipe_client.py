"""Runs exported models in MediaPipe Tasks: the client side of `mediapipe_check`.

This file runs in a venv of its own (mediapipe cannot share ours: see mediapipe_check.py)
and imports nothing of mnv2_tf, only numpy and mediapipe:

    <mediapipe venv>/bin/python mediapipe_client.py JOB.json OUT.npz

JOB.json: {"task": "classification" | "detection" | "segmentation",
           "models": {name: path of a .tflite}, "images": [paths of image files]}.
OUT.npz, per model name:
  classification: NAME/scores [images, classes] (MediaPipe's score of every category, by
    index) and NAME/top [images] (its first category);
  detection: NAME/detections [rows, 6]: image, left, top, width, height (pixels, as
    MediaPipe gives them), score, a row per category of each detection (MediaPipe merges
    detections of identical pixel boxes into one); NAME/names [rows]: the category's name
    (ObjectDetector gives the label from the model's labels file, not its index);
  segmentation: NAME/category_mask [images, H, W] (uint8).
Each model is built with the task API's options from the model alone (its metadata): no
normalization, label or output role is passed in.
"""

import contextlib
import json
import sys

import mediapipe as mp
import numpy as np
from mediapipe.tasks.python import BaseOptions, vision


@contextlib.contextmanager
def opened(api, options_class, path: str, **options):
    """A task API object for the model at `path`, closed on the way out."""
    task = api.create_from_options(
        options_class(base_options=BaseOptions(model_asset_path=path), **options)
    )
    try:
        yield task
    finally:
        task.close()


def classify(path: str, images: list) -> dict:
    scores, top = [], []
    api, options = vision.ImageClassifier, vision.ImageClassifierOptions
    with opened(api, options, path, max_results=-1) as classifier:
        for image in images:
            categories = classifier.classify(image).classifications[0].categories
            row = np.full(len(categories), np.nan, np.float32)
            for c in categories:
                row[c.index] = c.score
            scores.append(row)
            top.append(categories[0].index)
    return {"scores": np.stack(scores), "top": np.asarray(top, np.int64)}


def detect(path: str, images: list) -> dict:
    rows, names = [], []
    with opened(vision.ObjectDetector, vision.ObjectDetectorOptions, path, max_results=-1) as d:
        for i, image in enumerate(images):
            for detection in d.detect(image).detections:
                # MediaPipe merges detections whose pixel boxes are identical into one with
                # several categories (DetectionsDeduplicateCalculator): a row for each.
                box = detection.bounding_box
                for category in detection.categories:
                    rows.append(
                        [i, box.origin_x, box.origin_y, box.width, box.height, category.score]
                    )
                    names.append(category.category_name or "")
    return {
        "detections": np.asarray(rows, np.float64).reshape(-1, 6),
        "names": np.asarray(names, dtype=str),
    }


def segment(path: str, images: list) -> dict:
    masks = []
    with opened(
        vision.ImageSegmenter, vision.ImageSegmenterOptions, path,
        output_category_mask=True, output_confidence_masks=False,
    ) as s:  # fmt: skip
        for image in images:
            mask = np.array(s.segment(image).category_mask.numpy_view())
            masks.append(mask.reshape(mask.shape[:2]))
    return {"category_mask": np.stack(masks).astype(np.uint8)}


RUNNERS = {"classification": classify, "detection": detect, "segmentation": segment}


def main(job_path: str, out_path: str) -> None:
    with open(job_path) as f:
        job = json.load(f)
    images = [mp.Image.create_from_file(p) for p in job["images"]]
    out = {}
    for name, path in job["models"].items():
        for key, value in RUNNERS[job["task"]](path, images).items():
            out[f"{name}/{key}"] = value
    np.savez(out_path, **out)
    print(f"mediapipe {mp.__version__}: {len(job['models'])} model(s) x {len(images)} images")


if __name__ == "__main__":
    main(*sys.argv[1:3])
