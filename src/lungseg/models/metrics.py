"""Keras metrics for binary segmentation: Dice coefficient and IoU (Jaccard), keras.ops only.

Both accumulate pixel counts over every batch of an epoch, so the value is the pooled ("micro")
score of the epoch, not a mean of per-batch scores. Predictions are binarised with
``p >= threshold`` (as at inference); ``threshold=None`` gives the soft version. When neither
the ground truth nor the prediction has a positive pixel the score is 1.
"""

from __future__ import annotations

import keras
from keras import ops

_register = keras.saving.register_keras_serializable(package="lungseg")


class _OverlapMetric(keras.metrics.Metric):
    def __init__(self, threshold: float | None = 0.5, name: str = "overlap", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.threshold = None if threshold is None else float(threshold)
        self.intersection = self.add_variable(shape=(), initializer="zeros", name="intersection")
        self.true_sum = self.add_variable(shape=(), initializer="zeros", name="true_sum")
        self.pred_sum = self.add_variable(shape=(), initializer="zeros", name="pred_sum")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(ops.convert_to_tensor(y_true) >= 0.5, self.dtype)
        if self.threshold is None:
            y_pred = ops.cast(y_pred, self.dtype)
        else:
            y_pred = ops.cast(y_pred >= self.threshold, self.dtype)
        if sample_weight is not None:
            w = ops.cast(ops.convert_to_tensor(sample_weight), self.dtype)
            while len(w.shape) < len(y_pred.shape):
                w = ops.expand_dims(w, -1)
            y_true, y_pred = y_true * w, y_pred * w
        self.intersection.assign_add(ops.sum(y_true * y_pred))
        self.true_sum.assign_add(ops.sum(y_true))
        self.pred_sum.assign_add(ops.sum(y_pred))

    def reset_state(self):
        for var in (self.intersection, self.true_sum, self.pred_sum):
            var.assign(ops.zeros((), dtype=self.dtype))

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}


@_register
class DiceCoefficient(_OverlapMetric):
    """Dice = 2 |A ∩ B| / (|A| + |B|), pooled over the epoch."""

    def __init__(self, threshold: float | None = 0.5, name: str = "dice", dtype=None):
        super().__init__(threshold=threshold, name=name, dtype=dtype)

    def result(self):
        denom = self.true_sum + self.pred_sum
        safe = ops.maximum(denom, 1e-12)
        return ops.where(denom > 0, 2.0 * self.intersection / safe, ops.ones_like(denom))


@_register
class IoUScore(_OverlapMetric):
    """IoU = |A ∩ B| / |A ∪ B|, pooled over the epoch."""

    def __init__(self, threshold: float | None = 0.5, name: str = "iou", dtype=None):
        super().__init__(threshold=threshold, name=name, dtype=dtype)

    def result(self):
        union = self.true_sum + self.pred_sum - self.intersection
        safe = ops.maximum(union, 1e-12)
        return ops.where(union > 0, self.intersection / safe, ops.ones_like(union))


def get_metrics(threshold: float = 0.5) -> list[keras.metrics.Metric]:
    """Fresh ``[DiceCoefficient, IoUScore]`` (history keys ``dice``, ``iou``, ``val_dice``, ``val_iou``)."""
    return [DiceCoefficient(threshold=threshold), IoUScore(threshold=threshold)]
