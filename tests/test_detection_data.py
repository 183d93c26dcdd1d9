"""Detection data: the composites, the COCO / VOC / TFDS readers and their bad input, and
augmentation that moves boxes with the pixels."""

import io
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from mnv2_tf.config import base_config
from mnv2_tf.data import detection, detection_preprocess, synthetic
from mnv2_tf.errors import UserError

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
needs_fmnist = pytest.mark.skipif(
    not os.path.isdir(FASHION_MNIST), reason="apt-get install dataset-fashion-mnist"
)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _data_cfg(**overrides) -> ml_collections.ConfigDict:
    cfg = base_config().data
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def _jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def composites(tmp_path_factory):
    out = tmp_path_factory.mktemp("composites")
    synthetic.generate(
        str(out), train_images=12, test_images=6, size=96, seed=3, log=lambda *_: None
    )
    return out


# --- the composites ------------------------------------------------------------------------


@needs_fmnist
def test_composites_are_deterministic_and_boxes_bound_the_visible_pixels(composites, tmp_path):
    synthetic.generate(str(tmp_path), train_images=12, test_images=6, size=96, seed=3,
                       log=lambda *_: None)  # fmt: skip
    for split in ("train", "test"):
        name = f"coco/annotations/instances_{split}.json"
        assert (composites / name).read_bytes() == (tmp_path / name).read_bytes()
    first = "coco/train/train_000000.jpg"
    assert (composites / first).read_bytes() == (tmp_path / first).read_bytes()

    coco = json.loads((composites / "coco/annotations/instances_test.json").read_text())
    assert [c["id"] for c in coco["categories"]] == list(range(1, 11))
    by_image = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    assert len(by_image) >= 4 and len(coco["annotations"]) >= 6
    for image in coco["images"]:
        stem = image["file_name"][:-4]
        instances = np.asarray(Image.open(composites / "voc/SegmentationObject" / f"{stem}.png"))
        classes = np.asarray(Image.open(composites / "voc/SegmentationClass" / f"{stem}.png"))
        for k, a in enumerate(by_image.get(image["id"], []), start=1):
            x, y, w, h = a["bbox"]
            ys, xs = np.nonzero(instances == k)
            # The box is the exact extent of the item's visible pixels. The masks give those
            # pixels but the ones in the 255 band along every outline: the labelled ones lie
            # in the box, and with the band's they reach its four sides.
            assert x <= xs.min() and xs.max() < x + w and y <= ys.min() and ys.max() < y + h
            window = np.zeros_like(instances, bool)
            window[y : y + h, x : x + w] = True
            bys, bxs = np.nonzero(window & ((instances == k) | (instances == 255)))
            assert (bxs.min(), bys.min(), bxs.max() + 1, bys.max() + 1) == (x, y, x + w, y + h)
            assert len(xs) < a["area"] <= len(xs) + np.count_nonzero(instances == 255)
            assert (classes[instances == k] == a["category_id"]).all()


@needs_fmnist
def test_coco_and_voc_layouts_give_the_same_boxes(composites):
    coco = detection.load(_data_cfg(source="coco", data_dir=str(composites / "coco")), "test")
    voc = detection.load(_data_cfg(source="voc", data_dir=str(composites / "voc")), "test")
    assert coco.class_names == voc.class_names == list(synthetic.sources.FASHION_MNIST_CLASSES)
    assert coco.num_examples == voc.num_examples == 6
    for a, b in zip(coco.dataset, voc.dataset, strict=True):
        np.testing.assert_allclose(a["boxes"].numpy(), b["boxes"].numpy(), atol=1e-6)
        assert list(a["classes"].numpy()) == list(b["classes"].numpy())
        assert a["image"].numpy() == b["image"].numpy()


# --- bad input -----------------------------------------------------------------------------


def _coco_folder(root, annotations=None, categories=None, raw: str | None = None):
    (root / "annotations").mkdir(parents=True)
    (root / "val").mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "c.jpg"):
        (root / "val" / name).write_bytes(_jpeg(rng.integers(0, 255, (40, 60, 3), np.uint8)))
    (root / "val" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    content = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 60, "height": 40},
            {"id": 2, "file_name": "missing.jpg", "width": 60, "height": 40},
            {"id": 3, "file_name": "c.jpg", "width": 60, "height": 40},  # no boxes
            {"id": 4, "file_name": "broken.jpg", "width": 60, "height": 40},
        ],
        "annotations": annotations
        if annotations is not None
        else [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [6, 4, 30, 20]},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [50, 30, 20, 20]},  # outside
            {"id": 3, "image_id": 1, "category_id": 3, "bbox": [10, 10, 0, 5]},  # zero area
            {"id": 4, "image_id": 1, "category_id": 3, "bbox": [1, 1, 4, 4], "iscrowd": 1},
            {"id": 5, "image_id": 2, "category_id": 7, "bbox": [1, 1, 4, 4]},
        ],
        "categories": categories or [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}],
    }
    path = root / "annotations" / "instances_val.json"
    path.write_text(raw if raw is not None else json.dumps(content))
    return root


