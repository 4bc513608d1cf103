"""Overlap metrics of binary masks (Dice, IoU, precision, recall, F1) and their confusion counts.

numpy only. Below :mod:`lungseg.inference` (a batch with ground truth scores its cases with them) and
:mod:`lungseg.evaluation` (:mod:`lungseg.evaluation.metrics` re-exports every public name and states the
mask and empty-mask conventions they follow: both masks empty gives ``empty_value``, 1.0 by default; a
zero denominator for one of them only gives 0.0).
"""

from __future__ import annotations

import numpy as np

from lungseg.errors import DataValidationError


# --------------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------------
def as_binary(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    """Return ``mask`` as a boolean array (non-zero is foreground), refusing non-binary float arrays."""
    arr = np.asarray(mask)
    if arr.dtype == bool:
        return arr
    if np.issubdtype(arr.dtype, np.integer):
        return arr != 0
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all((arr == 0) | (arr == 1)):
            raise DataValidationError(
                f"{name} is a float array with values other than 0 and 1 (probabilities?); "
                "threshold it into a binary mask first"
            )
        return arr != 0
    raise DataValidationError(f"{name} has dtype {arr.dtype}, expected a bool, integer or 0/1 float mask")


def binary_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``pred`` and ``gt`` as boolean masks (:func:`as_binary`) of one shape; else DataValidationError."""
    p = as_binary(pred, "prediction")
    g = as_binary(gt, "ground truth")
    if p.shape != g.shape:
        raise DataValidationError(f"prediction shape {p.shape} differs from ground-truth shape {g.shape}")
    return p, g


# --------------------------------------------------------------------------------------------------
# overlap metrics
# --------------------------------------------------------------------------------------------------
def confusion(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int, int]:
    """Confusion counts ``(tp, fp, fn, tn)`` of two binary masks of the same shape."""
    p, g = binary_pair(pred, gt)
    tp = int(np.count_nonzero(p & g))
    n_pred = int(np.count_nonzero(p))
    n_gt = int(np.count_nonzero(g))
    fp = n_pred - tp
    fn = n_gt - tp
    tn = int(p.size) - tp - fp - fn
    return tp, fp, fn, tn


def safe_ratio(num: np.ndarray, den: np.ndarray, both_empty: np.ndarray, empty_value: float) -> np.ndarray:
    """``num / den`` with the module's empty convention (vectorised)."""
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    out = np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape, dtype=float), where=den > 0)
    return np.where(both_empty, float(empty_value), out)


def metrics_from_counts(
    tp: np.ndarray | int, fp: np.ndarray | int, fn: np.ndarray | int, empty_value: float = 1.0
) -> dict[str, np.ndarray]:
    """Dice, IoU, precision, recall and F1 from confusion counts (scalars or arrays, vectorised)."""
    tp, fp, fn = (np.asarray(x, dtype=np.int64) for x in (tp, fp, fn))
    both_empty = (tp + fp + fn) == 0
    return {
        "dice": safe_ratio(2 * tp, 2 * tp + fp + fn, both_empty, empty_value),
        "iou": safe_ratio(tp, tp + fp + fn, both_empty, empty_value),
        "precision": safe_ratio(tp, tp + fp, both_empty, empty_value),
        "recall": safe_ratio(tp, tp + fn, both_empty, empty_value),
        "f1": safe_ratio(2 * tp, 2 * tp + fp + fn, both_empty, empty_value),
    }


def _metric(name: str, pred: np.ndarray, gt: np.ndarray, empty_value: float) -> float:
    tp, fp, fn, _ = confusion(pred, gt)
    return float(metrics_from_counts(tp, fp, fn, empty_value)[name])


def dice(pred: np.ndarray, gt: np.ndarray, empty_value: float = 1.0) -> float:
    """Dice coefficient ``2 tp / (2 tp + fp + fn)``; ``empty_value`` when both masks are empty."""
    return _metric("dice", pred, gt, empty_value)


def iou(pred: np.ndarray, gt: np.ndarray, empty_value: float = 1.0) -> float:
    """Intersection over union (Jaccard) ``tp / (tp + fp + fn)``; ``empty_value`` when both are empty."""
    return _metric("iou", pred, gt, empty_value)


def precision(pred: np.ndarray, gt: np.ndarray, empty_value: float = 1.0) -> float:
    """Precision ``tp / (tp + fp)``; ``empty_value`` when both are empty, 0.0 when only pred is empty."""
    return _metric("precision", pred, gt, empty_value)


def recall(pred: np.ndarray, gt: np.ndarray, empty_value: float = 1.0) -> float:
    """Recall (sensitivity) ``tp / (tp + fn)``; ``empty_value`` when both are empty, 0.0 when only gt is."""
    return _metric("recall", pred, gt, empty_value)


def f1(pred: np.ndarray, gt: np.ndarray, empty_value: float = 1.0) -> float:
    """F1 score, the harmonic mean of precision and recall (equal to Dice for binary masks)."""
    return _metric("f1", pred, gt, empty_value)
