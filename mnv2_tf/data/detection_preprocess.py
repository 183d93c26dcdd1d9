"""Per-example preprocessing of detection data: pixels and boxes move together.

Training (SSD's augmentation, Liu et al. 2016 Section 2.2, as the TF Object Detection API's
`ssd_random_crop` + `random_horizontal_flip`):
  1. random crop with a minimum-IoU constraint: a threshold is drawn from {none (keep the
     whole image), 0.1, 0.3, 0.5, 0.7, 0.9}; of `CROP_TRIALS` windows of 10-100% of the area
     and aspect 1/2-2, the first whose IoU with some box reaches it is taken (else the
     whole image). Boxes whose centre falls outside the window are dropped, the rest clipped
     to it; boxes left without area are dropped;
  2. horizontal flip (p = 0.5);
  3. resize to the model's square input (aspect not kept, as SSD);
  4. photometric jitter: brightness, contrast, saturation, hue.
Evaluation: resize only. Both pad boxes to `max_boxes` rows (`num_boxes` says how many are
real) and keep the image's original `size` (height, width) for COCO's pixel areas; training
examples also carry the per-anchor targets (`cls_targets`, `box_targets`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mnv2_tf.data import preprocess
from mnv2_tf.detection import boxes as box_lib
from mnv2_tf.models.common import Preprocessing

MIN_IOUS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9)  # 0.0: the whole image
CROP_TRIALS = 20
CROP_AREA = (0.1, 1.0)
CROP_ASPECT = (0.5, 2.0)


def random_crop_window(boxes, valid):
    """A crop window (ymin, xmin, ymax, xmax), normalized, by SSD's minimum-IoU rule."""
    min_iou = tf.gather(MIN_IOUS, tf.random.uniform([], 0, len(MIN_IOUS), tf.int32))
    area = tf.random.uniform([CROP_TRIALS], *CROP_AREA)
    log_aspect = tf.random.uniform([CROP_TRIALS], np.log(CROP_ASPECT[0]), np.log(CROP_ASPECT[1]))
    aspect = tf.exp(log_aspect)  # width / height, in normalized units
    h = tf.minimum(tf.sqrt(area / aspect), 1.0)
    w = tf.minimum(tf.sqrt(area * aspect), 1.0)
    y0 = tf.random.uniform([CROP_TRIALS]) * (1.0 - h)
    x0 = tf.random.uniform([CROP_TRIALS]) * (1.0 - w)
    windows = tf.stack([y0, x0, y0 + h, x0 + w], axis=1)
    overlaps = box_lib.iou(windows, boxes)  # [T, N]
    overlaps = tf.where(valid[None, :], overlaps, -1.0)
    best = tf.reduce_max(tf.concat([overlaps, -tf.ones([CROP_TRIALS, 1])], 1), axis=1)
    ok = best >= min_iou
    whole = tf.constant([0.0, 0.0, 1.0, 1.0])
    first = tf.argmax(tf.cast(ok, tf.int32), output_type=tf.int32)
    found = tf.reduce_any(ok) & (min_iou > 0)
    return tf.where(found, windows[first], whole)


def crop_boxes(boxes, classes, window):
    """Boxes (and their classes) seen through `window`: centre inside, clipped, renormalized."""
    cy = (boxes[:, 0] + boxes[:, 2]) / 2
    cx = (boxes[:, 1] + boxes[:, 3]) / 2
    inside = (cy > window[0]) & (cy < window[2]) & (cx > window[1]) & (cx < window[3])
    h, w = window[2] - window[0], window[3] - window[1]
    moved = (boxes - tf.stack([window[0], window[1], window[0], window[1]])) / tf.stack(
        [h, w, h, w]
    )
    moved = tf.clip_by_value(moved, 0.0, 1.0)
    keep = inside & (moved[:, 2] > moved[:, 0]) & (moved[:, 3] > moved[:, 1])
    return tf.boolean_mask(moved, keep), tf.boolean_mask(classes, keep)


def flip_boxes(boxes):
    return tf.stack([boxes[:, 0], 1.0 - boxes[:, 3], boxes[:, 2], 1.0 - boxes[:, 1]], axis=1)


