"""Offline detection and segmentation data with real pixels: Fashion-MNIST composites.

Each canvas holds 1-`max_items` Fashion-MNIST items (the Debian package's IDX files: train
canvases take items from the 60,000 training images, test canvases from the 10,000 test
images), each scaled to a random size, tinted, pasted with its own pixels as the alpha
mask onto a non-blank background (a colour gradient with noise and a faint, blurred item
texture). Items overlap (a later item hides part of an earlier one) and may be cut by the
border. Every item's box is the exact extent of its visible pixels; an item left with too
few visible pixels is dropped from the labels (and hidden from the masks' class). The masks
mark a thin band along every boundary between two labels (item/background, item/item) with
255, "ignore", as VOC's masks do: the pixels there mix both sides.

Written in the formats users' own data come in, and read back by the same readers:
  <out>/coco/annotations/instances_<split>.json, <out>/coco/<split>/<id>.jpg   (COCO)
  <out>/voc/JPEGImages/<id>.jpg, Annotations/<id>.xml, SegmentationClass/<id>.png
  (palette PNG: 0 background, class + 1 per pixel, 255 the boundary band),
  SegmentationObject/<id>.png,
  ImageSets/Main/<split>.txt, ImageSets/Segmentation/<split>.txt, labels.txt    (VOC)
Deterministic by seed: the same arguments write the same files.

The generator writes only into a folder that is empty (or missing) or that it wrote itself
(its VERSION marker, written before anything else): it never writes over a user's data.
`data.synthetic=True` with no `data.data_dir` is the dense configs' offline default, the
composites in `DEFAULT_DIR` (`resolve`); a `data.data_dir` the user sets is read as it is.

    python -m mnv2_tf.data.synthetic --out=/tmp/fmnist_det --train_images=12000
"""

from __future__ import annotations

import io
import os
import xml.etree.ElementTree as ET

import numpy as np
from PIL import Image, ImageFilter

from mnv2_tf import fileio
from mnv2_tf.data import sources
from mnv2_tf.errors import UserError

SPLITS = {"train": "train", "test": "test"}
MIN_VISIBLE = 0.3  # an item keeps its label with at least this share of its pixels visible
ALPHA_FLOOR = 0.1  # item pixels above this intensity are the item (its mask)
# Written to VERSION and the COCO "info": a changed generator invalidates old files.
# 2: the masks' ignore band (images and boxes are those of 1).
VERSION = 2
IGNORE = 255
# Where the configs keep them (written on first use): its coco/ and voc/ folders.
DEFAULT_DIR = f"~/.cache/mnv2_tf/fmnist_composites_v{VERSION}"
MARKER = "VERSION"  # "<version> incomplete" while writing, "<version>" once complete
LAYOUTS = ("coco", "voc")  # the data.source values the composites are written for


def voc_palette() -> list[int]:
    """VOC's colour map (bit-interleaved), 256 entries."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def _background(rng: np.random.Generator, size: int, items: np.ndarray) -> np.ndarray:
    """A gradient between two random colours, a faint blurred item texture, noise."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / size
    t = (np.cos(angle) * xx + np.sin(angle) * yy + 1.5) / 3
    image = c0 * (1 - t[..., None]) + c1 * t[..., None]
    texture = items[rng.integers(len(items))]
    texture = Image.fromarray(texture).resize((size, size), Image.BILINEAR)
    texture = np.asarray(texture.filter(ImageFilter.GaussianBlur(3)), np.float32) / 255
    image += (texture[..., None] - 0.3) * rng.uniform(-60, 60)
    image += rng.normal(0, 6, image.shape)
    return image


