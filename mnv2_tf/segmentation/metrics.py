"""mIOU as DeepLab defines it: one confusion matrix over the whole eval set.

IoU of class c = TP / (TP + FP + FN) from the matrix summed over every labelled pixel of every
image (not a mean of per-image IoUs); mIOU is the mean over the classes that occur in the
truth or the predictions (a class absent from both has no IoU and is left out, as
`tf.metrics.mean_iou` does); pixels labelled 255 (ignore) are not counted, whatever is
predicted there. Pixel accuracy: the matrix's trace over its sum.
"""

from __future__ import annotations

import numpy as np

IGNORE = 255


class ConfusionMatrix:
    """Accumulates [truth, prediction] pixel counts of `num_classes` classes."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes), np.int64)

    def update(self, truth, prediction) -> None:
        """`truth` and `prediction`: integer arrays of the same shape (any batch layout)."""
        truth = np.asarray(truth).reshape(-1).astype(np.int64)
        prediction = np.asarray(prediction).reshape(-1).astype(np.int64)
        keep = (truth != IGNORE) & (truth < self.num_classes)
        if (prediction[keep] >= self.num_classes).any():
            raise ValueError(f"prediction outside 0..{self.num_classes - 1}")
        index = truth[keep] * self.num_classes + prediction[keep]
        self.matrix += np.bincount(index, minlength=self.num_classes**2).reshape(
            self.num_classes, self.num_classes
        )

    def merge(self, other: ConfusionMatrix) -> None:
        self.matrix += other.matrix

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for a class absent from truth and predictions."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    def miou(self) -> float:
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else 0.0

    def result(self, class_names: list[str] | None = None) -> dict[str, float]:
        """miou, pixel_accuracy, pixels, and iou/<class> of every class that has an IoU."""
        names = class_names or [str(i) for i in range(self.num_classes)]
        out = {
            "miou": self.miou(),
            "pixel_accuracy": self.pixel_accuracy(),
            "pixels": int(self.matrix.sum()),
        }
        for name, value in zip(names, self.iou(), strict=True):
            if np.isfinite(value):
                out[f"iou/{name}"] = float(value)
        return out
