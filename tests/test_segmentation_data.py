"""Segmentation data: the mIOU definition, the VOC / folder / TFDS mask readers and their bad
input, augmentation that keeps the mask on its pixels, the poly schedule."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from mnv2_tf.data import segmentation, segmentation_preprocess, synthetic
from mnv2_tf.errors import UserError
from mnv2_tf.models.common import Preprocessing
from mnv2_tf.segmentation import loss as loss_lib
from mnv2_tf.segmentation.metrics import ConfusionMatrix
from mnv2_tf.train import optim
from tests.test_detection_data import _data_cfg, _jpeg, needs_fmnist

# --- mIOU ----------------------------------------------------------------------------------


def test_miou_by_hand_with_ignore_pixels_and_an_absent_class():
    """4 classes; class 3 is in neither truth nor prediction. Over the labelled pixels:
    truth    0 0 1 1 2 2 | 255 255
    predict  0 1 1 1 2 0 |   2   3   (ignored pixels count nowhere, whatever is predicted)
    class 0: TP 1, FP 1 (the last 0), FN 1 (the 1 at index 1) -> 1/3
    class 1: TP 2, FP 1, FN 0 -> 2/3; class 2: TP 1, FP 0, FN 1 -> 1/2
    mIOU = (1/3 + 2/3 + 1/2) / 3 = 0.5 (not / 4: class 3 has no IoU)."""
    matrix = ConfusionMatrix(4)
    truth = np.array([[0, 0, 1, 1], [2, 2, 255, 255]])
    prediction = np.array([[0, 1, 1, 1], [2, 0, 2, 3]])
    matrix.update(truth[:1], prediction[:1])  # two updates: one matrix over the set
    matrix.update(truth[1:], prediction[1:])
    np.testing.assert_allclose(matrix.iou()[:3], [1 / 3, 2 / 3, 1 / 2])
    assert np.isnan(matrix.iou()[3])
    assert matrix.miou() == pytest.approx(0.5)
    assert matrix.pixel_accuracy() == pytest.approx(4 / 6)
    result = matrix.result(["bg", "a", "b", "c"])
    assert (
        result["pixels"] == 6 and "iou/c" not in result and result["iou/a"] == pytest.approx(2 / 3)
    )


def test_miou_is_one_matrix_over_the_set_not_a_mean_over_images():
    """Image 1: all 100 pixels class 1, right. Image 2: 1 pixel class 1 predicted 0.
    Per-image IoUs of class 1 would be 1 and 0; the set's matrix gives 100/101."""
    matrix = ConfusionMatrix(2)
    matrix.update(np.ones(100, int), np.ones(100, int))
    matrix.update(np.ones(1, int), np.zeros(1, int))
    assert matrix.iou()[1] == pytest.approx(100 / 101)
    assert matrix.iou()[0] == 0.0  # predicted once, never true


def test_loss_skips_ignored_pixels():
    logits = tf.constant([[[[5.0, 0.0], [0.0, 5.0]], [[-9.0, 9.0], [0.0, 0.0]]]])  # [1,2,2,2]
    mask = tf.constant([[[0, 1], [255, 255]]], tf.uint8)
    expected = float(tf.nn.softmax_cross_entropy_with_logits([1.0, 0.0], [5.0, 0.0]))
    assert float(loss_lib.per_example(logits, mask)[0]) == pytest.approx(expected, rel=1e-5)
    everything_ignored = tf.fill([1, 2, 2], tf.constant(255, tf.uint8))
    assert float(loss_lib.per_example(logits, everything_ignored)[0]) == 0.0
    assert float(loss_lib.pixel_accuracy(logits, mask)[0]) == 1.0


def test_poly_schedule_decays_to_zero_with_power_0_9():
    schedule = optim.WarmupSchedule(0.01, total_steps=100, kind="poly")
    assert float(schedule(0)) == pytest.approx(0.01)
    assert float(schedule(50)) == pytest.approx(0.01 * 0.5**0.9, rel=1e-5)
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-9)


# --- readers -------------------------------------------------------------------------------


def _png(array: np.ndarray, mode: str | None = None, palette: bool = False) -> bytes:
    image = Image.fromarray(array, mode=mode)
    if palette:
        image = Image.fromarray(array, mode="P")
        image.putpalette(synthetic.voc_palette())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _voc(root, masks: dict, size=(20, 30), listed=None):
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, mask in masks.items():
        (root / "JPEGImages" / f"{name}.jpg").write_bytes(
            _jpeg(rng.integers(0, 255, (*size, 3), np.uint8))
        )
        if mask is not None:
            (root / "SegmentationClass" / f"{name}.png").write_bytes(mask)
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(listed or masks) + "\n")
    return root


