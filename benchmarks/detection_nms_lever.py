"""How many classes each detected box may carry: the post-process lever, on a trained run.

    python benchmarks/detection_nms_lever.py --workdir=/tmp/mnv2_detection
        [--out=benchmarks/results/detection_nms_lever.json]

The exported detector uses TFLite's fast NMS with `max_classes_per_detection` 1: each box keeps
its best class only, so a box whose best class is wrong scores nothing for the right one.
This evaluates the run's final Keras model on its eval split (pycocotools) with each box
reported under its top 1, 2 and 3 classes (the op's `max_classes_per_detection`; the same
greedy class-agnostic NMS on the best score), nothing retrained. Only the metric moves, not
what an app shows (one class per box): the exported detector keeps k = 1.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from absl import app, flags

import common
from mnv2_tf.detection import boxes as box_lib
from mnv2_tf.detection import coco_eval
from mnv2_tf.export import run as run_lib

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/mnv2_detection", "A trained detection run.")
_OUT = flags.DEFINE_string("out", common.results_path("detection_nms_lever"), "JSON output.")


def detections(codes, scores, anchors, k: int, max_detections: int = 100, iou: float = 0.6):
    decoded = box_lib.decode(codes, anchors).numpy()
    out = []
    for b in range(len(codes)):
        best = scores[b].max(-1)
        keep = tf.image.non_max_suppression(decoded[b], best, max_detections, iou).numpy()
        top = np.argsort(-scores[b][keep], axis=-1)[:, :k]
        rows = [
            (decoded[b][i], c, scores[b][i, c]) for i, cs in zip(keep, top, strict=True) for c in cs
        ]
        out.append(rows[: max_detections * k])
    return out


def main(argv):
    del argv
    run = run_lib.load(_WORKDIR.value, "final")
    ds, _ = run.task.dataset(run.preprocessing, run.config.data.eval_split, training=False,
                             batch_size=50)  # fmt: skip
    maps = {k: coco_eval.CocoMap(run.task.class_names) for k in (1, 2, 3)}
    for batch in ds.as_numpy_iterator():
        codes, scores = (np.asarray(t) for t in run.model(batch["image"], training=False))
        for k, coco in maps.items():
            for i, rows in enumerate(detections(codes, scores, run.task.anchors, k)):
                if batch["valid"][i] <= 0:
                    continue
                n = int(batch["num_boxes"][i])
                coco.add_image(
                    batch["size"][i], batch["boxes"][i][:n], batch["classes"][i][:n],
                    np.array([r[0] for r in rows]).reshape(-1, 4),
                    np.array([r[1] for r in rows]), np.array([r[2] for r in rows]),
                )  # fmt: skip
    results = {"workdir": _WORKDIR.value, "machine": common.machine(), "by_classes_per_box": {}}
    for k, coco in maps.items():
        r = coco.result()
        results["by_classes_per_box"][k] = {
            "map": r["map"],
            "map50": r["map50"],
            "ar100": r["ar100"],
        }
        print(f"classes per box {k}: mAP {r['map']:.4f} mAP@.5 {r['map50']:.4f}", flush=True)
    common.write_results(_OUT.value, results)


if __name__ == "__main__":
    app.run(main)