def test_coco_reader_skips_clips_drops_and_keeps_negatives(tmp_path):
    root = _coco_folder(tmp_path)
    source = detection.load(_data_cfg(source="coco", data_dir=str(root)), "val")
    # Non-contiguous ids 3 and 7 become classes 0 and 1, sorted by id.
    assert source.class_names == ["three", "seven"]
    assert source.num_examples == 2  # a.jpg and the negative c.jpg
    assert sorted(os.path.basename(p) for p in source.skipped) == ["broken.jpg", "missing.jpg"]
    assert source.fixed_boxes == 2  # one clipped, one dropped
    examples = list(source.dataset.as_numpy_iterator())
    boxes, classes = examples[0]["boxes"], examples[0]["classes"]
    np.testing.assert_allclose(
        boxes, [[4 / 40, 6 / 60, 24 / 40, 36 / 60], [30 / 40, 50 / 60, 1.0, 1.0]], atol=1e-6
    )
    assert list(classes) == [1, 0]  # the crowd box left out
    assert examples[1]["boxes"].shape == (0, 4)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"raw": "{not json"}, "is not valid JSON"),
        (
            {"annotations": [{"id": 9, "image_id": 1, "category_id": 5, "bbox": [1, 1, 2, 2]}]},
            "category_id 5, which 'categories' does not list",
        ),
        ({"raw": json.dumps({"images": []})}, "has no 'annotations' list"),
    ],
)
def test_coco_reader_errors_name_the_problem(tmp_path, kwargs, message):
    root = _coco_folder(tmp_path, **kwargs)
    with pytest.raises(UserError, match=message):
        detection.load(_data_cfg(source="coco", data_dir=str(root)), "val")