def _ids(size=(20, 30), value=1):
    mask = np.zeros(size, np.uint8)
    mask[5:15, 5:20] = value
    mask[5, 5:20] = 255
    return mask


def test_voc_reader_reads_palette_and_grayscale_ids_and_skips_missing_masks(tmp_path):
    masks = {
        "a": _png(_ids(value=15), palette=True),  # VOC's person, as a palette PNG
        "b": _png(_ids(value=12), mode="L"),  # a grayscale PNG of ids
        "c": None,  # no mask: skipped
    }
    root = _voc(tmp_path, masks)
    source = segmentation.load(_data_cfg(source="voc", data_dir=str(root)), "train")
    assert source.num_examples == 2 and len(source.skipped) == 1 and "c.png" in source.skipped[0]
    assert source.class_names[0] == "background" and source.class_names[15] == "person"
    assert len(source.class_names) == 21
    examples = list(source.dataset.as_numpy_iterator())
    ids = tf.io.decode_png(examples[0]["mask"]).numpy()[..., 0]
    np.testing.assert_array_equal(ids, _ids(value=15))
    ids = tf.io.decode_png(examples[1]["mask"]).numpy()[..., 0]
    np.testing.assert_array_equal(ids, _ids(value=12))


def test_bad_masks_are_one_line_errors_naming_the_file_or_value(tmp_path):
    cfg = _data_cfg(source="voc", data_dir=str(tmp_path))
    _voc(tmp_path, {"wrong_size": _png(_ids(size=(20, 31)), mode="L")})
    with pytest.raises(
        UserError, match=r"wrong_size\.png is 31x20 but its image .*wrong_size\.jpg is 30x20"
    ):
        segmentation.load(cfg, "train")
    _voc(tmp_path, {"too_big": _png(_ids(value=21), mode="L")}, listed=["too_big"])
    with pytest.raises(
        UserError, match=r"too_big\.jpg holds class id 21, but there are 21 classes"
    ):
        segmentation.load(cfg, "train")
    colours = np.zeros((20, 30, 3), np.uint8)
    colours[..., 0] = 128  # VOC's aeroplane colour, as RGB: not ids
    _voc(tmp_path, {"rgb": _png(colours, mode="RGB")}, listed=["rgb"])
    with pytest.raises(UserError, match=r"rgb\.png: a RGB mask with colours"):
        segmentation.load(cfg, "train")
    grey = np.repeat(_ids(value=3)[..., None], 3, axis=2)  # RGB with equal channels: ids
    _voc(tmp_path, {"grey": _png(grey, mode="RGB")}, listed=["grey"])
    assert segmentation.load(cfg, "train").num_examples == 1
    with pytest.raises(UserError, match="gives no masks"):
        segmentation.load(_data_cfg(source="coco", data_dir=str(tmp_path)), "train")


def test_folder_reader_pairs_images_and_masks_by_name(tmp_path):
    for split, names in (("train", ("x", "y")), ("val", ("z",))):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "masks").mkdir(parents=True)
        for name in names:
            (tmp_path / split / "images" / f"{name}.png").write_bytes(
                _png(np.zeros((20, 30, 3), np.uint8), mode="RGB")
            )
            (tmp_path / split / "masks" / f"{name}.png").write_bytes(_png(_ids(value=2), mode="L"))
    (tmp_path / "train" / "masks" / "y.png").unlink()  # an image without its mask: skipped
    cfg = _data_cfg(source="folder", data_dir=str(tmp_path), eval_split="val")
    train = segmentation.load(cfg, "train")
    assert train.num_examples == 1 and train.class_names == ["background", "class_1", "class_2"]
    assert segmentation.load(cfg, "val").class_names == train.class_names
    (tmp_path / "labels.txt").write_text("sky\nroad\ncar\n")  # background first: kept as is
    assert segmentation.load(cfg, "val").class_names == ["sky", "road", "car"]
    with pytest.raises(UserError, match="must hold images/ and masks/"):
        segmentation.load(cfg, "test")


def test_tfds_pet_trimap_maps_to_background_pet_and_ignore():
    import tensorflow_datasets as tfds

    def as_dataset(self, split, decoders=None, **kwargs):
        del self, split, decoders, kwargs
        trimap = np.array([[1, 2], [3, 2]], np.uint8)[..., None]
        example = {"image": tf.constant(_jpeg(np.zeros((2, 2, 3), np.uint8))),
                   "segmentation_mask": tf.constant(trimap)}  # fmt: skip
        return tf.data.Dataset.from_tensors(example).repeat(2)

    with tfds.testing.mock_data(num_examples=2, as_dataset_fn=as_dataset):
        source = segmentation.load(_data_cfg(source="tfds", name="oxford_iiit_pet"), "test")
        assert source.class_names == ["background", "pet"]
        ids = tf.io.decode_png(next(iter(source.dataset))["mask"]).numpy()[..., 0]
        np.testing.assert_array_equal(ids, [[1, 0], [255, 0]])
    with pytest.raises(UserError, match="segmentation from TFDS supports"):
        segmentation.load(_data_cfg(source="tfds", name="mnist"), "test")


