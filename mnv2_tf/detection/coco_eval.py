"""COCO box mAP with pycocotools (the reference implementation), from normalized boxes.

Ground truth and detections are given per image in normalized (ymin, xmin, ymax, xmax) and
scaled to the image's original pixels, so COCO's area ranges (small/medium/large) mean what
they mean on COCO. Results: mAP@[.5:.95] ("map"), mAP@.5 ("map50"), mAP@.75, by area, and
the AP@[.5:.95] of every class ("ap/<class>"; -1 where the eval set has no such object).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

STAT_NAMES = (
    "map", "map50", "map75", "map_small", "map_medium", "map_large",
    "ar1", "ar10", "ar100", "ar_small", "ar_medium", "ar_large",
)  # fmt: skip


class CocoMap:
    """Accumulates images; `result` runs COCOeval once over all of them."""

    def __init__(self, class_names: list[str]):
        self.class_names = list(class_names)
        self.images, self.annotations, self.detections = [], [], []

    def add_image(self, size, boxes, classes, det_boxes, det_classes, det_scores) -> None:
        """One image: its original (height, width), true boxes and classes, detections."""
        image_id = len(self.images) + 1
        height, width = (float(v) for v in size)
        self.images.append({"id": image_id, "height": height, "width": width})
        scale = np.array([height, width, height, width])
        for box, c in zip(np.asarray(boxes).reshape(-1, 4), np.asarray(classes), strict=True):
            y0, x0, y1, x1 = box * scale
            self.annotations.append(
                {
                    "id": len(self.annotations) + 1, "image_id": image_id,
                    "category_id": int(c) + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
                }
            )  # fmt: skip
        for box, c, s in zip(
            np.asarray(det_boxes).reshape(-1, 4), np.asarray(det_classes), np.asarray(det_scores),
            strict=True,
        ):  # fmt: skip
            y0, x0, y1, x1 = np.clip(box, 0.0, 1.0) * scale
            self.detections.append([image_id, x0, y0, x1 - x0, y1 - y0, float(s), int(c) + 1])

    def result(self) -> dict[str, float]:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        out = {name: 0.0 for name in STAT_NAMES}
        out["images"] = len(self.images)
        if not self.images:
            return out
        truth = COCO()
        truth.dataset = {
            "images": self.images,
            "annotations": self.annotations,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(self.class_names)],
        }
        with contextlib.redirect_stdout(io.StringIO()):
            truth.createIndex()
            if not self.detections or not self.annotations:
                for name in self.class_names:
                    out[f"ap/{name}"] = -1.0 if not self.annotations else 0.0
                return out
            found = truth.loadRes(np.asarray(self.detections, np.float64))
            evaluation = COCOeval(truth, found, "bbox")
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        out.update(
            {name: max(float(v), 0.0) for name, v in zip(STAT_NAMES, evaluation.stats, strict=True)}
        )
        # precision [T, R, K, A, M]: every IoU threshold and recall, area "all", 100 dets.
        precision = evaluation.eval["precision"][:, :, :, 0, -1]
        for k, name in enumerate(self.class_names):
            p = precision[:, :, k]
            out[f"ap/{name}"] = float(p[p > -1].mean()) if (p > -1).any() else -1.0
        return out
