"""Segmentation metrics on numpy masks: overlap (Dice, IoU, precision, recall, F1) and surface (HD95, NSD).

Only numpy and ``scipy.ndimage`` are used, so the numbers do not depend on a deep-learning backend.

Masks
    Binary masks may be ``bool``, any integer dtype (every non-zero value is foreground, so a label map
    counts as the union of its labels) or a float array holding only 0 and 1 (a float array with other
    values, e.g. probabilities, is refused: threshold it first). Any dimensionality works (2D slice,
    3D volume); ``pred`` and ``gt`` must have the same shape.

Empty-mask convention (used by every overlap metric, per slice or per volume)
    * Prediction and ground truth both empty: perfect agreement, every metric equals ``empty_value``
      (1.0 by default).
    * A denominator of 0 for one of them only, e.g. precision when nothing is predicted but the ground
      truth is not empty, or recall when the ground truth is empty but something is predicted: 0.0.
    Dice and IoU have a zero denominator only when both masks are empty. F1 is computed from the
    confusion counts as ``2 tp / (2 tp + fp + fn)``, which equals the harmonic mean of precision and
    recall and, for binary masks, Dice.

Surface metrics
    The surface of a mask is ``mask XOR binary_erosion(mask)`` with face connectivity; voxels on the
    array border count as surface (the array is treated as zero-padded). Distances are Euclidean in mm,
    using the voxel ``spacing`` given in the array's axis order (``(sz, sy, sx)`` for canonical volumes),
    and are measured between surface-voxel centres with ``scipy.ndimage.distance_transform_edt``.

    * ``hd95``: the maximum of the two directed 95th percentiles, ``max(P95(d(S_pred→S_gt)),
      P95(d(S_gt→S_pred)))``, as MONAI's ``compute_hausdorff_distance(percentile=95)`` does (``method=
      "pooled"`` gives medpy's 95th percentile of the pooled distances instead). Percentiles use numpy's
      default linear interpolation. Both empty: 0.0; exactly one empty: ``inf``.
    * ``normalized_surface_dice``: voxel-count version of the NSD of the COVID-19-CT-Seg benchmark /
      DeepMind ``surface-distance``: ``(#{p in S_pred: d(p, S_gt) <= tol} + #{q in S_gt: d(q, S_pred) <=
      tol}) / (|S_pred| + |S_gt|)``. Both empty: 1.0; exactly one empty: 0.0.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from lungseg.errors import ConfigError, DataValidationError
from lungseg.imaging.masks import bounding_box
from lungseg.imaging.overlap import (  # noqa: F401  (the overlap metrics are imported from here too)
    as_binary,
    binary_pair,
    confusion,
    dice,
    f1,
    iou,
    metrics_from_counts,
    precision,
    recall,
)

logger = logging.getLogger(__name__)

#: NSD tolerance in mm per task, as in the COVID-19-CT-Seg benchmark.
NSD_TOLERANCE_MM: dict[str, float] = {"lung": 1.0, "infection": 3.0}

#: Per-slice metric columns produced by :func:`slice_metrics` and averaged by :func:`summarize_slices`.
SLICE_METRICS: tuple[str, ...] = ("dice", "iou", "precision", "recall", "f1")

HD95_METHODS = ("max_directed", "pooled")


def _spacing(spacing: Sequence[float] | None, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim, dtype=float)
    sp = np.asarray(spacing, dtype=float).reshape(-1)
    if sp.size != ndim:
        raise DataValidationError(f"spacing {tuple(sp.tolist())} has {sp.size} values for a {ndim}D mask")
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise DataValidationError(f"spacing {tuple(sp.tolist())} must hold positive finite values (mm)")
    return sp


# --------------------------------------------------------------------------------------------------
# per-slice metrics
# --------------------------------------------------------------------------------------------------
def slice_metrics(pred: np.ndarray, gt: np.ndarray, empty_value: float = 1.0) -> pd.DataFrame:
    """Overlap metrics of every slice of two ``(N, H, W)`` stacks, computed in one vectorised pass.

    Returns one row per slice (index 0..N-1) with columns ``dice, iou, precision, recall, f1``
    (empty convention of this module), ``gt_pixels``, ``pred_pixels``, ``both_empty`` (bool) and the
    counts ``tp, fp, fn``. A trailing channel axis of size 1 (``(N, H, W, 1)``) is accepted.
    """
    p, g = binary_pair(pred, gt)
    if p.ndim == 4 and p.shape[-1] == 1:
        p, g = p[..., 0], g[..., 0]
    if p.ndim != 3:
        raise DataValidationError(f"slice_metrics expects (N, H, W) stacks, got shape {p.shape}")
    n = p.shape[0]
    p2 = p.reshape(n, -1)
    g2 = g.reshape(n, -1)
    tp = np.count_nonzero(p2 & g2, axis=1).astype(np.int64)
    n_pred = np.count_nonzero(p2, axis=1).astype(np.int64)
    n_gt = np.count_nonzero(g2, axis=1).astype(np.int64)
    fp = n_pred - tp
    fn = n_gt - tp
    values = metrics_from_counts(tp, fp, fn, empty_value)
    df = pd.DataFrame({name: values[name] for name in SLICE_METRICS})
    df["gt_pixels"] = n_gt
    df["pred_pixels"] = n_pred
    df["both_empty"] = (n_gt == 0) & (n_pred == 0)
    df["tp"] = tp
    df["fp"] = fp
    df["fn"] = fn
    df.index.name = "slice"
    return df


def summarize_slices(df: pd.DataFrame) -> dict[str, float | int]:
    """Summarise a :func:`slice_metrics` table.

    Returns the mean of each metric over all slices (``dice``, ...), the same means over the slices
    whose ground truth is not empty (``dice_nonempty``, ...; NaN when there is none), ``n_slices``,
    ``n_both_empty`` and ``n_nonempty``; when the table holds ``tp, fp, fn`` columns, also the
    dataset-level ("global", pooled-count) ``dice_global`` and ``iou_global``.
    """
    missing = [c for c in (*SLICE_METRICS, "gt_pixels", "both_empty") if c not in df.columns]
    if missing:
        raise DataValidationError(f"slice metrics table lacks the columns {missing}")
    nonempty = df["gt_pixels"].to_numpy() > 0
    out: dict[str, float | int] = {}
    for name in SLICE_METRICS:
        col = df[name].to_numpy(dtype=float)
        out[name] = float(np.mean(col)) if col.size else float("nan")
        out[f"{name}_nonempty"] = float(np.mean(col[nonempty])) if nonempty.any() else float("nan")
    out["n_slices"] = int(len(df))
    out["n_both_empty"] = int(df["both_empty"].to_numpy().sum())
    out["n_nonempty"] = int(nonempty.sum())
    if {"tp", "fp", "fn"}.issubset(df.columns):
        tp, fp, fn = (int(df[c].sum()) for c in ("tp", "fp", "fn"))
        pooled = metrics_from_counts(tp, fp, fn)
        out["dice_global"] = float(pooled["dice"])
        out["iou_global"] = float(pooled["iou"])
    return out


# --------------------------------------------------------------------------------------------------
# surface metrics
# --------------------------------------------------------------------------------------------------
def _crop_to_union(p: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to their joint bounding box and pad one zero voxel on every side.

    Padding with zeros gives exactly the surfaces and distances of the uncropped arrays, whose border
    is treated as background by the erosion.
    """
    box = bounding_box(p | g)  # callers make sure one of the masks is not empty
    return np.pad(p[box], 1), np.pad(g[box], 1)


