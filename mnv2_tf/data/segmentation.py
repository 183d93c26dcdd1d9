"""Segmentation sources: a VOC-layout folder, an images/ + masks/ folder pair, TFDS.

Each yields `{"image": encoded bytes, "mask": encoded single-channel PNG of class ids}` in a
`sources.Source` whose class names start with the background (class 0). Masks hold a class
id per pixel, 255 = ignore (VOC's boundary band, unlabelled pixels). What users' files hold
is checked once, as the split is read (in parallel):

- a palette PNG (VOC's SegmentationClass) is read as its palette indices, a grayscale PNG
  as its values, an RGB PNG whose three channels are equal as one of them: class ids all;
  a colour RGB mask is a `UserError` naming the file (save it as palette or grayscale ids);
- a mask whose size differs from its image: a `UserError` naming both files;
- a mask value that is neither a class id nor 255: a `UserError` naming the value, the file
  and the class count;
- an image without its mask (or a mask without its image): skipped, counted in
  `Source.skipped`; an undecodable image or mask: skipped, counted.

The checked masks are kept in memory re-encoded as grayscale PNGs (a few KB each), so the
input pipeline decodes them with TensorFlow's own PNG decoder, in parallel.

Layouts (`data.data_dir`):
  voc:    <dir>/JPEGImages/<id>.jpg, <dir>/SegmentationClass/<id>.png,
          <dir>/ImageSets/Segmentation/<split>.txt; classes: labels.txt or VOC's 20, after
          the background (the detector reads boxes from the same folder)
  folder: <dir>/<split>/images/<name>.{jpg,png}, <dir>/<split>/masks/<name>.png; classes:
          <dir>/labels.txt (one per line, background first) or data.class_names, else
          "class_0".."class_N" up to the largest id found
  tfds:   datasets with a mask feature (TFDS_MASKS), e.g. oxford_iiit_pet
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import os

import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image, UnidentifiedImageError

from mnv2_tf import fileio
from mnv2_tf.data import detection, sources, synthetic
from mnv2_tf.errors import UserError

IGNORE = 255
BACKGROUND = "background"
MASK_EXTENSIONS = (".png",)
# TFDS datasets with masks: (mask feature, {stored value: class id}, class names).
TFDS_MASKS = {
    # The trimap: 1 pet, 2 background, 3 the border (ignored, as VOC's band).
    "oxford_iiit_pet": ("segmentation_mask", {1: 1, 2: 0, 3: IGNORE}, [BACKGROUND, "pet"]),
}


@dataclasses.dataclass(frozen=True)
class _Checked:
    image: str
    mask_png: bytes | None  # None: skipped
    max_id: int = 0
    problem: str = ""  # why it was skipped


def read_mask(path: str) -> np.ndarray:
    """A mask file's class ids (uint8 [H, W]): palette indices, grayscale values, or the
    one channel of an RGB mask whose channels are equal."""
    with Image.open(fileio.readable(path)) as image:
        mode = image.mode
        pixels = np.asarray(image)
    if mode in ("P", "L"):
        return pixels.astype(np.uint8)
    if mode in ("I", "I;16") and pixels.max(initial=0) <= 255:
        return pixels.astype(np.uint8)
    if (
        mode in ("RGB", "RGBA")
        and (pixels[..., 0] == pixels[..., 1]).all()
        and (pixels[..., 0] == pixels[..., 2]).all()
    ):
        return pixels[..., 0].astype(np.uint8)
    raise UserError(
        f"{path}: a {mode} mask with colours, not class ids; save it as a palette PNG (VOC's "
        "SegmentationClass) or a grayscale PNG of class ids"
    )


def _png(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(mask, mode="L").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _check_pair(image: str, mask: str) -> _Checked:
    if not fileio.exists(image):
        return _Checked(image, None, problem=f"{image} missing")
    if not fileio.exists(mask):
        return _Checked(image, None, problem=f"{mask} missing")
    try:
        with Image.open(fileio.readable(image)) as im:
            size = im.size
    except (UnidentifiedImageError, OSError):
        return _Checked(image, None, problem=f"{image} unreadable")
    try:
        ids = read_mask(mask)
    except (UnidentifiedImageError, OSError):
        return _Checked(image, None, problem=f"{mask} unreadable")
    if (ids.shape[1], ids.shape[0]) != size:
        raise UserError(
            f"mask {mask} is {ids.shape[1]}x{ids.shape[0]} but its image {image} is "
            f"{size[0]}x{size[1]}; masks must match their images pixel for pixel"
        )
    labelled = ids[ids != IGNORE]
    return _Checked(image, _png(ids), int(labelled.max(initial=0)))


def _check_all(pairs: list[tuple[str, str]], num_classes: int | None) -> tuple[list, list, int]:
    """Checks every (image, mask) pair in parallel: (kept images, their mask PNGs, largest
    id); skipped pairs are logged; a bad value is a UserError (num_classes: the known count)."""
    workers = min(8, (os.cpu_count() or 2) * 2)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        checked = list(pool.map(lambda pair: _check_pair(*pair), pairs))
    kept = [c for c in checked if c.mask_png is not None]
    skipped = [c.problem for c in checked if c.mask_png is None]
    if skipped:
        logging.warning("skipped %d image/mask pair(s): %s", len(skipped), skipped[:10])
    if not kept:
        raise UserError(f"no readable image with its mask among {len(pairs)} listed")
    largest = max(c.max_id for c in kept)
    if num_classes is not None and largest >= num_classes:
        worst = next(c for c in kept if c.max_id == largest)
        raise UserError(
            f"mask of {worst.image} holds class id {largest}, but there are {num_classes} "
            f"classes (ids 0-{num_classes - 1}, 255 = ignore); fix the mask or the class list"
        )
    return kept, skipped, largest


def _source(kept: list[_Checked], skipped: list[str], class_names: list[str]) -> sources.Source:
    files = tf.data.Dataset.from_tensor_slices(
        ([c.image for c in kept], [c.mask_png for c in kept])
    )
    dataset = files.map(
        lambda path, mask: {"image": tf.io.read_file(path), "mask": mask},
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return sources.Source(
        dataset, len(kept), list(class_names), encoded=True, image_shape=(None, None, None),
        skipped=skipped,
    )  # fmt: skip


def _with_background(names: list[str]) -> list[str]:
    if names and names[0].lower() in (BACKGROUND, "_background_", "__background__"):
        return list(names)
    return [BACKGROUND, *names]


def _limit(pairs: list, data_cfg, split: str) -> list:
    key = "max_train_examples" if split == data_cfg.train_split else "max_eval_examples"
    limit = data_cfg.get(key)
    return pairs[:limit] if limit is not None else pairs


def load_voc(data_cfg, split: str) -> sources.Source:
    root = data_cfg.data_dir
    if not root:
        raise UserError("data.source='voc' needs data.data_dir: a VOC year folder")
    names = detection.voc_split_names(root, split, kind="Segmentation")
    pairs = [
        (
            os.path.join(root, "JPEGImages", n + ".jpg"),
            os.path.join(root, "SegmentationClass", n + ".png"),
        )
        for n in names
    ]
    given = list(data_cfg.get("class_names") or ())
    class_names = _with_background(given or detection.voc_class_names(root))
    kept, skipped, _ = _check_all(_limit(pairs, data_cfg, split), len(class_names))
    return _source(kept, skipped, class_names)


def _folder_pairs(root: str, split: str) -> list[tuple[str, str]]:
    images = os.path.join(root, split, "images")
    masks = os.path.join(root, split, "masks")
    if not fileio.isdir(images) or not fileio.isdir(masks):
        raise UserError(
            f"{root}/{split} must hold images/ and masks/ (a mask per image, same name, .png); "
            "set data.data_dir to their parent's parent and data.train_split/eval_split"
        )
    pairs = []
    mask_names = fileio.listdir(masks)
    mask_stems = {os.path.splitext(n)[0] for n in mask_names if n.lower().endswith(".png")}
    for name in sorted(fileio.listdir(images)):
        stem, ext = os.path.splitext(name)
        if ext.lower() in sources.IMAGE_EXTENSIONS:
            pairs.append((os.path.join(images, name), os.path.join(masks, stem + ".png")))
    image_stems = {os.path.splitext(os.path.basename(p))[0] for p, _ in pairs}
    orphans = sorted(mask_stems - image_stems)
    if orphans:
        logging.warning("%d mask(s) in %s without an image: %s", len(orphans), masks, orphans[:10])
    if not pairs:
        raise UserError(f"no images ({', '.join(sources.IMAGE_EXTENSIONS)}) in {images}")
    return pairs


def load_folder(data_cfg, split: str) -> sources.Source:
    root = data_cfg.data_dir
    if not root:
        raise UserError("data.source='folder' needs data.data_dir: the parent of <split>/images")
    class_names = list(data_cfg.get("class_names") or ())
    class_names = class_names or sources.read_labels(os.path.join(root, "labels.txt")) or []
    pairs = _limit(_folder_pairs(root, split), data_cfg, split)
    kept, skipped, largest = _check_all(pairs, len(class_names) if class_names else None)
    if not class_names:
        if split != data_cfg.train_split:
            # Ids mean the same in every split: the training split defines how many.
            largest = max(largest, _check_all(_folder_pairs(root, data_cfg.train_split), None)[2])
        class_names = [BACKGROUND] + [f"class_{i}" for i in range(1, max(largest, 1) + 1)]
    return _source(kept, skipped, class_names)


def load_tfds(data_cfg, split: str) -> sources.Source:
    name = data_cfg.name or ""
    family = name.split("/")[0].split(":")[0]
    if family not in TFDS_MASKS:
        raise UserError(
            f"data.name={name!r}: segmentation from TFDS supports {sorted(TFDS_MASKS)}; "
            "use data.source='voc' or 'folder' for your own masks"
        )
    feature, mapping, class_names = TFDS_MASKS[family]
    builder, dataset = sources.open_tfds(data_cfg, split)
    table = np.full(256, IGNORE, np.uint8)
    for stored, class_id in mapping.items():
        table[stored] = class_id
    lookup = tf.constant(table)

    def convert(ex):
        stored = tf.cast(tf.reshape(ex[feature], tf.shape(ex[feature])[:2]), tf.int32)
        ids = tf.gather(lookup, stored)[..., None]
        return {"image": ex["image"], "mask": tf.io.encode_png(ids)}

    dataset = dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
    source = sources.Source(
        dataset, sources.tfds_num_examples(builder, dataset, split), list(class_names), encoded=True,
        image_shape=(None, None, None),
    )  # fmt: skip
    return sources.limit_examples(source, data_cfg, split)


def load(data_cfg, split: str) -> sources.Source:
    """The segmentation source `data_cfg.source` names ("voc", "folder" or "tfds")."""
    loaders = {"voc": load_voc, "folder": load_folder, "tfds": load_tfds}
    if data_cfg.source not in loaders:
        raise UserError(
            f"data.source={data_cfg.source!r} gives no masks; segmentation reads one of "
            f"{sorted(loaders)}"
        )
    data_cfg = synthetic.resolve(data_cfg)
    return loaders[data_cfg.source](data_cfg, split)
