"""Detection sources: a COCO-layout folder, a VOC-layout folder, TFDS (coco/2017, voc/*).

Each yields `{"image": encoded bytes, "boxes": float32 [N, 4] (normalized ymin, xmin, ymax,
xmax), "classes": int64 [N] (0-based)}` in a `sources.Source`. What users' files hold
is checked as they are read:

- an annotation naming an image file that is missing or undecodable: the image is
  skipped, counted in `Source.skipped` (the trainer reports it);
- a box reaching outside its image: clipped; a box of zero area (after clipping): dropped;
  both counted in `Source.fixed_boxes`;
- a category id absent from `categories`, malformed JSON/XML, a box of the wrong arity:
  a `UserError` naming the file and the fix;
- an image without boxes: kept, as a negative;
- crowd annotations (`iscrowd` 1) and VOC's `difficult` objects: left out of the labels.

COCO category ids need not be contiguous: classes are the categories sorted by id.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

import numpy as np
import tensorflow as tf
from absl import logging

from mnv2_tf import fileio
from mnv2_tf.data import sources, synthetic
from mnv2_tf.errors import UserError

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip


def _normalize(boxes_xyxy: np.ndarray, width: float, height: float):
    """Pixel (x0, y0, x1, y1) -> normalized (ymin, xmin, ymax, xmax), clipped; returns the
    boxes, which rows survived (positive area) and how many were clipped or dropped."""
    if len(boxes_xyxy) == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, bool), 0
    b = boxes_xyxy.astype(np.float64)
    normalized = np.stack([b[:, 1] / height, b[:, 0] / width, b[:, 3] / height, b[:, 2] / width], 1)
    clipped = np.clip(normalized, 0.0, 1.0)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    changed = int((np.abs(clipped - normalized).max(1) > 0).sum() + (~keep).sum())
    return clipped.astype(np.float32), keep, changed


def _from_lists(paths, boxes, classes, class_names, skipped_missing, fixed) -> sources.Source:
    """A Source over image files with per-image boxes; undecodable images are skipped."""
    bad = set(sources.find_unreadable(paths)) if paths else set()
    if bad:
        logging.warning("skipping %d unreadable image(s): %s", len(bad), sorted(bad)[:10])
    keep = [i for i, p in enumerate(paths) if p not in bad]
    if not keep:
        raise UserError("no readable image with annotations; check the folder and its split")
    paths = [paths[i] for i in keep]
    boxes = [boxes[i] for i in keep]
    classes = [classes[i] for i in keep]
    counts = np.array([len(b) for b in boxes], np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    all_boxes = tf.constant(np.concatenate([*boxes, np.zeros((0, 4), np.float32)]), tf.float32)
    all_classes = tf.constant(np.concatenate([*classes, np.zeros(0, np.int64)]), tf.int64)
    files = tf.data.Dataset.from_tensor_slices((paths, starts, counts))

    def read(path, start, count):
        return {
            "image": tf.io.read_file(path),
            "boxes": all_boxes[start : start + count],
            "classes": all_classes[start : start + count],
        }

    dataset = files.map(read, num_parallel_calls=tf.data.AUTOTUNE)
    source = sources.Source(
        dataset,
        len(paths),
        list(class_names),
        encoded=True,
        image_shape=(None, None, None),
        skipped=sorted(skipped_missing) + sorted(bad),
        fixed_boxes=fixed,
    )
    return source


# --- COCO ---------------------------------------------------------------------------------


def read_coco_json(path: str) -> dict:
    try:
        with tf.io.gfile.GFile(path) as f:  # local, Drive or gs://
            content = json.load(f)
    except tf.errors.NotFoundError as e:
        raise UserError(
            f"COCO annotation file {path} not found; expected <data_dir>/annotations/"
            "instances_<split>.json (set data.data_dir and data.train_split/eval_split)"
        ) from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); re-export the annotations") from e
    for key in ("images", "annotations", "categories"):
        if not isinstance(content.get(key), list):
            raise UserError(f"{path} has no '{key}' list; is it a COCO instances file?")
    return content


def load_coco(data_cfg, split: str) -> sources.Source:
    root = data_cfg.data_dir
    if not root:
        raise UserError("data.source='coco' needs data.data_dir: the folder holding annotations/")
    path = os.path.join(root, "annotations", f"instances_{split}.json")
    content = read_coco_json(path)
    categories = sorted(content["categories"], key=lambda c: c["id"])
    index = {c["id"]: i for i, c in enumerate(categories)}
    class_names = [str(c.get("name", c["id"])) for c in categories]
    per_image: dict[int, list] = {}
    for a in content["annotations"]:
        if a.get("category_id") not in index:
            raise UserError(
                f"{path}: annotation {a.get('id')} has category_id {a.get('category_id')}, "
                f"which 'categories' does not list (ids: {sorted(index)[:20]}); add it there"
            )
        bbox = a.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise UserError(f"{path}: annotation {a.get('id')} has bbox {bbox!r}, not [x, y, w, h]")
        if a.get("iscrowd", 0):
            continue
        per_image.setdefault(a["image_id"], []).append(a)
    image_dir = os.path.join(root, split)
    # One listing instead of a stat per image (118k on COCO, over the network on gs://).
    present = set(tf.io.gfile.listdir(image_dir)) if tf.io.gfile.isdir(image_dir) else set()
    paths, boxes, classes, missing = [], [], [], []
    fixed = 0
    for image in content["images"]:
        file = os.path.join(image_dir, image["file_name"])
        name = image["file_name"]
        found = name in present if "/" not in name else tf.io.gfile.exists(file)
        if not found:
            missing.append(file)
            continue
        anns = per_image.get(image["id"], [])
        xyxy = np.array(
            [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], np.float64
        ).reshape(-1, 4)
        b, keep, changed = _normalize(xyxy, image["width"], image["height"])
        fixed += changed
        paths.append(file)
        boxes.append(b[keep])
        classes.append(np.array([index[a["category_id"]] for a in anns], np.int64)[keep])
    if missing:
        logging.warning(
            "%s: %d image(s) named in the annotations are missing, skipped: %s",
            path, len(missing), missing[:5],
        )  # fmt: skip
    if fixed:
        logging.warning("%s: %d box(es) clipped to the image or dropped (zero area)", path, fixed)
    return _from_lists(paths, boxes, classes, data_cfg.get("class_names") or class_names,
                       missing, fixed)  # fmt: skip


# --- VOC ----------------------------------------------------------------------------------


def _parse_voc_xml(path: str):
    try:
        root = ET.parse(fileio.readable(path)).getroot()
        size = root.find("size")
        width = float(size.find("width").text)
        height = float(size.find("height").text)
        objects = []
        for obj in root.iter("object"):
            if int(float(obj.findtext("difficult", "0") or 0)):
                continue
            box = obj.find("bndbox")
            x0, y0, x1, y1 = (float(box.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax"))
            # 1-based inclusive pixel coordinates -> 0-based end-exclusive.
            objects.append((obj.findtext("name").strip(), [x0 - 1, y0 - 1, x1, y1]))
    except (ET.ParseError, AttributeError, TypeError, ValueError) as e:
        raise UserError(f"{path}: not a VOC annotation ({e}); fix or remove the file") from e
    return width, height, objects


def voc_split_names(root: str, split: str, kind: str = "Main") -> list[str]:
    listing = os.path.join(root, "ImageSets", kind, f"{split}.txt")
    if not fileio.exists(listing):
        raise UserError(
            f"{listing} not found; data.data_dir must be a VOC year folder (VOCdevkit/VOC2012) "
            f"holding ImageSets/{kind}/<split>.txt"
        )
    lines = fileio.read_bytes(listing).decode("utf-8").splitlines()
    return [line.split()[0] for line in lines if line.strip()]


def voc_class_names(root: str) -> list[str]:
    """The classes of a VOC-layout folder, the same for every split: `labels.txt` (one name
    per line, in label order) if the folder has one; else VOC's 20 when every object's name
    is one of them; else the sorted names found in all of Annotations/."""
    listed = sources.read_labels(os.path.join(root, "labels.txt"))
    if listed is not None:
        return listed
    found = set()
    folder = os.path.join(root, "Annotations")
    for name in sorted(fileio.listdir(folder)) if fileio.isdir(folder) else ():
        if name.endswith(".xml"):
            try:
                found |= {o.findtext("name", "").strip() for o in ET.parse(
                    fileio.readable(os.path.join(folder, name))).getroot().iter("object")}  # fmt: skip
            except ET.ParseError:
                continue  # reported when its split is read
    return list(VOC_CLASSES) if found <= set(VOC_CLASSES) else sorted(found)


def load_voc(data_cfg, split: str) -> sources.Source:
    root = data_cfg.data_dir
    if not root:
        raise UserError("data.source='voc' needs data.data_dir: a VOC year folder")
    names = voc_split_names(root, split)
    parsed = []
    missing = []
    for name in names:
        image = os.path.join(root, "JPEGImages", name + ".jpg")
        xml = os.path.join(root, "Annotations", name + ".xml")
        if not fileio.exists(image) or not fileio.exists(xml):
            missing.append(image if not fileio.exists(image) else xml)
            continue
        parsed.append((image, *_parse_voc_xml(xml)))
    class_names = list(data_cfg.get("class_names") or ()) or voc_class_names(root)
    index = {n: i for i, n in enumerate(class_names)}
    paths, boxes, classes = [], [], []
    fixed = 0
    for image, width, height, objects in parsed:
        unknown = [n for n, _ in objects if n not in index]
        if unknown:
            raise UserError(
                f"{image}: class {unknown[0]!r} is not among data.class_names {class_names}"
            )
        xyxy = np.array([b for _, b in objects], np.float64).reshape(-1, 4)
        b, keep, changed = _normalize(xyxy, width, height)
        fixed += changed
        paths.append(image)
        boxes.append(b[keep])
        classes.append(np.array([index[n] for n, _ in objects], np.int64)[keep])
    if missing:
        logging.warning("%d listed VOC image(s)/annotation(s) missing, skipped", len(missing))
    return _from_lists(paths, boxes, classes, class_names, missing, fixed)


# --- TFDS ---------------------------------------------------------------------------------

# TFDS detection datasets: where the boxes, labels and the left-out flag live.
TFDS_FIELDS = {"coco": ("objects", "is_crowd"), "voc": ("objects", "is_difficult")}


def load_tfds(data_cfg, split: str) -> sources.Source:
    name = data_cfg.name or ""
    family = name.split("/")[0]
    if family not in TFDS_FIELDS:
        raise UserError(
            f"data.name={name!r}: detection from TFDS supports {sorted(TFDS_FIELDS)} "
            "(e.g. coco/2017, voc/2007); use data.source='coco' for your own COCO files"
        )
    objects_key, drop_key = TFDS_FIELDS[family]
    builder, dataset = sources.open_tfds(data_cfg, split)
    info = builder.info

    def convert(ex):
        objects = ex[objects_key]
        keep = tf.logical_not(tf.cast(objects[drop_key], tf.bool))
        boxes = tf.clip_by_value(tf.boolean_mask(objects["bbox"], keep), 0.0, 1.0)
        classes = tf.cast(tf.boolean_mask(objects["label"], keep), tf.int64)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        return {
            "image": ex["image"],
            "boxes": tf.boolean_mask(boxes, area > 0),
            "classes": tf.boolean_mask(classes, area > 0),
        }

    dataset = dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
    source = sources.Source(
        dataset,
        sources.tfds_num_examples(builder, dataset, split),
        list(info.features[objects_key]["label"].names),
        encoded=True,
        image_shape=(None, None, None),
    )
    return source


def load(data_cfg, split: str) -> sources.Source:
    """The detection source `data_cfg.source` names ("coco", "voc" or "tfds")."""
    loaders = {"coco": load_coco, "voc": load_voc, "tfds": load_tfds}
    if data_cfg.source not in loaders:
        raise UserError(
            f"data.source={data_cfg.source!r} gives no boxes; detection reads one of {sorted(loaders)}"
        )
    data_cfg = synthetic.resolve(data_cfg)
    source = loaders[data_cfg.source](data_cfg, split)
    return sources.limit_examples(source, data_cfg, split)


def tfds_mock_examples(builder, split, decoders=None, *, count: int, **kwargs):
    """`count` random JPEGs with 1-3 random boxes, as a TFDS detection builder serves them:
    `tfds.testing.mock_data`'s `as_dataset_fn` for the dry run (TFDS' own random examples
    break on detection sets: in TFDS 4.9 the sub-features of `objects` get different
    lengths)."""
    del split, decoders, kwargs
    objects_key, flag = TFDS_FIELDS[builder.name.split("/")[0]]
    num_classes = builder.info.features[objects_key]["label"].num_classes
    rng = np.random.default_rng(0)
    examples = []
    for _ in range(count):
        n = int(rng.integers(1, 4))
        corner = rng.uniform(0.0, 0.6, (n, 2))
        size = rng.uniform(0.1, 0.4, (n, 2))
        boxes = np.concatenate([corner, corner + size], 1).astype(np.float32)
        pixels = rng.integers(0, 255, (96, 128, 3), np.uint8)
        examples.append({
            "image": tf.io.encode_jpeg(pixels).numpy(),
            objects_key: {"bbox": boxes, "label": rng.integers(0, num_classes, n),
                          flag: np.zeros(n, bool)},
        })  # fmt: skip

    def generate():
        yield from examples

    spec = {
        "image": tf.TensorSpec([], tf.string),
        objects_key: {
            "bbox": tf.TensorSpec([None, 4], tf.float32),
            "label": tf.TensorSpec([None], tf.int64),
            flag: tf.TensorSpec([None], tf.bool),
        },
    }
    return tf.data.Dataset.from_generator(generate, output_signature=spec)