@needs_fmnist
def test_synthetic_masks_have_the_ignore_band_and_match_the_detection_boxes(tmp_path):
    synthetic.generate(str(tmp_path), train_images=4, test_images=4, size=64, seed=1,
                       log=lambda *_: None)  # fmt: skip
    cfg = _data_cfg(source="voc", data_dir=str(tmp_path / "voc"))
    source = segmentation.load(cfg, "test")
    assert source.class_names == ["background", *synthetic.sources.FASHION_MNIST_CLASSES]
    for example in source.dataset.as_numpy_iterator():
        ids = tf.io.decode_png(example["mask"]).numpy()[..., 0]
        labelled = ids[ids != 255]
        assert labelled.max() <= 10 and (ids == 255).any()
        # Every boundary between two labels runs through the band: no labelled pixel has a
        # labelled 4-neighbour of another class.
        for a, b in ((ids[1:], ids[:-1]), (ids[:, 1:], ids[:, :-1])):
            both = (a != 255) & (b != 255)
            assert (a[both] == b[both]).all()


# --- augmentation --------------------------------------------------------------------------


def _striped(size=(48, 64)):
    """An image whose colour says its class: class k pixels have red = 60 k."""
    mask = np.zeros(size, np.uint8)
    mask[:, 16:32] = 1
    mask[10:30, 40:60] = 2
    image = np.zeros((*size, 3), np.uint8)
    image[..., 0] = mask * 60
    image[..., 1] = np.arange(size[1])[None, :] * 3  # left-right: a flip shows
    return image, mask


def test_augmentation_keeps_the_mask_on_its_pixels():
    image, mask = _striped()
    preprocessing = Preprocessing(input_size=40, crop_fraction=1.0)
    fn = segmentation_preprocess.make_fn(preprocessing, training=True, encoded=True)
    example = {
        "image": tf.constant(_png(image, mode="RGB")),
        "mask": tf.constant(_png(mask, mode="L")),
    }
    tf.random.set_seed(0)
    flipped = False
    for _ in range(30):
        out = fn(example)
        pixels = out["image"].numpy() * preprocessing.std + preprocessing.mean
        ids = out["mask"].numpy()
        assert out["image"].shape == (40, 40, 3) and ids.dtype == np.uint8
        assert set(np.unique(ids)) <= {0, 1, 2, 255}  # nearest: no blended ids
        padded = ids == 255
        assert np.allclose(pixels[padded], preprocessing.mean, atol=1)  # pad: the mean pixel
        # Away from class edges (bilinear blends the pixels there), red says the class.
        inner = ~padded
        for axis in (0, 1):
            for shift in (1, -1):
                inner &= np.roll(ids, shift, axis) == ids
        red = np.round(pixels[..., 0] / 60)
        assert (red[inner] == ids[inner]).mean() > 0.99
        green = pixels[..., 1]
        rows = inner.any(1)
        if rows.any():
            row = np.nonzero(rows)[0][0]
            cols = np.nonzero(inner[row])[0]
            if len(cols) > 4:
                flipped |= green[row, cols[-1]] < green[row, cols[0]]
    assert flipped  # some crops were flipped, and their masks with them


def test_evaluation_view_keeps_the_aspect_and_pads_with_ignore():
    image, mask = _striped()
    preprocessing = Preprocessing(input_size=32, crop_fraction=1.0)
    fn = segmentation_preprocess.make_fn(preprocessing, training=False, encoded=True)
    out = fn(
        {"image": tf.constant(_png(image, mode="RGB")), "mask": tf.constant(_png(mask, mode="L"))}
    )
    ids = out["mask"].numpy()
    assert (ids[24:] == 255).all() and (ids[:24] != 255).all()  # 48x64 -> 24x32, padded below
    expected = np.asarray(Image.fromarray(mask).resize((32, 24), Image.NEAREST))
    assert (ids[:24] == expected).mean() > 0.95


def test_decoded_masks_are_read_as_ids_too():
    """A source of mask arrays (not PNG bytes) gives the same ids."""
    for mask in (_ids(), _ids()[..., None]):
        decoded = segmentation_preprocess.decode_mask(tf.constant(mask)).numpy()
        assert decoded.shape == (20, 30, 1)
        np.testing.assert_array_equal(decoded[..., 0], _ids())
