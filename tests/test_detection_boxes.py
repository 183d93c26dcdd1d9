"""SSD's anchors, box coder, matcher, loss and post-process, checked by hand."""

import math

import numpy as np
import pytest
import tensorflow as tf

from mnv2_tf.detection import boxes, coco_eval, loss, postprocess


def test_ssd_300_has_1917_anchors_on_maps_19_10_5_3_2_1():
    sizes = boxes.feature_map_sizes(300)
    assert sizes == [19, 10, 5, 3, 2, 1]
    # 3 boxes per position in the lowest layer, 6 elsewhere.
    assert boxes.anchors_per_location(6) == [3, 6, 6, 6, 6, 6]
    assert 19 * 19 * 3 + (10 * 10 + 5 * 5 + 3 * 3 + 2 * 2 + 1) * 6 == 1917
    assert boxes.ssd_anchors(sizes).shape == (1917, 4)
    # 6 anchors in the lowest layer too: 1917 + 19 * 19 * 3
    assert boxes.anchors_per_location(6, reduce_boxes_in_lowest_layer=False) == [6] * 6
    assert len(boxes.ssd_anchors(sizes, reduce_boxes_in_lowest_layer=False)) == 1917 + 1083


def test_anchor_shapes_and_centres_by_hand():
    anchors = boxes.ssd_anchors([19, 10, 5, 3, 2, 1])
    # First position of the lowest layer: scale 0.1 square, then scale 0.2 at ratios 2, 1/2.
    c = 0.5 / 19
    np.testing.assert_allclose(anchors[0], [c, c, 0.1, 0.1], atol=1e-6)
    np.testing.assert_allclose(anchors[1], [c, c, 0.2 / math.sqrt(2), 0.2 * math.sqrt(2)], 1e-6)
    np.testing.assert_allclose(anchors[2], [c, c, 0.2 * math.sqrt(2), 0.2 / math.sqrt(2)], 1e-6)
    # Second position: one column right.
    np.testing.assert_allclose(anchors[3, :2], [c, 1.5 / 19], atol=1e-6)
    # Layer 2 (10x10) starts after 1083 anchors: scale 0.35 (0.2 + 0.75/5), ratios 1, 2, 1/2,
    # 3, 1/3, then the interpolated sqrt(0.35 * 0.5) square.
    layer = anchors[1083:1089]
    np.testing.assert_allclose(layer[:, :2], [[0.05, 0.05]] * 6, atol=1e-6)
    np.testing.assert_allclose(layer[0, 2:], [0.35, 0.35], atol=1e-6)
    np.testing.assert_allclose(layer[3, 2:], [0.35 / math.sqrt(3), 0.35 * math.sqrt(3)], 1e-6)
    np.testing.assert_allclose(layer[5, 2:], [math.sqrt(0.35 * 0.5)] * 2, atol=1e-6)
    # The last anchor: the 1x1 map's centre, scale sqrt(0.95 * 1.0).
    np.testing.assert_allclose(anchors[-1], [0.5, 0.5, math.sqrt(0.95), math.sqrt(0.95)], 1e-6)


def test_box_coder_round_trip_and_known_codes():
    rng = np.random.default_rng(0)
    anchors = boxes.ssd_anchors([4, 2, 1])
    centre = rng.uniform(0.1, 0.9, (len(anchors), 2))
    size = rng.uniform(0.02, 0.8, (len(anchors), 2))
    corner = np.concatenate([centre - size / 2, centre + size / 2], 1).astype(np.float32)
    codes = boxes.encode(corner, anchors)
    np.testing.assert_allclose(boxes.decode(codes, anchors), corner, atol=1e-5)
    # A box equal to its anchor codes to zeros; twice as tall: th = 5 log 2; shifted by
    # half a height: ty = 10 * 0.5.
    a = anchors[:1]
    same = boxes.center_to_corners(a)
    np.testing.assert_allclose(boxes.encode(same, a), [[0, 0, 0, 0]], atol=1e-5)
    taller = boxes.center_to_corners(a * [1, 1, 2, 1])
    np.testing.assert_allclose(boxes.encode(taller, a), [[0, 0, 5 * math.log(2), 0]], atol=1e-5)
    shifted = boxes.center_to_corners(a + np.array([a[0, 2] / 2, 0, 0, 0]))
    np.testing.assert_allclose(boxes.encode(shifted, a), [[5, 0, 0, 0]], atol=1e-5)


def test_matcher_thresholds_forces_a_match_per_box_and_ignores_padding():
    anchors = boxes.corners_to_center(
        [
            [0.0, 0.0, 0.5, 0.5],  # 0: equals box A
            [0.0, 0.0, 0.5, 0.6],  # 1: IoU 0.83 with A
            [0.5, 0.5, 1.0, 1.0],  # 2: far from both
            [0.0, 0.5, 0.2, 0.7],  # 3: best (but IoU 0.2) for the small box B
        ]
    )
    gt = tf.constant(
        [[0.0, 0.0, 0.5, 0.5], [0.0, 0.55, 0.1, 0.65], [0.5, 0.5, 1.0, 1.0]], tf.float32
    )
    valid = tf.constant([True, True, False])  # the third row is padding
    matches = boxes.match(gt, valid, anchors).numpy()
    assert list(matches) == [0, 0, -1, 1]
    cls, codes = boxes.assign_targets(gt, tf.constant([4, 7, 9]), valid, anchors)
    assert list(cls.numpy()) == [5, 5, 0, 8]
    np.testing.assert_allclose(codes.numpy()[2], 0.0)
    np.testing.assert_allclose(codes.numpy()[0], 0.0, atol=1e-5)  # box == anchor


