"""SSD's anchors, box coder and matcher, as the TF Object Detection API defines them.

- `ssd_anchors`: the multiple-grid anchor generator of SSD (`create_ssd_anchors`): one grid
  per feature map, scales spaced linearly from `min_scale` to `max_scale`, aspect ratios
  1, 2, 1/2, 3, 1/3 plus one box of the scale between this layer's and the next's, and 3
  boxes (scale 0.1 at ratio 1, and ratios 2 and 1/2) in the lowest layer. 300 px inputs
  give maps of 19, 10, 5, 3, 2, 1 and 19*19*3 + (100+25+9+4+1)*6 = 1917 anchors.
- `encode`/`decode`: the Faster R-CNN box coder with scale factors (10, 10, 5, 5):
  ty = 10 (y - ya) / ha, tx = 10 (x - xa) / wa, th = 5 log(h / ha), tw = 5 log(w / wa).
- `match`: argmax matching at IoU 0.5, every ground-truth box forced to its best anchor.

Boxes are normalized (ymin, xmin, ymax, xmax); anchors are held as (ycenter, xcenter,
height, width), the layout TFLite's detection post-process op takes. Everything here is
TensorFlow (it runs per example in tf.data); numpy inputs work too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

SCALE_FACTORS = (10.0, 10.0, 5.0, 5.0)  # y, x, h, w
ASPECT_RATIOS = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)
MATCH_THRESHOLD = 0.5
_EPSILON = 1e-8


def feature_map_sizes(input_size: int, num_layers: int = 6, first_stride: int = 16) -> list[int]:
    """The sizes of SSD's feature maps for a square input ('same' padding: each map is the
    ceiling of half the previous one)."""
    size = math.ceil(input_size / first_stride)
    sizes = [size]
    for _ in range(num_layers - 1):
        size = math.ceil(size / 2)
        sizes.append(size)
    return sizes


def anchors_per_location(
    num_layers: int = 6,
    aspect_ratios: Sequence[float] = ASPECT_RATIOS,
    reduce_boxes_in_lowest_layer: bool = True,
) -> list[int]:
    """How many anchors each feature map has per position."""
    per = len(aspect_ratios) + 1
    return [3 if reduce_boxes_in_lowest_layer and i == 0 else per for i in range(num_layers)]


def ssd_anchors(
    sizes: Sequence[int],
    min_scale: float = 0.2,
    max_scale: float = 0.95,
    aspect_ratios: Sequence[float] = ASPECT_RATIOS,
    reduce_boxes_in_lowest_layer: bool = True,
) -> np.ndarray:
    """The anchors of feature maps of `sizes` (square), float32 [A, 4] (ycenter, xcenter,
    height, width), ordered map by map, then row, column, anchor: the order in which the
    box predictors' outputs are reshaped."""
    num_layers = len(sizes)
    if num_layers == 1:
        scales = [min_scale, 1.0]
    else:
        scales = [
            min_scale + (max_scale - min_scale) * i / (num_layers - 1) for i in range(num_layers)
        ] + [1.0]
    out = []
    for layer, size in enumerate(sizes):
        scale, next_scale = scales[layer], scales[layer + 1]
        if layer == 0 and reduce_boxes_in_lowest_layer:
            shapes = [(0.1, 1.0), (scale, 2.0), (scale, 0.5)]
        else:
            shapes = [(scale, ar) for ar in aspect_ratios]
            shapes.append((math.sqrt(scale * next_scale), 1.0))
        heights = np.array([s / math.sqrt(ar) for s, ar in shapes])
        widths = np.array([s * math.sqrt(ar) for s, ar in shapes])
        centers = (np.arange(size) + 0.5) / size
        cy, cx = np.meshgrid(centers, centers, indexing="ij")
        k = len(shapes)
        grid = np.stack(
            [
                np.repeat(cy.reshape(-1, 1), k, 1),
                np.repeat(cx.reshape(-1, 1), k, 1),
                np.broadcast_to(heights, (size * size, k)),
                np.broadcast_to(widths, (size * size, k)),
            ],
            axis=-1,
        )
        out.append(grid.reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)


def corners_to_center(boxes):
    """(ymin, xmin, ymax, xmax) -> (ycenter, xcenter, height, width)."""
    ymin, xmin, ymax, xmax = tf.unstack(tf.convert_to_tensor(boxes, tf.float32), axis=-1)
    return tf.stack([(ymin + ymax) / 2, (xmin + xmax) / 2, ymax - ymin, xmax - xmin], -1)