def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a binary mask: ``mask XOR binary_erosion(mask)`` with face connectivity."""
    m = as_binary(mask)
    if not m.any():
        return np.zeros_like(m)
    structure = ndimage.generate_binary_structure(m.ndim, 1)
    return m ^ ndimage.binary_erosion(m, structure=structure, border_value=0)


def surface_distances(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from each prediction surface voxel to the ground-truth surface, and back.

    Returns ``(d_pred_to_gt, d_gt_to_pred)``, one value per surface voxel of the source mask. When both
    masks are empty both arrays are empty; when exactly one is empty, the distances from the other
    one's surface are ``inf`` and the empty mask's array is empty.
    """
    p, g = binary_pair(pred, gt)
    sp = _spacing(spacing, p.ndim)
    has_p, has_g = bool(p.any()), bool(g.any())
    if not has_p and not has_g:
        return np.zeros(0), np.zeros(0)
    if not has_p or not has_g:
        n_other = int(np.count_nonzero(surface(g if has_g else p)))
        infs = np.full(n_other, np.inf)
        return (infs, np.zeros(0)) if has_p else (np.zeros(0), infs)
    pc, gc = _crop_to_union(p, g)
    sp_surf = surface(pc)
    sg_surf = surface(gc)
    dist_to_g = ndimage.distance_transform_edt(~sg_surf, sampling=sp)
    dist_to_p = ndimage.distance_transform_edt(~sp_surf, sampling=sp)
    return dist_to_g[sp_surf], dist_to_p[sg_surf]