def test_image_without_boxes_is_all_background():
    anchors = boxes.ssd_anchors([2, 1])
    cls, codes = boxes.assign_targets(
        tf.zeros([3, 4]), tf.zeros([3], tf.int64), tf.zeros([3], tf.bool), anchors
    )
    assert not cls.numpy().any() and not codes.numpy().any()


def test_focal_loss_values_and_hard_negative_mining_ratio():
    # One positive anchor of class 1 (target 2), confidently right: tiny focal loss; wrong:
    # large. Background anchors with low scores: near zero.
    targets = tf.constant([[2, 0, 0]])
    right = tf.constant([[[-9.0, 9.0], [-9.0, -9.0], [-9.0, -9.0]]])
    wrong = tf.constant([[[9.0, -9.0], [9.0, 9.0], [-9.0, -9.0]]])
    assert float(tf.reduce_sum(loss.focal(right, targets, 2))) < 1e-6
    assert float(tf.reduce_sum(loss.focal(wrong, targets, 2))) > 5
    # alpha 0.25 on positives, 0.75 on negatives, (1 - p_t)^2: by hand for p = 0.5.
    half = loss.focal(tf.zeros([1, 1, 1]), tf.constant([[1]]), 1)
    np.testing.assert_allclose(half.numpy(), [[0.25 * 0.25 * math.log(2)]], rtol=1e-5)
    # Softmax: 2 positives out of 20 anchors -> 6 hardest negatives also count.
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(size=(1, 20, 3)), tf.float32)
    cls = np.zeros((1, 20), np.int32)
    cls[0, [3, 11]] = [1, 2]
    mined = loss.mined_softmax(logits, tf.constant(cls)).numpy()
    assert (mined > 0).sum() == 2 + 6
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(cls, logits).numpy()
    negatives = np.delete(ce[0], [3, 11])
    kept = np.delete(mined[0], [3, 11])
    assert set(np.nonzero(kept)[0]) == set(np.argsort(-negatives)[:6])


def test_loss_is_normalized_by_matches():
    codes = tf.zeros([2, 4, 4])
    cls = tf.constant([[1, 0, 0, 0], [1, 1, 1, 0]])
    # Every class score right (positives' class at +20, the rest at -20): ~0 focal loss.
    logits = tf.where(tf.one_hot(cls - 1, 3) > 0, 20.0, -20.0)
    box = tf.ones([2, 4, 4])  # smooth L1 of 1 per coordinate: 0.5 * 4 = 2 per positive
    per = loss.per_example([codes, logits], cls, box, "focal", 3).numpy()
    # 4 matches in the batch, 2 per image on average: image losses 2 / 2 and 6 / 2.
    np.testing.assert_allclose(per, [1.0, 3.0], atol=1e-3)
    # A wrong positive adds its focal loss, 0.25 * 20 (p = 0: (1 - p_t)^2 = 1), over 2 too.
    wrong = tf.tensor_scatter_nd_update(logits, [[0, 0, 0]], [-20.0])
    per = loss.per_example([codes, wrong], cls, box, "focal", 3).numpy()
    np.testing.assert_allclose(per, [1.0 + 0.25 * 20 / 2, 3.0], atol=1e-3)


def test_postprocess_decodes_keeps_best_class_and_suppresses_overlaps():
    anchors = boxes.corners_to_center(
        [[0.1, 0.1, 0.5, 0.5], [0.1, 0.1, 0.52, 0.5], [0.6, 0.6, 0.9, 0.9], [0, 0, 1, 1]]
    ).numpy()
    codes = np.zeros((1, 4, 4), np.float32)
    scores = np.array([[[0.1, 0.9], [0.2, 0.8], [0.7, 0.3], [0.0, 0.0]]], np.float32)
    settings = postprocess.Settings(max_detections=3, score_threshold=0.05, iou_threshold=0.5)
    out = postprocess.reference(codes, scores, anchors, settings)
    det_boxes, det_classes, det_scores, count = (np.asarray(v) for v in out)
    assert int(count[0]) == 2  # anchor 1 overlaps anchor 0 (IoU 0.95); anchor 3 scores 0
    np.testing.assert_allclose(det_scores[0], [0.9, 0.7, 0.0], atol=1e-6)
    np.testing.assert_allclose(det_classes[0], [1, 0, 0])
    np.testing.assert_allclose(det_boxes[0, :2], [[0.1, 0.1, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]], 1e-5)
    # A background column first (softmax): the op skips it.
    with_bg = np.concatenate([np.full((1, 4, 1), 0.5, np.float32), scores], -1)
    offset = postprocess.Settings(3, 0.05, 0.5, label_offset=1)
    again = postprocess.reference(codes, with_bg, anchors, offset)
    np.testing.assert_allclose(np.asarray(again[1]), det_classes)


def test_coco_map_is_one_for_perfect_detections_and_drops_when_shifted():
    truth = np.array([[0.1, 0.1, 0.4, 0.5], [0.5, 0.5, 0.9, 0.8]], np.float32)
    classes = np.array([0, 2])
    perfect = coco_eval.CocoMap(["a", "b", "c"])
    shifted = coco_eval.CocoMap(["a", "b", "c"])
    for _ in range(3):
        perfect.add_image((200, 300), truth, classes, truth, classes, [0.9, 0.8])
        shifted.add_image((200, 300), truth, classes, truth + 0.06, classes, [0.9, 0.8])
    result = perfect.result()
    assert result["map"] == pytest.approx(1.0) and result["map50"] == pytest.approx(1.0)
    assert result["ap/a"] == pytest.approx(1.0) and result["ap/b"] == -1.0  # no "b" objects
    worse = shifted.result()
    assert worse["map"] < 0.6 and worse["map50"] == pytest.approx(1.0)