def center_to_corners(boxes):
    cy, cx, h, w = tf.unstack(tf.convert_to_tensor(boxes, tf.float32), axis=-1)
    return tf.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], -1)


def encode(boxes, anchors) -> tf.Tensor:
    """Corner boxes [..., A, 4] relative to `anchors` [A, 4] (center form) -> codes."""
    box = corners_to_center(boxes)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    ya, xa, ha, wa = tf.unstack(anchors, axis=-1)
    y, x, h, w = tf.unstack(box, axis=-1)
    h = tf.maximum(h, _EPSILON)
    w = tf.maximum(w, _EPSILON)
    sy, sx, sh, sw = SCALE_FACTORS
    return tf.stack(
        [
            sy * (y - ya) / ha,
            sx * (x - xa) / wa,
            sh * tf.math.log(h / ha),
            sw * tf.math.log(w / wa),
        ],
        axis=-1,
    )


def decode(codes, anchors) -> tf.Tensor:
    """The inverse of `encode`: codes [..., A, 4] -> corner boxes."""
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    ya, xa, ha, wa = tf.unstack(anchors, axis=-1)
    ty, tx, th, tw = tf.unstack(tf.convert_to_tensor(codes, tf.float32), axis=-1)
    sy, sx, sh, sw = SCALE_FACTORS
    y = ty / sy * ha + ya
    x = tx / sx * wa + xa
    h = tf.exp(th / sh) * ha
    w = tf.exp(tw / sw) * wa
    return tf.stack([y - h / 2, x - w / 2, y + h / 2, x + w / 2], axis=-1)


def iou(boxes_a, boxes_b) -> tf.Tensor:
    """Pairwise IoU of corner boxes [N, 4] x [M, 4] -> [N, M]."""
    a = tf.convert_to_tensor(boxes_a, tf.float32)[:, None, :]
    b = tf.convert_to_tensor(boxes_b, tf.float32)[None, :, :]
    top = tf.maximum(a[..., 0], b[..., 0])
    left = tf.maximum(a[..., 1], b[..., 1])
    bottom = tf.minimum(a[..., 2], b[..., 2])
    right = tf.minimum(a[..., 3], b[..., 3])
    inter = tf.maximum(bottom - top, 0.0) * tf.maximum(right - left, 0.0)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / tf.maximum(area_a + area_b - inter, _EPSILON)


def match(boxes, valid, anchors, threshold: float = MATCH_THRESHOLD) -> tf.Tensor:
    """Assigns each anchor a ground-truth box: index into `boxes` [N, 4] or -1.

    An anchor takes the box it overlaps most when that IoU is at least `threshold`; then
    each box (where `valid`, bool [N]) takes its best anchor whatever the IoU (the forced
    match: no object goes unlearned for lack of an anchor of its shape), a later box
    winning an anchor two boxes want.
    """
    anchors_corners = center_to_corners(anchors)
    if boxes.shape[0] == 0:
        return tf.fill(tf.shape(anchors_corners)[:1], -1)
    overlaps = iou(boxes, anchors_corners)  # [N, A]
    overlaps = tf.where(valid[:, None], overlaps, -1.0)
    best_box = tf.argmax(overlaps, axis=0, output_type=tf.int32)
    best_iou = tf.reduce_max(overlaps, axis=0)
    matches = tf.where(best_iou >= threshold, best_box, -1)
    best_anchor = tf.argmax(overlaps, axis=1, output_type=tf.int32)  # [N]
    rows = tf.boolean_mask(tf.range(tf.shape(overlaps)[0]), valid)
    forced = tf.boolean_mask(best_anchor, valid)
    return tf.tensor_scatter_nd_update(matches, forced[:, None], rows)


def assign_targets(
    boxes, classes, valid, anchors, threshold: float = MATCH_THRESHOLD
) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-anchor training targets of one image.

    Args:
      boxes: float32 [N, 4] ground-truth corner boxes (normalized).
      classes: int [N], 0-based.
      valid: bool [N]: which rows are boxes (the rest is padding).
      anchors: [A, 4] center form.
      threshold: the matcher's IoU threshold.

    Returns:
      (class targets int32 [A]: 0 for background, class + 1 for a matched anchor;
       box codes float32 [A, 4], zero where unmatched).
    """
    matches = match(boxes, valid, anchors, threshold)
    matched = matches >= 0
    safe = tf.maximum(matches, 0)
    cls = tf.where(matched, tf.gather(tf.cast(classes, tf.int32), safe) + 1, 0)
    codes = encode(tf.gather(boxes, safe), anchors)
    codes = tf.where(matched[:, None], codes, 0.0)
    return cls, codes