def hd95(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float] | None = None,
    method: str = "max_directed",
) -> float:
    """95th-percentile Hausdorff distance in mm (see the module docstring for the definition).

    ``method="max_directed"`` (default, MONAI) takes the larger of the two directed 95th percentiles;
    ``"pooled"`` (medpy) takes the 95th percentile of both directions' distances together.
    Both masks empty: 0.0; exactly one empty: ``inf``.
    """
    if method not in HD95_METHODS:
        raise ConfigError(f"unknown hd95 method {method!r}; expected one of {HD95_METHODS}")
    d_pg, d_gp = surface_distances(pred, gt, spacing)
    return _hd95_from_distances(d_pg, d_gp, method)


def normalized_surface_dice(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None, tolerance_mm: float
) -> float:
    """Normalised surface Dice at ``tolerance_mm``; a surface voxel counts when ``d <= tolerance_mm``.

    Both masks empty: 1.0; exactly one empty: 0.0.
    """
    _check_tolerance(tolerance_mm)
    d_pg, d_gp = surface_distances(pred, gt, spacing)
    return _nsd_from_distances(d_pg, d_gp, tolerance_mm)


def volume_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float],
    tolerance_mm: float,
    *,
    case: str | None = None,
) -> dict[str, float]:
    """All metrics of one case on its own grid.

    Returns ``dice, iou, precision, recall, f1, nsd, hd95, gt_volume_ml, pred_volume_ml,
    volume_error_ml`` (pred minus gt). Volumes are voxel counts times the voxel volume (mm^3) / 1000.
    Errors name ``case`` when it is given.
    """
    _check_tolerance(tolerance_mm)
    try:
        p, g = binary_pair(pred, gt)
        sp = _spacing(spacing, p.ndim)
    except DataValidationError as exc:
        raise DataValidationError(exc.problem, case=case) from exc
    tp, fp, fn, _ = confusion(p, g)
    overlap = metrics_from_counts(tp, fp, fn)
    d_pg, d_gp = surface_distances(p, g, sp)
    voxel_ml = float(np.prod(sp)) / 1000.0
    gt_ml = (tp + fn) * voxel_ml
    pred_ml = (tp + fp) * voxel_ml
    out = {name: float(v) for name, v in overlap.items()}
    out["nsd"] = _nsd_from_distances(d_pg, d_gp, tolerance_mm)
    out["hd95"] = _hd95_from_distances(d_pg, d_gp)
    out["gt_volume_ml"] = gt_ml
    out["pred_volume_ml"] = pred_ml
    out["volume_error_ml"] = pred_ml - gt_ml
    return out


def _check_tolerance(tolerance_mm: float) -> None:
    if not np.isfinite(tolerance_mm) or tolerance_mm < 0:
        raise ConfigError(f"NSD tolerance_mm must be a finite value >= 0, got {tolerance_mm}")


def _nsd_from_distances(d_pg: np.ndarray, d_gp: np.ndarray, tolerance_mm: float) -> float:
    """NSD from the two directed surface-distance arrays (module convention for empty masks)."""
    _check_tolerance(tolerance_mm)
    total = d_pg.size + d_gp.size
    if total == 0:
        return 1.0
    if d_pg.size == 0 or d_gp.size == 0:
        return 0.0
    within = int(np.count_nonzero(d_pg <= tolerance_mm)) + int(np.count_nonzero(d_gp <= tolerance_mm))
    return within / total


def _hd95_from_distances(d_pg: np.ndarray, d_gp: np.ndarray, method: str = "max_directed") -> float:
    """HD95 from the two directed surface-distance arrays (module convention for empty masks)."""
    if method not in HD95_METHODS:
        raise ConfigError(f"unknown hd95 method {method!r}; expected one of {HD95_METHODS}")
    if d_pg.size == 0 and d_gp.size == 0:
        return 0.0
    if d_pg.size == 0 or d_gp.size == 0:
        return float("inf")
    if method == "pooled":
        return float(np.percentile(np.concatenate([d_pg, d_gp]), 95))
    return float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)))
