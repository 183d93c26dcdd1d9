"""Where a dense task's remaining error is: its classification and localization ceilings.

    python benchmarks/ceilings.py --task=detection --workdir=/tmp/mnv2_detection
    python benchmarks/ceilings.py --task=segmentation --workdir=/tmp/mnv2_segmentation
        [--backbone=WORKDIR] [--out=benchmarks/results/ceilings.json]

Every figure is scored in one harness on the trained run's eval split (the 1,000 test
composites), beside the trained model's own:
  Detection (pycocotools mAP@.5 and mAP@[.5:.95]):
  - classification ceiling: the true boxes, each given every class at the pretrained
    classifier's probability for its crop (a square around the box, the item at 3/4 of its
    side, at the classifier's input size: as it was trained): perfect boxes, the
    backbone's classes.
  - localization ceiling: the detector's own boxes and scores, each relabelled with the
    class of the true box it overlaps most (IoU >= 0.1; else kept), then per-class NMS at
    the post-process' IoU again: the detector's boxes, perfect classes.
  Segmentation (mIOU, 11 classes with background):
  - classification ceiling: the true item masks (the composites' SegmentationObject),
    each painted with the class the classifier gives its crop: perfect outlines, the
    backbone's classes.
  - localization ceiling: the segmenter's own foreground; each connected region of it
    takes the true item class most of its pixels cover (its own class where it covers
    none): the segmenter's outlines, perfect classes.
The backbone's top-1 on 2,000 pasted test items (one per scene, as it was trained) is
recorded beside its plain top-1. The backbone is the run's own (`config.json`'s init: the named backbone it started from)
unless --backbone names a classification workdir. The results merge into --out under the
task's name, with the run, the backbone's own top-1 and the commit.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

import common  # benchmarks/common.py: the script's own folder is on sys.path
import mnv2_tf  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

# isort: split
import numpy as np
import tensorflow as tf
import tf_keras
from PIL import Image
from scipy import ndimage

from mnv2_tf import backbones, fileio
from mnv2_tf import config as config_lib
from mnv2_tf.data import synthetic
from mnv2_tf.detection import coco_eval
from mnv2_tf.export import run as run_lib
from mnv2_tf.segmentation import metrics as metrics_lib

_TASK = flags.DEFINE_enum("task", None, ["detection", "segmentation"], "Which dense task.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The trained run (a pipeline or train.py workdir).")
_BACKBONE = flags.DEFINE_string("backbone", None, "A classification workdir (default: the run's).")
_WEIGHTS = flags.DEFINE_enum("weights", "final", run_lib.WEIGHTS_CHOICES, "The run's weights.")
_OUT = flags.DEFINE_string("out", common.results_path("ceilings"), "JSON output (merged).")
flags.mark_flags_as_required(["task", "workdir"])

ITEM_FRACTION = 0.75  # of the crop's side the item's longer side takes
RELABEL_IOU = 0.1


def _classifier(run) -> tuple[tf_keras.Model, str, dict]:
    workdir = _BACKBONE.value
    if not workdir:
        _, facts = config_lib.load_saved(run.workdir)
        backbone = (facts.get("init") or {}).get("backbone")
        if not backbone:
            raise SystemExit(f"{run.workdir} did not start from a named backbone: pass --backbone")
        workdir = backbone["workdir"]
    model = tf_keras.models.load_model(os.path.join(workdir, "best", "model.h5"), compile=False)
    return model, workdir, backbones.summary(workdir)


def pasted_top1(classifier, items: int = 2000) -> float:
    """The classifier's top-1 on Fashion-MNIST test items pasted as it was trained (one item
    per scene, no clutter; seeded): between its plain top-1 and the composites' crops."""
    from mnv2_tf.data import preprocess, sources

    data_cfg = backbones.fmnist_config().data
    source = sources.load(data_cfg, "test")
    size = classifier.input_shape[1]
    tf.random.set_seed(0)
    images, labels = [], []
    for example in source.dataset.take(items):
        scene = preprocess.paste_on_background(example["image"], source.encoded, size)
        images.append(scene.numpy() / 127.5 - 1)
        labels.append(int(example["label"]))
    predicted = classifier.predict(np.stack(images), batch_size=250, verbose=0).argmax(1)
    return float((predicted == np.array(labels)).mean())


def _square_boxes(boxes: np.ndarray) -> np.ndarray:
    """[N, 4] normalized (y0, x0, y1, x1) -> squares around them, the longer side at
    ITEM_FRACTION of the square's."""
    cy, cx = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    half = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / ITEM_FRACTION / 2
    return np.stack([cy - half, cx - half, cy + half, cx + half], axis=1).astype(np.float32)


