"""The input pipeline: sources, preprocessing ops (eagerly and inside tf.data), batching."""

import gzip
import io
import os
import struct

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from mnv2_tf.config import base_config
from mnv2_tf.data import find_unreadable, make_dataset, preprocess, read_idx, sources
from mnv2_tf.errors import UserError
from mnv2_tf.models.common import Preprocessing

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def _data_cfg(**overrides) -> ml_collections.ConfigDict:
    cfg = base_config().data
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def _write_idx(path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        data = gzip.compress(data)
    path.write_bytes(data)


def _jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _image_folder(root, sizes=((40, 50), (64, 48)), corrupt: bool = False):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("cat", "dog", "fox"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i, (h, w) in enumerate(sizes):
                pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
                if i % 2:
                    Image.fromarray(pixels).save(folder / f"{i}.png")
                else:
                    (folder / f"{i}.jpg").write_bytes(_jpeg(pixels))
    if corrupt:
        (root / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


# --- sources -----------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx(tmp_path, compress):
    images = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    path = tmp_path / ("x.idx.gz" if compress else "x.idx")
    _write_idx(path, images, compress)
    np.testing.assert_array_equal(read_idx(str(path)), images)


def test_read_idx_rejects_bad_files(tmp_path):
    bad_magic = tmp_path / "magic"
    bad_magic.write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00")
    with pytest.raises(UserError, match="magic"):
        read_idx(str(bad_magic))
    truncated = tmp_path / "truncated"
    _write_idx(truncated, np.zeros((4, 5)), compress=False)
    truncated.write_bytes(truncated.read_bytes()[:-3])
    with pytest.raises(UserError, match="truncated"):
        read_idx(str(truncated))


@pytest.mark.skipif(
    not os.path.isdir(FASHION_MNIST), reason="apt-get install dataset-fashion-mnist"
)
def test_fashion_mnist_from_the_debian_package():
    train = sources.load(_data_cfg(), "train")
    test = sources.load(_data_cfg(max_eval_examples=100), "test")
    assert (train.num_examples, test.num_examples) == (60_000, 100)
    assert train.class_names[0] == "T-shirt/top" and len(train.class_names) == 10
    example = next(iter(train.dataset))
    assert example["image"].shape == (28, 28, 1) and example["image"].dtype == tf.uint8
    assert len(list(test.dataset)) == 100


def test_missing_idx_folder_says_how_to_get_it(tmp_path):
    with pytest.raises(UserError, match="dataset-fashion-mnist"):
        sources.load(_data_cfg(data_dir=str(tmp_path / "nowhere")), "train")
    with pytest.raises(UserError, match="dataset-fashion-mnist"):
        sources.load(_data_cfg(data_dir=str(tmp_path)), "train")  # exists, no files


def test_image_folder_source(tmp_path):
    root = _image_folder(tmp_path)
    cfg = _data_cfg(source="folder", data_dir=str(root), train_split="train", eval_split="val")
    train = sources.load(cfg, "train")
    assert train.class_names == ["cat", "dog", "fox"]
    assert train.num_examples == 6 and train.encoded and train.skipped == []
    labels = sorted(int(ex["label"]) for ex in train.dataset)
    assert labels == [0, 0, 1, 1, 2, 2]


def test_image_folder_skips_and_counts_a_corrupt_image(tmp_path):
    root = _image_folder(tmp_path, corrupt=True)
    broken = str(root / "train" / "dog" / "broken.jpg")
    assert find_unreadable([broken, str(root / "train" / "dog" / "0.jpg")]) == [broken]
    cfg = _data_cfg(source="folder", data_dir=str(root), eval_split="val")
    train = sources.load(cfg, "train")
    assert train.skipped == [broken] and train.num_examples == 6


def test_image_folder_errors(tmp_path):
    cfg = _data_cfg(source="folder", data_dir=str(tmp_path))
    with pytest.raises(UserError, match="not found"):
        sources.load(cfg, "train")
    (tmp_path / "train" / "empty_class").mkdir(parents=True)
    with pytest.raises(UserError, match="no images"):
        sources.load(cfg, "train")
    with pytest.raises(UserError, match=r"unknown data\.source"):
        sources.load(_data_cfg(source="csv"), "train")


def test_tfds_source_offline_with_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=6):
        source = sources.load(_data_cfg(source="tfds", name="fashion_mnist"), "train")
        assert source.encoded and len(source.class_names) == 10
        images = [preprocess.decode(ex["image"], True) for ex in source.dataset]
    assert len(images) == 6 and images[0].shape == (28, 28, 3)


# --- preprocessing ops, eagerly and in tf.data --------------------------------------------


def _both_ways(fn, value):
    """fn(value) eagerly and inside a tf.data map (they can differ: shapes are unknown there)."""
    eager = fn(tf.constant(value))
    graph = next(iter(tf.data.Dataset.from_tensors(value).map(fn)))
    return eager, graph


def test_center_crop_of_jpeg_bytes_decodes_only_the_window():
    pixels = np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    encoded = _jpeg(pixels)
    decoded = tf.io.decode_jpeg(encoded).numpy()
    for out in _both_ways(lambda x: preprocess.center_crop(x, True, 32, 0.875), encoded):
        side = int(64 * 0.875)
        top, left = (64 - side) // 2, (80 - side) // 2
        window = decoded[top : top + side, left : left + side].astype(np.float32)
        expected = tf.image.resize(window, [32, 32]).numpy()
        # Decoding a window upsamples chroma at its edges a little differently from
        # decoding all: equal but for a few pixel values.
        error = np.abs(out.numpy() - expected)
        assert error.mean() < 0.5 and np.percentile(error, 95) < 1.0, (error.mean(), error.max())


def test_random_resized_crop_on_bytes_and_arrays():
    pixels = np.random.default_rng(1).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    for value, encoded in ((_jpeg(pixels), True), (pixels, False)):
        for out in _both_ways(lambda x, e=encoded: preprocess.random_resized_crop(x, e, 24), value):
            assert out.shape == (24, 24, 3) and out.dtype == tf.float32
            assert float(tf.reduce_min(out)) >= 0 and float(tf.reduce_max(out)) <= 255


def test_grayscale_becomes_rgb():
    gray = np.random.default_rng(2).integers(0, 255, (28, 28, 1), dtype=np.uint8)
    for out in _both_ways(lambda x: preprocess.decode(x, False), gray):
        assert out.shape == (28, 28, 3)
        np.testing.assert_array_equal(out.numpy()[..., 2], gray[..., 0])
    png = io.BytesIO()
    Image.fromarray(gray[..., 0]).save(png, format="PNG")
    for out in _both_ways(lambda x: preprocess.decode(x, True), png.getvalue()):
        assert out.shape == (28, 28, 3)


def test_random_erasing_and_padding_crop():
    image = np.ones((32, 32, 3), np.float32)
    for out in _both_ways(lambda x: preprocess.random_erasing(x, 1.0), image):
        zeros = int(tf.reduce_sum(tf.cast(out[..., 0] == 0, tf.int32)))
        assert 0 < zeros <= 0.25 * 32 * 32 + 32  # one rectangle, within the area range
    for out in _both_ways(lambda x: preprocess.random_erasing(x, 0.0), image):
        np.testing.assert_array_equal(out.numpy(), image)
    for out in _both_ways(lambda x: preprocess.pad_and_random_crop(x, 32, 4), image):
        assert out.shape == (32, 32, 3)


def test_paste_draws_the_item_tinted_over_a_scene():
    """ "paste": the item's pixels are its opacity over a two-colour gradient with noise, at
    half to full size; its tint stays visible; evaluation is the plain resize."""
    item = np.zeros((28, 28, 1), np.uint8)
    item[4:24, 8:20] = 255  # an opaque rectangle on black
    for out in _both_ways(lambda x: preprocess.paste_on_background(x, False, 64), item):
        image = out.numpy()
        assert image.shape == (64, 64, 3) and image.min() >= 0 and image.max() <= 255
        # The scene varies (gradient, noise): no flat black canvas as in the source.
        assert image.std() > 3 and np.abs(image - image.mean((0, 1))).mean() > 1
    # The same draw with a transparent item is the bare scene: where they differ is the
    # item, a 0.5-1.0 scale of the source's 20x12 rectangle, in one colour inside.
    scenes = []
    for source in (item, np.zeros_like(item)):
        tf.random.set_seed(3)
        scenes.append(preprocess.paste_on_background(tf.constant(source), False, 64).numpy())
    where = np.abs(scenes[0] - scenes[1]).max(-1) > 1
    share = where.mean() / (20 * 12 / 28**2)
    assert 0.2 < share < 1.1
    ys, xs = np.nonzero(where)
    inside = scenes[0][(ys.min() + ys.max()) // 2, xs.min() + 2 : xs.max() - 2]
    assert np.ptp(inside, axis=0).max() < 1e-3  # one tint, no noise over the opaque item
    spec = Preprocessing(input_size=32)
    fn = preprocess.make_fn(training=False, encoded=False, preprocessing=spec, augment="paste")
    evaluated = fn({"image": tf.constant(item)})["image"].numpy()
    assert evaluated.min() == -1.0 and evaluated.max() == 1.0  # black and white, resized


def test_normalization_uses_the_model_constants():
    spec = Preprocessing(input_size=32)
    fn = preprocess.make_fn(training=False, encoded=False, preprocessing=spec, augment="small")
    image = np.full((28, 28, 1), 255, np.uint8)
    out = fn({"image": tf.constant(image), "label": tf.constant(3, tf.int64)})
    assert out["image"].shape == (32, 32, 3)
    np.testing.assert_allclose(out["image"].numpy(), 1.0, atol=1e-6)


# --- the pipeline ---------------------------------------------------------------------------


def _array_source(n=10, size=28):
    images = np.random.default_rng(3).integers(0, 255, (n, size, size, 1), dtype=np.uint8)
    labels = np.arange(n, dtype=np.int64) % 10
    ds = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})
    return sources.Source(ds, n, [str(i) for i in range(10)], False, (size, size, 1))


def test_eval_visits_every_image_once_with_static_batches():
    spec = Preprocessing(input_size=32)
    ds, _ = make_dataset(
        _data_cfg(), spec, "test", training=False, batch_size=4, source=_array_source(10)
    )
    batches = list(ds)
    assert len(batches) == 3
    assert all(b["image"].shape == (4, 32, 32, 3) for b in batches)
    valid = np.concatenate([b["valid"].numpy() for b in batches])
    labels = np.concatenate([b["label"].numpy() for b in batches])
    assert valid.sum() == 10 and list(labels[:10]) == list(range(10))


def test_training_batches_repeat_and_augment():
    spec = Preprocessing(input_size=32)
    cfg = _data_cfg(random_erasing=0.5)
    ds, source = make_dataset(
        cfg, spec, "train", training=True, batch_size=4, source=_array_source(10)
    )
    assert source.num_examples == 10
    batches = list(ds.take(6))  # 24 > 10: the data repeats
    assert all(b["image"].shape == (4, 32, 32, 3) for b in batches)
    assert ds.element_spec["image"].shape == (4, 32, 32, 3)


def test_resolve_augment():
    from mnv2_tf.data import resolve_augment

    small = _array_source()
    big = sources.Source(None, 1, ["a"], True, (None, None, 3))
    assert resolve_augment(_data_cfg(augment="auto"), small) == "small"
    assert resolve_augment(_data_cfg(augment="auto"), big) == "inception"
    assert resolve_augment(_data_cfg(augment="inception"), small) == "inception"
