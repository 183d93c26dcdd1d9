"""Where images come from: TFDS by name, an image folder, or IDX files (the MNIST family).

Each source turns one split into a `Source`: a tf.data.Dataset of dicts
`{"image": ..., "label": int64}` plus the facts the rest of the pipeline needs (size,
class names, whether images are still encoded). Images stay encoded (JPEG/PNG bytes)
where they are stored that way, so that training decodes only the random crop.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct

import numpy as np
import tensorflow as tf
from absl import logging

from mnv2_tf import fileio
from mnv2_tf.errors import UserError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
IDX_PREFIXES = {"train": "train", "test": "t10k"}


@dataclasses.dataclass
class Source:
    """One split of a dataset, ready for preprocessing."""

    dataset: tf.data.Dataset  # {"image": uint8 HxWxC or encoded string, "label": int64}
    num_examples: int
    class_names: list[str]
    encoded: bool  # "image" holds JPEG/PNG/... bytes
    image_shape: tuple[int | None, int | None, int | None]  # of decoded images, where known
    skipped: list[str] = dataclasses.field(default_factory=list)  # unreadable files left out
    fixed_boxes: int = 0  # detection: boxes clipped to their image or dropped (zero area)


def load(data_cfg, split: str) -> Source:
    """Loads `split` of the source that `data_cfg` names (`data_cfg.source`)."""
    loaders = {"idx": _load_idx, "folder": _load_folder, "tfds": _load_tfds}
    if data_cfg.source not in loaders:
        raise UserError(f"unknown data.source {data_cfg.source!r}; choose one of {sorted(loaders)}")
    return limit_examples(loaders[data_cfg.source](data_cfg, split), data_cfg, split)


def read_labels(path: str, num_classes: int | None = None) -> list[str] | None:
    """The class names of a labels file, one per line in class order; None where there is
    no file. Read through `fileio` (local, Drive and gs:// paths alike) by the data readers
    (VOC and folder labels.txt) and the export (`export.labels`).

    Each line is stripped of surrounding spaces and trailing blank lines are dropped; a blank
    line before the last label is an error, since it would shift every later class by one.
    With `num_classes`, a count that differs is an error too.
    """
    if not fileio.exists(path):
        return None
    lines = [line.strip() for line in fileio.read_bytes(path).decode("utf-8").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if "" in lines:
        raise UserError(
            f"labels file {path}: line {lines.index('') + 1} is blank; give one label per "
            "line, in class order"
        )
    if num_classes is not None and len(lines) != num_classes:
        raise UserError(
            f"labels file {path} has {len(lines)} labels, the model has {num_classes} classes; "
            "give one label per line, in class order"
        )
    return lines


def limit_examples(source: Source, data_cfg, split: str) -> Source:
    """`source` cut to `data.max_train_examples` / `max_eval_examples` (None: all)."""
    if split == data_cfg.train_split:
        limit = data_cfg.get("max_train_examples")
    else:
        limit = data_cfg.get("max_eval_examples")
    if limit is not None and limit < source.num_examples:
        source.dataset = source.dataset.take(limit)
        source.num_examples = int(limit)
    return source


# --- IDX ---------------------------------------------------------------------------------


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (optionally gzipped): magic 0x0000TTDD, DD big-endian dimensions."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read IDX file {path} ({e}); is it complete?") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims))
    if len(data) - header != expected:
        raise UserError(
            f"{path} holds {len(data) - header} bytes of data, its header promises {expected}; "
            "the file is truncated or corrupt"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def idx_file(directory: str, prefix: str, kind: str) -> str:
    name = f"{prefix}-{kind}-idx{1 if kind == 'labels' else 3}-ubyte"
    for candidate in (name + ".gz", name):
        path = os.path.join(directory, candidate)
        if os.path.exists(path):
            return path
    raise UserError(
        f"no {prefix}-{kind}-idx*-ubyte[.gz] in {directory}; for Fashion-MNIST install the "
        "Debian package (apt-get install dataset-fashion-mnist) or point data.data_dir at "
        "a folder of IDX files"
    )


def _load_idx(data_cfg, split: str) -> Source:
    directory = data_cfg.data_dir or FASHION_MNIST_DIR
    if not os.path.isdir(directory):
        raise UserError(
            f"IDX data folder {directory} not found; install Fashion-MNIST with "
            "'apt-get install dataset-fashion-mnist' or set --config.data.data_dir"
        )
    if split not in IDX_PREFIXES:
        raise UserError(f"IDX split must be one of {sorted(IDX_PREFIXES)}, got {split!r}")
    images = read_idx(idx_file(directory, IDX_PREFIXES[split], "images"))
    labels = read_idx(idx_file(directory, IDX_PREFIXES[split], "labels"))
    if images.ndim == 3:
        images = images[..., None]
    if len(images) != len(labels):
        raise UserError(f"{directory}: {len(images)} images but {len(labels)} labels in {split}")
    num_classes = int(labels.max()) + 1
    class_names = list(data_cfg.get("class_names") or ())
    if not class_names:
        if "fashion" in os.path.basename(os.path.normpath(directory)).lower():
            class_names = list(FASHION_MNIST_CLASSES)
        else:
            class_names = [str(i) for i in range(num_classes)]
    dataset = tf.data.Dataset.from_tensor_slices(
        {"image": images, "label": labels.astype(np.int64)}
    )
    return Source(dataset, len(images), class_names, encoded=False, image_shape=images.shape[1:])


# --- image folder ------------------------------------------------------------------------


def _list_folder(root: str, split: str, class_names: list[str] | None):
    split_dir = os.path.join(root, split)
    if not fileio.isdir(split_dir):
        raise UserError(
            f"image folder {split_dir} not found; expected {root}/<split>/<class>/*.jpg "
            "(set data.data_dir to the root and data.train_split/eval_split to its sub-folders)"
        )
    found = sorted(
        n.rstrip("/") for n in fileio.listdir(split_dir)
        if fileio.isdir(os.path.join(split_dir, n.rstrip("/")))
    )  # fmt: skip
    class_names = class_names or found
    paths, labels = [], []
    for label, name in enumerate(class_names):
        class_dir = os.path.join(split_dir, name)
        if not fileio.isdir(class_dir):
            continue
        found_here = [
            os.path.join(folder, f)
            for folder, _, files in tf.io.gfile.walk(class_dir)
            for f in files
            if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
        ]
        paths += sorted(found_here)
        labels += [label] * len(found_here)
    if not paths:
        raise UserError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {split_dir}/<class>/; "
            "expected one sub-folder of images per class"
        )
    return paths, labels, class_names


def find_unreadable(paths: list[str]) -> list[str]:
    """The files TensorFlow's own decoder cannot decode (checked in parallel, once)."""
    index = tf.data.Dataset.range(len(paths))
    files = tf.data.Dataset.from_tensor_slices(paths)

    def try_decode(i, path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        # Returning the shape keeps the decode in the graph (a control dependency is pruned).
        return i, tf.shape(image)

    ok = tf.data.Dataset.zip((index, files)).map(
        try_decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False
    )
    ok = ok.ignore_errors()
    good = {int(i) for i, _ in ok.as_numpy_iterator()}
    return [p for i, p in enumerate(paths) if i not in good]


def _load_folder(data_cfg, split: str) -> Source:
    root = data_cfg.data_dir
    if not root:
        raise UserError("data.source='folder' needs data.data_dir: the root of <split>/<class>/")
    train_classes = None
    if split != data_cfg.train_split:
        # Labels must mean the same in every split: the training split defines them.
        _, _, train_classes = _list_folder(root, data_cfg.train_split, None)
    paths, labels, class_names = _list_folder(root, split, train_classes)
    bad = set(find_unreadable(paths))
    if bad:
        logging.warning("skipping %d unreadable image(s) in %s: %s", len(bad), split, sorted(bad))
        keep = [i for i, p in enumerate(paths) if p not in bad]
        paths = [paths[i] for i in keep]
        labels = [labels[i] for i in keep]
    if not paths:
        raise UserError(f"every image under {root}/{split} is unreadable")
    # Files are listed class by class: a fixed permutation makes any prefix (max_*_examples)
    # and any shuffle buffer see every class.
    order = np.random.default_rng(0).permutation(len(paths))
    paths = [paths[i] for i in order]
    labels = np.asarray(labels, np.int64)[order]
    files = tf.data.Dataset.from_tensor_slices((paths, labels))
    dataset = files.map(
        lambda p, y: {"image": tf.io.read_file(p), "label": y},
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return Source(
        dataset,
        len(paths),
        class_names,
        encoded=True,
        image_shape=(None, None, None),
        skipped=sorted(bad),
    )


# --- TFDS --------------------------------------------------------------------------------


def open_tfds(data_cfg, split: str):
    """(builder, dataset) of TFDS' `data.name`, `split`, images left encoded: for the tasks'
    readers of datasets with boxes or masks. Not prepared, an unknown name or a bad split: a
    one-line UserError."""
    import tensorflow_datasets as tfds

    name = data_cfg.name or ""
    try:
        builder = tfds.builder(name, data_dir=data_cfg.data_dir or None)
        if data_cfg.get("download", False):
            builder.download_and_prepare()
        dataset = builder.as_dataset(
            split=split, decoders={"image": tfds.decode.SkipDecoding()}, shuffle_files=False
        )
    except Exception as e:  # not prepared, unknown name, bad split
        raise UserError(
            f"TFDS dataset {name!r} split {split!r} unavailable ({str(e).splitlines()[0][:200]}); "
            "set data.download=True where there is a network"
        ) from e
    return builder, dataset


def tfds_num_examples(builder, dataset: tf.data.Dataset, split: str) -> int:
    """The split's size from the builder's info, else counted (a split expression)."""
    try:
        return int(builder.info.splits[split].num_examples)
    except KeyError:
        return int(dataset.reduce(0, lambda n, _: n + 1))


def _load_tfds(data_cfg, split: str) -> Source:
    import tensorflow_datasets as tfds

    name = data_cfg.name
    if not name:
        raise UserError("data.source='tfds' needs data.name, e.g. 'tf_flowers' or 'imagenet2012'")
    try:
        builder = tfds.builder(name, data_dir=data_cfg.data_dir or None)
    except Exception as e:  # DatasetNotFoundError and friends
        raise UserError(f"unknown TFDS dataset {name!r} ({e})") from e
    if data_cfg.get("download", False):
        builder.download_and_prepare()
    try:
        info = builder.info
        features = info.features
        skip = {"image": tfds.decode.SkipDecoding()}
        dataset = builder.as_dataset(split=split, decoders=skip, shuffle_files=False)
    except (AssertionError, tfds.core.registered.DatasetNotFoundError) as e:
        raise UserError(
            f"TFDS dataset {name!r} is not prepared in {data_cfg.data_dir or '~/tensorflow_datasets'} "
            f"({str(e).splitlines()[0]}); set data.download=True where there is a network"
        ) from e
    except ValueError as e:
        raise UserError(f"TFDS dataset {name!r}: bad split {split!r} ({e})") from e
    image_key, label_key = "image", "label"
    dataset = dataset.map(
        lambda ex: {"image": ex[image_key], "label": tf.cast(ex[label_key], tf.int64)}
    )
    label_feature = features[label_key]
    try:
        num_examples = info.splits[split].num_examples
    except KeyError:
        # Split sizes come from the prepared dataset's metadata; mocked data has none.
        num_examples = int(dataset.cardinality())
        if num_examples < 0:
            num_examples = int(dataset.reduce(0, lambda n, _: n + 1))
    return Source(
        dataset,
        int(num_examples),
        list(label_feature.names),
        encoded=True,
        image_shape=tuple(features[image_key].shape),
    )