def photometric(image):
    """SSD's colour distortions on a float image in [0, 255]."""
    image = image / 255.0
    image = tf.image.random_brightness(image, 32.0 / 255)
    image = tf.image.random_contrast(image, 0.5, 1.5)
    image = tf.image.random_saturation(image, 0.5, 1.5)
    image = tf.image.random_hue(image, 0.05)
    return tf.clip_by_value(image, 0.0, 1.0) * 255.0


def pad_boxes(boxes, classes, max_boxes: int):
    n = tf.minimum(tf.shape(boxes)[0], max_boxes)
    boxes = tf.pad(boxes[:n], [[0, max_boxes - n], [0, 0]])
    classes = tf.pad(classes[:n], [[0, max_boxes - n]])
    boxes.set_shape([max_boxes, 4])
    classes.set_shape([max_boxes])
    return boxes, classes, n


def augment(image, boxes, classes, size: int, jitter: bool = True):
    """Crop, flip, resize, jitter one uint8 image [H, W, 3] with its boxes: (float image
    [size, size, 3] in [0, 255], boxes, classes)."""
    valid = tf.ones(tf.shape(boxes)[:1], tf.bool)
    window = random_crop_window(boxes, valid)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    top = tf.cast(tf.round(window[0] * shape[0]), tf.int32)
    left = tf.cast(tf.round(window[1] * shape[1]), tf.int32)
    bottom = tf.maximum(tf.cast(tf.round(window[2] * shape[0]), tf.int32), top + 1)
    right = tf.maximum(tf.cast(tf.round(window[3] * shape[1]), tf.int32), left + 1)
    image = image[top:bottom, left:right]
    # The window in the pixels actually kept, so boxes follow the rounded crop exactly.
    window = tf.cast(tf.stack([top, left, bottom, right]), tf.float32) / tf.concat(
        [shape, shape], 0
    )
    boxes, classes = crop_boxes(boxes, classes, window)
    flip = tf.random.uniform([]) < 0.5
    image = tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)
    boxes = tf.cond(flip, lambda: flip_boxes(boxes), lambda: boxes)
    image = tf.image.resize(tf.cast(image, tf.float32), [size, size])
    if jitter:
        image = photometric(image)
    return image, boxes, classes


def make_fn(
    preprocessing: Preprocessing,
    anchors: np.ndarray,
    *,
    training: bool,
    encoded: bool,
    max_boxes: int,
    match_threshold: float = box_lib.MATCH_THRESHOLD,
):
    """The per-example map of a detection source ({"image", "boxes", "classes"})."""
    size = preprocessing.input_size

    def fn(example: dict) -> dict:
        image = preprocess.decode(example["image"], encoded)
        original = tf.shape(image)[:2]
        boxes = tf.reshape(tf.cast(example["boxes"], tf.float32), [-1, 4])
        classes = tf.cast(example["classes"], tf.int64)
        if training:
            image, boxes, classes = augment(image, boxes, classes, size)
        else:
            image = tf.image.resize(tf.cast(image, tf.float32), [size, size])
        image = image * preprocessing.scale + preprocessing.offset
        image.set_shape([size, size, 3])
        padded, padded_classes, n = pad_boxes(boxes, classes, max_boxes)
        out = {
            "image": image,
            "boxes": padded,
            "classes": padded_classes,
            "num_boxes": tf.cast(n, tf.int32),
            "size": tf.cast(original, tf.int32),
        }
        if training:
            valid = tf.range(max_boxes) < n
            out["cls_targets"], out["box_targets"] = box_lib.assign_targets(
                padded, padded_classes, valid, anchors, match_threshold
            )
        return out

    return fn


def blank(max_boxes: int) -> dict:
    """The labels of an eval padding example."""
    return {
        "boxes": tf.zeros([max_boxes, 4]),
        "classes": tf.zeros([max_boxes], tf.int64),
        "num_boxes": tf.constant(0, tf.int32),
        "size": tf.constant([1, 1], tf.int32),
    }