def test_train_py_reports_bad_annotations_in_one_line(tmp_path):
    root = _coco_folder(tmp_path / "data", raw="[1, 2")
    result = subprocess.run(
        [sys.executable, "train.py", "--config=configs/detection_fmnist.py",
         f"--workdir={tmp_path / 'run'}", f"--config.data.data_dir={root}",
         "--config.data.synthetic=False", "--config.data.train_split=val"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "instances_val.json is not valid JSON" in last


def test_voc_reader_errors_and_missing_files(tmp_path):
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (tmp_path / sub).mkdir(parents=True)
    (tmp_path / "ImageSets/Main/train.txt").write_text("one\ntwo\nthree\n")
    (tmp_path / "JPEGImages/one.jpg").write_bytes(_jpeg(np.zeros((20, 30, 3), np.uint8)))
    (tmp_path / "JPEGImages/three.jpg").write_bytes(_jpeg(np.zeros((20, 30, 3), np.uint8)))
    xml = (
        "<annotation><size><width>30</width><height>20</height></size>"
        "<object><name>dog</name><difficult>0</difficult><bndbox><xmin>1</xmin><ymin>1</ymin>"
        "<xmax>15</xmax><ymax>40</ymax></bndbox></object>"
        "<object><name>cat</name><difficult>1</difficult><bndbox><xmin>1</xmin><ymin>1</ymin>"
        "<xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>"
    )
    (tmp_path / "Annotations/one.xml").write_text(xml)
    (tmp_path / "Annotations/three.xml").write_text("<annotation><size>")
    cfg = _data_cfg(source="voc", data_dir=str(tmp_path))
    with pytest.raises(UserError, match=r"three\.xml: not a VOC annotation"):
        detection.load(cfg, "train")
    (tmp_path / "Annotations/three.xml").unlink()
    source = detection.load(cfg, "train")
    assert source.num_examples == 1 and len(source.skipped) == 2  # two.jpg, three.xml
    assert source.class_names == list(detection.VOC_CLASSES)  # cat and dog are VOC's
    (example,) = list(source.dataset.as_numpy_iterator())
    np.testing.assert_allclose(example["boxes"], [[0.0, 0.0, 1.0, 0.5]], atol=1e-6)  # clipped
    assert list(example["classes"]) == [detection.VOC_CLASSES.index("dog")]  # not the difficult cat
    (tmp_path / "labels.txt").write_text("dog\ncat\n")  # a folder's own label list
    assert detection.load(cfg, "train").class_names == ["dog", "cat"]
    with pytest.raises(UserError, match=r"ImageSets/Main/val\.txt not found"):
        detection.load(cfg, "val")


def test_tfds_detection_source_offline_with_mock_data():
    """TFDS' voc/2007 as its builder serves it (encoded image, `objects` with normalized
    boxes, labels and difficult flags), mocked: boxes kept, clipped, difficult ones left out."""
    import tensorflow_datasets as tfds

    def as_dataset(self, split, decoders=None, **kwargs):
        del self, split, decoders, kwargs
        example = {
            "image": tf.constant(_jpeg(np.zeros((8, 8, 3), np.uint8))),
            "objects": {
                "bbox": tf.constant([[0.1, 0.2, 0.5, 1.2], [0.0, 0.0, 0.3, 0.3]]),
                "label": tf.constant([14, 7], tf.int64),
                "is_difficult": tf.constant([False, True]),
            },
        }
        return tf.data.Dataset.from_tensors(example).repeat(3)

    with tfds.testing.mock_data(num_examples=3, as_dataset_fn=as_dataset):
        source = detection.load(_data_cfg(source="tfds", name="voc/2007"), "test")
        assert source.num_examples == 3 and len(source.class_names) == 20
        example = next(iter(source.dataset))
        np.testing.assert_allclose(example["boxes"].numpy(), [[0.1, 0.2, 0.5, 1.0]], atol=1e-6)
        assert list(example["classes"].numpy()) == [14]
    with pytest.raises(UserError, match="detection from TFDS supports"):
        detection.load(_data_cfg(source="tfds", name="mnist"), "test")


# --- augmentation --------------------------------------------------------------------------

COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)


def _scene():
    """A black 120 x 200 image with three solid rectangles and their exact boxes."""
    image = np.zeros((120, 200, 3), np.uint8)
    rects = [(10, 20, 50, 90), (60, 100, 110, 190), (30, 120, 70, 160)]  # y0, x0, y1, x1
    for (y0, x0, y1, x1), colour in zip(rects, COLOURS, strict=True):
        image[y0:y1, x0:x1] = colour
    boxes = np.array([[y0 / 120, x0 / 200, y1 / 120, x1 / 200] for y0, x0, y1, x1 in rects])
    return image, boxes.astype(np.float32)


def test_boxes_still_bound_their_pixels_after_crop_flip_resize():
    image, boxes = _scene()
    size = 64
    checked = 0
    for seed in range(40):
        tf.random.set_seed(seed)
        out, out_boxes, out_classes = detection_preprocess.augment(
            tf.constant(image), tf.constant(boxes), tf.constant([0, 1, 2], tf.int64), size,
            jitter=False,
        )  # fmt: skip
        out = out.numpy()
        for box, c in zip(out_boxes.numpy(), out_classes.numpy(), strict=True):
            # Pixels that are clearly this rectangle's colour (bilinear edges blend).
            own = np.abs(out - COLOURS[c].astype(np.float32)).max(-1) < 60
            ys, xs = np.nonzero(own)
            assert len(ys), f"seed {seed}: box of class {c} kept without its pixels"
            y0, x0, y1, x1 = box * size
            # Every pixel of the object lies in its box (1 px of resampling slack) ...
            assert ys.min() >= y0 - 1 and ys.max() + 1 <= y1 + 1
            assert xs.min() >= x0 - 1 and xs.max() + 1 <= x1 + 1
            # ... and the box is tight: its edges touch the object's pixels.
            assert ys.min() <= y0 + 1.5 and ys.max() + 1 >= y1 - 1.5
            assert xs.min() <= x0 + 1.5 and xs.max() + 1 >= x1 - 1.5
            checked += 1
    assert checked > 60  # most crops keep most boxes


def test_crop_drops_boxes_whose_centre_leaves_the_window():
    boxes = tf.constant([[0.0, 0.0, 0.2, 0.2], [0.4, 0.4, 0.9, 0.9]])
    kept, classes = detection_preprocess.crop_boxes(
        boxes, tf.constant([3, 4], tf.int64), tf.constant([0.3, 0.3, 1.0, 1.0])
    )
    assert list(classes.numpy()) == [4]
    np.testing.assert_allclose(kept.numpy(), [[0.1 / 0.7, 0.1 / 0.7, 0.6 / 0.7, 0.6 / 0.7]], 1e-6)