def compose(rng, size: int, items: np.ndarray, labels: np.ndarray, max_items: int, scale):
    """One canvas: (uint8 image [S, S, 3], boxes [(x0, y0, x1, y1) pixels, end-exclusive],
    classes, visible pixels per box, class mask [S, S] (0 background, class + 1), instance mask [S, S])."""
    image = _background(rng, size, items)
    owner = np.full((size, size), -1, np.int32)  # which item each pixel shows
    placed = []
    for _ in range(rng.integers(1, max_items + 1)):
        index = rng.integers(len(items))
        side = int(rng.uniform(scale[0], scale[1]) * size)
        item = Image.fromarray(items[index]).resize((side, side), Image.BILINEAR)
        alpha = np.asarray(item, np.float32) / 255
        # Up to a quarter of the item may fall outside the canvas.
        y0 = int(rng.integers(-side // 4, size - 3 * side // 4 + 1))
        x0 = int(rng.integers(-side // 4, size - 3 * side // 4 + 1))
        ys, xs = slice(max(y0, 0), min(y0 + side, size)), slice(max(x0, 0), min(x0 + side, size))
        a = alpha[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
        region = image[ys, xs]
        colour = rng.uniform(0, 255, 3)
        if np.abs(colour - region.mean((0, 1))).mean() < 60:  # keep the item visible
            colour = 255 - colour
        image[ys, xs] = region * (1 - a[..., None]) + colour * a[..., None]
        mask = a > ALPHA_FLOOR
        owner[ys, xs][mask] = len(placed)
        placed.append((int(labels[index]), int((alpha > ALPHA_FLOOR).sum())))
    boxes, classes, areas = [], [], []
    class_mask = np.zeros((size, size), np.uint8)
    instance_mask = np.zeros((size, size), np.uint8)
    for i, (label, full) in enumerate(placed):
        visible = owner == i
        count = int(visible.sum())
        if count < MIN_VISIBLE * full or count == 0:
            continue
        ys, xs = np.nonzero(visible)
        boxes.append((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
        classes.append(label)
        areas.append(count)
        class_mask[visible] = label + 1
        instance_mask[visible] = len(boxes)
    band = boundary_band(instance_mask)
    class_mask[band] = IGNORE
    instance_mask[band] = IGNORE
    image = np.clip(image, 0, 255).astype(np.uint8)
    return image, boxes, classes, areas, class_mask, instance_mask


def boundary_band(labels: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of another label: a band two pixels wide along every
    boundary (one on each side)."""
    band = np.zeros(labels.shape, bool)
    vertical = labels[1:] != labels[:-1]
    horizontal = labels[:, 1:] != labels[:, :-1]
    band[1:] |= vertical
    band[:-1] |= vertical
    band[:, 1:] |= horizontal
    band[:, :-1] |= horizontal
    return band


def _jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def _png(mask: np.ndarray, palette) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(mask, mode="P")
    image.putpalette(palette)
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _voc_xml(name: str, size: int, boxes, classes, class_names) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC"
    ET.SubElement(root, "filename").text = name + ".jpg"
    dims = ET.SubElement(root, "size")
    for tag, value in (("width", size), ("height", size), ("depth", 3)):
        ET.SubElement(dims, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "1"
    for (x0, y0, x1, y1), c in zip(boxes, classes, strict=True):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = class_names[c]
        ET.SubElement(obj, "difficult").text = "0"
        box = ET.SubElement(obj, "bndbox")
        # VOC's pixel coordinates are 1-based and inclusive.
        for tag, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(box, tag).text = str(value)
    return ET.tostring(root)


def generate(
    out: str,
    *,
    train_images: int = 12000,
    test_images: int = 1000,
    size: int = 192,
    max_items: int = 4,
    scale: tuple[float, float] = (0.2, 0.6),
    seed: int = 0,
    idx_dir: str | None = None,
    log=print,
) -> dict:
    """Writes both splits under `out` (see the module docstring); returns a summary."""
    directory = idx_dir or sources.FASHION_MNIST_DIR
    if not os.path.isdir(directory):
        raise UserError(
            f"Fashion-MNIST not found in {directory}; apt-get install dataset-fashion-mnist"
        )
    check_writable(out)
    fileio.makedirs(out)
    fileio.write_text_atomic(os.path.join(out, MARKER), f"{VERSION} incomplete\n")
    class_names = list(sources.FASHION_MNIST_CLASSES)
    palette = voc_palette()
    voc = os.path.join(out, "voc")
    for sub in ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationObject"):
        fileio.makedirs(os.path.join(voc, sub))
    fileio.makedirs(os.path.join(voc, "ImageSets", "Main"))
    fileio.makedirs(os.path.join(voc, "ImageSets", "Segmentation"))
    fileio.makedirs(os.path.join(out, "coco", "annotations"))
    fileio.write_text_atomic(
        os.path.join(voc, "labels.txt"), "".join(n + "\n" for n in class_names)
    )
    summary = {"version": VERSION, "seed": seed, "size": size, "splits": {}}
    for split, count in (("train", train_images), ("test", test_images)):
        prefix = sources.IDX_PREFIXES[split]
        items = sources.read_idx(sources.idx_file(directory, prefix, "images"))
        labels = sources.read_idx(sources.idx_file(directory, prefix, "labels"))
        rng = np.random.default_rng([seed, 0 if split == "train" else 1])
        image_dir = os.path.join(out, "coco", split)
        fileio.makedirs(image_dir)
        images, annotations, names = [], [], []
        for i in range(count):
            image, boxes, classes, areas, class_mask, instance_mask = compose(
                rng, size, items, labels, max_items, scale
            )
            name = f"{split}_{i:06d}"
            names.append(name)
            jpeg = _jpeg(image)
            fileio.write_bytes_atomic(os.path.join(image_dir, name + ".jpg"), jpeg)
            fileio.write_bytes_atomic(os.path.join(voc, "JPEGImages", name + ".jpg"), jpeg)
            fileio.write_bytes_atomic(
                os.path.join(voc, "SegmentationClass", name + ".png"), _png(class_mask, palette)
            )
            fileio.write_bytes_atomic(
                os.path.join(voc, "SegmentationObject", name + ".png"),
                _png(instance_mask, palette),
            )
            fileio.write_bytes_atomic(
                os.path.join(voc, "Annotations", name + ".xml"),
                _voc_xml(name, size, boxes, classes, class_names),
            )
            images.append({"id": i + 1, "file_name": name + ".jpg", "width": size, "height": size})
            for (x0, y0, x1, y1), c, area in zip(boxes, classes, areas, strict=True):
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i + 1,
                        "category_id": c + 1,
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": area,
                        "iscrowd": 0,
                    }
                )
            if (i + 1) % 2000 == 0:
                log(f"{split}: {i + 1}/{count} images")
        coco = {
            "info": {"description": "Fashion-MNIST composites (mnv2_tf.data.synthetic)",
                     "version": str(VERSION), "seed": seed},
            "images": images,
            "annotations": annotations,
            "categories": [
                {"id": c + 1, "name": n, "supercategory": "fashion"}
                for c, n in enumerate(class_names)
            ],
        }  # fmt: skip
        listing = "".join(n + "\n" for n in names)
        fileio.write_text_atomic(os.path.join(voc, "ImageSets", "Main", split + ".txt"), listing)
        fileio.write_text_atomic(
            os.path.join(voc, "ImageSets", "Segmentation", split + ".txt"), listing
        )
        # The annotation file last: its presence means the split is complete.
        fileio.write_json_atomic(
            os.path.join(out, "coco", "annotations", f"instances_{split}.json"), coco
        )
        summary["splits"][split] = {"images": count, "boxes": len(annotations)}
        log(f"{split}: {count} images, {len(annotations)} boxes")
    fileio.write_text_atomic(os.path.join(out, MARKER), f"{VERSION}\n")
    return summary


def _marker(out: str) -> str | None:
    """The generator's VERSION marker in `out` (stripped), None where there is none."""
    path = os.path.join(out, MARKER)
    if not fileio.exists(path):
        return None
    return fileio.read_bytes(path).decode("utf-8", "replace").strip()


def check_writable(out: str) -> None:
    """Stops unless `out` is missing, empty, or a folder this generator wrote (its marker):
    the composites never go over or beside anyone's files."""
    if not fileio.exists(out):
        return
    if not fileio.isdir(out):
        raise UserError(f"{out} is a file; the composites go into a folder: give another --out")
    marker = _marker(out)
    if marker is not None and marker.split()[0].isdigit():
        return
    if fileio.listdir(out):
        raise UserError(
            f"{out} holds files the composites' generator did not write (no {MARKER} marker): "
            "it writes only into an empty folder or one it wrote; to read your own data there "
            "set --config.data.synthetic=False, else give another data_dir (unset: the cache)"
        )


def ensure(out: str, *, seed: int = 0, log=print, **kwargs) -> None:
    """Generates the data under `out` unless this generator's version wrote it there
    (and refuses a folder holding anything else: `check_writable`)."""
    if _marker(out) != str(VERSION):
        check_writable(out)
        log(f"writing the Fashion-MNIST composites (boxes and masks) to {out} (once, ~4 min)")
        generate(out, seed=seed, log=log, **kwargs)


def resolve(data_cfg, log=print):
    """The data section a dense task reads: `data_dir` with `~` expanded, and, for the
    offline default (`data.synthetic=True` and no `data.data_dir`), the composites' coco/ or
    voc/ folder under `DEFAULT_DIR`, written there on first use. A `data_dir` the user set is
    their data: it is read as it is, never written to, whatever `data.synthetic` says."""
    data_dir = data_cfg.get("data_dir")
    if data_cfg.get("synthetic") and not data_dir:
        if data_cfg.source not in LAYOUTS:
            raise UserError(
                f"data.synthetic=True writes the {' and '.join(LAYOUTS)} layouts, not "
                f"data.source={data_cfg.source!r}: set data.data_dir, or data.synthetic=False"
            )
        root = os.path.expanduser(DEFAULT_DIR)
        ensure(root, log=log)
        data_dir = os.path.join(root, data_cfg.source)
    elif data_dir and data_dir.startswith("~"):
        data_dir = os.path.expanduser(data_dir)
    if data_dir == data_cfg.get("data_dir"):
        return data_cfg
    data_cfg = data_cfg.copy_and_resolve_references()
    data_cfg.data_dir = data_dir
    return data_cfg


def main(argv) -> None:
    from absl import flags

    del argv
    f = flags.FLAGS
    generate(
        f.out,
        train_images=f.train_images,
        test_images=f.test_images,
        size=f.size,
        max_items=f.max_items,
        seed=f.seed,
    )


if __name__ == "__main__":
    from absl import flags

    from mnv2_tf import cli

    flags.DEFINE_string("out", None, "Output folder.", required=True)
    flags.DEFINE_integer("train_images", 12000, "Training canvases.")
    flags.DEFINE_integer("test_images", 1000, "Test canvases.")
    flags.DEFINE_integer("size", 192, "Canvas side in pixels.")
    flags.DEFINE_integer("max_items", 4, "Items per canvas, at most.")
    flags.DEFINE_integer("seed", 0, "Random seed.")
    cli.run(main)