def _classify_crops(classifier, images, boxes, box_image) -> np.ndarray:
    """Class probabilities [N, C] of the crops `boxes` [N, 4] of `images` [B, S, S, 3]
    (in the model's [-1, 1]); outside the image: 0, the normalized mid-grey."""
    if not len(boxes):
        return np.zeros((0, classifier.output_shape[-1]), np.float32)
    size = classifier.input_shape[1]
    crops = tf.image.crop_and_resize(
        images, _square_boxes(boxes), box_image.astype(np.int32), [size, size],
        extrapolation_value=0.0,
    )  # fmt: skip
    return tf.nn.softmax(classifier(crops, training=False)).numpy()


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, M] IoU of (y0, x0, y1, x1) boxes."""
    y0 = np.maximum(a[:, None, 0], b[None, :, 0])
    x0 = np.maximum(a[:, None, 1], b[None, :, 1])
    y1 = np.minimum(a[:, None, 2], b[None, :, 2])
    x1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(y1 - y0, 0, None) * np.clip(x1 - x0, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def _nms_per_class(boxes, classes, scores, iou: float):
    keep = []
    for c in np.unique(classes):
        index = np.nonzero(classes == c)[0]
        index = index[np.argsort(-scores[index], kind="stable")]
        while len(index):
            keep.append(index[0])
            if len(index) == 1:
                break
            overlap = _iou(boxes[index[:1]], boxes[index[1:]])[0]
            index = index[1:][overlap < iou]
    keep = np.array(sorted(keep, key=lambda i: -scores[i]), dtype=np.int64)
    return boxes[keep], classes[keep], scores[keep]


def detection(run, classifier) -> dict:
    task = run.task
    ds, _ = task.dataset(run.preprocessing, run.config.data.eval_split, training=False,
                         batch_size=50)  # fmt: skip
    own, cls_ceiling, loc_ceiling = (coco_eval.CocoMap(run.class_names) for _ in range(3))
    classes_range = np.arange(run.num_classes)
    nms_iou = run.config.detection.iou_threshold
    for batch in ds.as_numpy_iterator():
        codes, scores = run.model(batch["image"], training=False)
        found = task.postprocess(codes, scores)
        valid = np.nonzero(batch["valid"] > 0)[0]
        true_boxes = [batch["boxes"][i][: int(batch["num_boxes"][i])] for i in valid]
        owners = np.concatenate([np.full(len(b), j) for j, b in enumerate(true_boxes)] or [[]])
        probabilities = _classify_crops(
            classifier, batch["image"][valid], np.concatenate(true_boxes), owners
        )
        start = 0
        for j, i in enumerate(valid):
            size, boxes = batch["size"][i], true_boxes[j]
            classes = batch["classes"][i][: len(boxes)]
            d = int(found["num_detections"][i])
            det_boxes = found["detection_boxes"][i][:d]
            det_classes = found["detection_classes"][i][:d].astype(np.int64)
            det_scores = found["detection_scores"][i][:d]
            own.add_image(size, boxes, classes, det_boxes, det_classes, det_scores)
            p = probabilities[start : start + len(boxes)]
            start += len(boxes)
            cls_ceiling.add_image(
                size, boxes, classes, np.repeat(boxes, run.num_classes, axis=0),
                np.tile(classes_range, len(boxes)), p.reshape(-1),
            )  # fmt: skip
            relabelled = det_classes.copy()
            if len(boxes) and d:
                overlap = _iou(det_boxes, boxes)
                best = overlap.argmax(1)
                hit = overlap.max(1) >= RELABEL_IOU
                relabelled[hit] = classes[best[hit]]
            loc_ceiling.add_image(
                size, boxes, classes, *_nms_per_class(det_boxes, relabelled, det_scores, nms_iou)
            )
    figures = {}
    for name, coco in (("detector", own), ("classification_ceiling", cls_ceiling),
                       ("localization_ceiling", loc_ceiling)):  # fmt: skip
        stats = coco.result()
        figures[name] = {
            "map50": stats["map50"], "map": stats["map"],
            "ap_per_class": {k[3:]: v for k, v in stats.items() if k.startswith("ap/")},
        }  # fmt: skip
        print(f"{name}: mAP@.5 {stats['map50']:.4f}, mAP {stats['map']:.4f}", flush=True)
    figures["images"] = own.result()["images"]
    return figures


def _voc_test(data_cfg, split: str, size: int):
    """(image [-1, 1] at size, class ids, instance ids) of each composite of `split`, as the
    segmenter's evaluation sees them (a square canvas resized; masks nearest)."""
    root = data_cfg.data_dir
    names = fileio.read_bytes(os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt"))
    for name in names.decode().split():
        image = np.asarray(
            Image.open(os.path.join(root, "JPEGImages", f"{name}.jpg")).convert("RGB")
        )
        # As the evaluation's `fit` resizes (the composites are square: no padding).
        image = tf.image.resize(image.astype(np.float32), [size, size]).numpy() / 127.5 - 1

        def ids(folder, name=name):
            mask = np.asarray(Image.open(os.path.join(root, folder, f"{name}.png")))[..., None]
            return tf.image.resize(mask, [size, size], method="nearest").numpy()[..., 0]

        yield image, ids("SegmentationClass").astype(np.int64), ids("SegmentationObject")


def segmentation(run, classifier) -> dict:
    size, ignore = run.config.model.input_size, 255
    data_cfg = synthetic.resolve(run.config.data)
    own, cls_ceiling, loc_ceiling = (metrics_lib.ConfusionMatrix(run.num_classes) for _ in range(3))
    examples = list(_voc_test(data_cfg, run.config.data.eval_split, size))
    for start in range(0, len(examples), 50):
        chunk = examples[start : start + 50]
        images = np.stack([e[0] for e in chunk])
        logits = tf.image.resize(run.model(images, training=False), [size, size])
        predicted = tf.argmax(logits, -1).numpy()
        for k, (_, truth, objects) in enumerate(chunk):
            valid = truth != ignore
            own.update(truth[valid], predicted[k][valid])
            # Classification ceiling: each true item, the classifier's class for its crop.
            ids = [i for i in np.unique(objects) if i not in (0, ignore)]
            boxes = []
            for i in ids:
                ys, xs = np.nonzero(objects == i)
                boxes.append([ys.min() / size, xs.min() / size,
                              (ys.max() + 1) / size, (xs.max() + 1) / size])  # fmt: skip
            painted = np.zeros_like(truth)
            if ids:
                p = _classify_crops(classifier, images[k : k + 1], np.array(boxes, np.float32),
                                    np.zeros(len(ids)))  # fmt: skip
                for i, c in zip(ids, p.argmax(1), strict=True):
                    painted[objects == i] = c + 1
            cls_ceiling.update(truth[valid], painted[valid])
            # Localization ceiling: the predicted foreground's regions, true classes.
            relabelled = predicted[k].copy()
            regions, count = ndimage.label(predicted[k] > 0)
            for r in range(1, count + 1):
                region = regions == r
                under = truth[region & valid & (truth > 0)]
                if under.size:
                    relabelled[region] = np.bincount(under).argmax()
            loc_ceiling.update(truth[valid], relabelled[valid])
    figures = {}
    for name, matrix in (("segmenter", own), ("classification_ceiling", cls_ceiling),
                         ("localization_ceiling", loc_ceiling)):  # fmt: skip
        result = matrix.result(run.class_names)
        figures[name] = {
            "miou": result["miou"],
            "iou_per_class": {k[4:]: v for k, v in result.items() if k.startswith("iou/")},
        }
        print(f"{name}: mIOU {result['miou']:.4f}", flush=True)
    figures["images"] = len(examples)
    return figures


def main(argv):
    del argv
    run = run_lib.load(_WORKDIR.value, _WEIGHTS.value)
    classifier, backbone_dir, backbone = _classifier(run)
    figures = (detection if _TASK.value == "detection" else segmentation)(run, classifier)
    metrics = fileio.read_json(os.path.join(_WORKDIR.value, "metrics.json"), [])
    results = fileio.read_json(_OUT.value, {}) or {}
    results[_TASK.value] = {
        "commit": common.started_at(),
        "command": "python benchmarks/ceilings.py " + " ".join(sys.argv[1:]),
        "machine": common.machine(),
        "run": _WORKDIR.value,
        "run_init": config_lib.load_saved(_WORKDIR.value)[1].get("init", {}).get("from"),
        "run_epochs": len(metrics),
        "backbone": {
            "workdir": backbone_dir,
            **backbone,
            "top1_pasted_test_items": pasted_top1(classifier),
        },
        "item_fraction_of_crop": ITEM_FRACTION,
        **figures,
    }
    common.write_results(_OUT.value, results)
    print(json.dumps({k: v for k, v in figures.items() if k != "images"}, indent=1)[:2000])


if __name__ == "__main__":
    app.run(main)
