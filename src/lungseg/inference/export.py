"""The research export of a segmentation: the lesion table and the ground-truth score tables.

**Lesions** (:func:`lesion_table`, ``lesions.csv`` and report.json ``lesions``): each lesion is one
connected component of the predicted infection mask in 3D, 26-connected (voxels touching by a face, an
edge or a corner; :func:`lungseg.imaging.masks.label_components`), so one joined region is one lesion
however far it reaches. Ordered largest first (``id`` 1 is the largest). Columns:

* ``voxels``, ``volume_ml`` (None for a single slice or a slab, as the report's volumes);
* ``centroid_z``, ``centroid_y``, ``centroid_x``: the centroid in voxels of the canonical (z, y, x)
  grid (z = axial slice from inferior to superior, as ``overlays/slice_XXX.png`` counts it; y from
  anterior; x from the patient's right);
* ``centroid_i``, ``centroid_j``, ``centroid_k``: the same point in voxels of the input's own grid
  (the axes of the written NIfTI masks);
* ``centroid_x_mm``, ``centroid_y_mm``, ``centroid_z_mm``: the same point in scanner coordinates
  (the NIfTI affine's RAS+ world, mm; with ``--spacing``, on the overriding voxel size);
* ``slice_first``, ``slice_last``: the axial slices (canonical z) it spans;
* ``lung``: ``left``, ``right`` or ``both`` (the predicted lung labels under its voxels);
* ``mean_hu``: its mean intensity in HU where the input is HU, else empty.

**Ground-truth scores** (:func:`ground_truth_scores`, ``metrics.csv``; in report.json
``ground_truth_scores`` and ``per_slice_dice``), when a batch's ``metadata.csv`` gives masks: per task
the Dice, IoU, precision and recall of the whole volume (``region`` ``all``, the summary's
``<task>_dice`` / ``<task>_iou``), of each lung (``left`` / ``right``: the lung task compares the
predicted left lung, label 1, with the ground truth's left lung; the infection task compares the
infection inside each ground-truth lung; only when the ground truth's lung mask has left/right labels),
and of each axial slice (``slice`` = canonical z; only slices where the prediction or the ground truth
holds the task: elsewhere Dice is undefined). Conventions of :mod:`lungseg.imaging.overlap`: both masks
empty gives 1.0.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

LESIONS_FILE = "lesions.csv"
METRICS_FILE = "metrics.csv"
LESION_COLUMNS = (
    "id", "voxels", "volume_ml", "centroid_z", "centroid_y", "centroid_x", "centroid_i", "centroid_j", "centroid_k",
    "centroid_x_mm", "centroid_y_mm", "centroid_z_mm", "slice_first", "slice_last", "lung", "mean_hu",
)
METRIC_TABLE_COLUMNS = ("task", "region", "slice", "dice", "iou", "precision", "recall", "predicted_voxels",
                        "true_voxels")
#: Significant digits of the floats written to report.json and the CSV files (no float noise).
FLOAT_DIGITS = 10


def tidy(value: Any, digits: int = FLOAT_DIGITS) -> Any:
    """``value`` with every float rounded to ``digits`` significant digits (828.2860000000001 ->
    828.286), NaN and infinities as None; numpy scalars become Python numbers. Dicts, lists and
    tuples are walked."""
    if isinstance(value, Mapping):
        return {k: tidy(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [tidy(v, digits) for v in value]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return None if not math.isfinite(v) else float(f"{v:.{digits}g}")
    return value


def figure_spacing(spacing) -> tuple[float, ...]:
    """A voxel size as the figures use it: each value as the shortest decimal of its float32 (a NIfTI
    header stores pixdim as float32, so 0.7 mm reads back as 0.699999988079071 and every ml figure would
    carry that noise: 0.7 mm gives 0.7). Changes a float64 value by under 1e-7 of itself."""
    return tuple(float(str(np.float32(float(s)))) for s in spacing)


# ------------------------------------------------------------------------------------------ lesions


def world_affine(volume) -> np.ndarray:
    """The voxel-to-scanner affine of the input's own grid, on the voxel size the figures use (the
    ``--spacing`` override's, ``volume.meta["affine_mm"]``, when given; else ``volume.affine`` itself)."""
    affine = (getattr(volume, "meta", None) or {}).get("affine_mm")
    return volume.affine if affine is None else np.asarray(affine, dtype=float)


def lesion_components(infection: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The lesions of an infection mask as :func:`lesion_table` numbers them: ``(labels, sizes, order)``,
    where ``labels`` are the 26-connected components (:func:`lungseg.imaging.masks.label_components`),
    ``sizes[k]`` the voxels of component ``k`` and ``order[i]`` the component of lesion ``id`` i + 1
    (largest first, ties by component number). The web UI steps through them in this order."""
    from lungseg.imaging.masks import label_components

    labels, sizes = label_components(np.asarray(infection) > 0, connectivity=3)  # one joined region, one lesion
    order = sorted(range(1, int(sizes.size)), key=lambda i: (-int(sizes[i]), i))
    return labels, sizes, order


def lesion_table(volume, seg, volumes_in_ml: bool = True) -> list[dict[str, Any]]:
    """The lesions of ``seg.infection`` (see the module docstring), largest first.

    Args:
        volume: the input :class:`lungseg.volume.Volume` (canonical grid of ``seg``).
        seg: its :class:`lungseg.inference.segment.Segmentation`.
        volumes_in_ml: False for a single slice or a slab (``volume_ml`` left empty).
    """
    import nibabel.orientations as nio
    from scipy import ndimage

    infected = np.asarray(seg.infection) > 0
    if not infected.any():
        return []
    labels, sizes, order = lesion_components(infected)
    n = int(sizes.size - 1)
    index = np.arange(1, n + 1)
    lungs = np.asarray(seg.lung_labels)
    left = np.bincount(labels[lungs == 1], minlength=n + 1)
    right = np.bincount(labels[lungs == 2], minlength=n + 1)
    centroids = ndimage.center_of_mass(infected, labels, index)
    boxes = ndimage.find_objects(labels)
    hu = getattr(seg, "source_kind", None) == "hu"
    means = ndimage.mean(np.asarray(volume.array, dtype=np.float64), labels, index) if hu else None
    spacing = figure_spacing(volume.spacing)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    to_file = nio.inv_ornt_aff(np.asarray(volume.ornt), tuple(volume.shape[:3]))  # canonical (x, y, z) -> file ijk
    world = np.asarray(world_affine(volume), dtype=float)
    rows = []
    for k in order:
        cz, cy, cx = (float(c) for c in centroids[k - 1])
        ijk = to_file @ np.array([cx, cy, cz, 1.0])
        xyz = world @ ijk
        side = ("both" if left[k] and right[k] else "left" if left[k] else "right" if right[k] else "none")
        rows.append({
            "id": len(rows) + 1,
            "voxels": int(sizes[k]),
            "volume_ml": int(sizes[k]) * voxel_ml if volumes_in_ml else None,
            "centroid_z": cz, "centroid_y": cy, "centroid_x": cx,
            "centroid_i": float(ijk[0]), "centroid_j": float(ijk[1]), "centroid_k": float(ijk[2]),
            "centroid_x_mm": float(xyz[0]), "centroid_y_mm": float(xyz[1]), "centroid_z_mm": float(xyz[2]),
            "slice_first": int(boxes[k - 1][0].start), "slice_last": int(boxes[k - 1][0].stop - 1),
            "lung": side,
            "mean_hu": float(means[k - 1]) if means is not None else None,
        })
    return [tidy(r) for r in rows]


# ------------------------------------------------------------------------------------- ground truth


def ground_truth_sides(lung_truth: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The ground truth's left and right lung (boolean) from a lung mask's labels (1 left, 2 right), with
    infection (label 3, where the mask is a label map) given to the side of the midline between the two
    lungs' centres in its slice (canonical grid: the left lung has the larger column index). None when
    the mask has no left/right labels (a binary lung mask). The web UI's ``gt_sides`` calls it."""
    if lung_truth is None:
        return None
    gt = np.asarray(lung_truth)
    if not (np.any(gt == 1) and np.any(gt == 2)):
        return None
    left, right = gt == 1, gt == 2
    cols = np.arange(gt.shape[2])
    whole_mid = (np.nonzero(left)[2].mean() + np.nonzero(right)[2].mean()) / 2
    for z in np.flatnonzero((gt == 3).reshape(gt.shape[0], -1).any(axis=1)):
        lz, rz = np.nonzero(left[z])[1], np.nonzero(right[z])[1]
        mid = (lz.mean() + rz.mean()) / 2 if lz.size and rz.size else whole_mid
        infected = gt[z] == 3
        left[z] |= infected & (cols[None, :] >= mid)
        right[z] |= infected & (cols[None, :] < mid)
    return left, right


def _scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    from lungseg.imaging import overlap

    return {"dice": float(overlap.dice(pred, truth)), "iou": float(overlap.iou(pred, truth)),
            "precision": float(overlap.precision(pred, truth)), "recall": float(overlap.recall(pred, truth)),
            "predicted_voxels": int(np.count_nonzero(pred)), "true_voxels": int(np.count_nonzero(truth))}


def _per_slice(pred: np.ndarray, truth: np.ndarray) -> list[dict[str, Any]]:
    n = pred.shape[0]
    p = np.count_nonzero(pred.reshape(n, -1), axis=1)
    t = np.count_nonzero(truth.reshape(n, -1), axis=1)
    tp = np.count_nonzero((pred & truth).reshape(n, -1), axis=1)
    rows = []
    for z in np.flatnonzero((p + t) > 0):
        rows.append({"slice": int(z), "dice": 2.0 * tp[z] / (p[z] + t[z]), "iou": tp[z] / (p[z] + t[z] - tp[z]),
                     "precision": tp[z] / p[z] if p[z] else 0.0, "recall": tp[z] / t[z] if t[z] else 0.0,
                     "predicted_voxels": int(p[z]), "true_voxels": int(t[z])})
    return rows


def ground_truth_scores(seg, truths: Mapping[str, np.ndarray], lung_labels: np.ndarray | None = None) -> dict:
    """The ground-truth score tables of a segmentation (see the module docstring).

    Args:
        seg: the :class:`~lungseg.inference.segment.Segmentation`.
        truths: ``{task: boolean ground truth}`` of the tasks scored (canonical grid).
        lung_labels: the ground truth's lung mask as read (labels 1 left / 2 right, maybe 3), for the
            per-lung rows; None for none.

    Returns:
        ``{"ground_truth_scores": [rows], "per_slice_dice": {task: [Dice or None per slice]}}``; each row
        holds :data:`METRIC_TABLE_COLUMNS`.
    """
    from lungseg.inference.ground_truth import predicted

    sides = ground_truth_sides(lung_labels)
    rows: list[dict[str, Any]] = []
    per_slice: dict[str, list] = {}
    lungs = np.asarray(seg.lung_labels)
    for task, truth in truths.items():
        truth = np.asarray(truth, dtype=bool)
        pred = predicted(seg, task)
        rows.append({"task": task, "region": "all", "slice": None, **_scores(pred, truth)})
        if sides is not None:
            for name, label, side in (("left", 1, sides[0]), ("right", 2, sides[1])):
                if task == "lung":
                    rows.append({"task": task, "region": name, "slice": None, **_scores(lungs == label, side)})
                else:
                    rows.append({"task": task, "region": name, "slice": None, **_scores(pred & side, truth & side)})
        slices = _per_slice(pred, truth)
        rows += [{"task": task, "region": "all", **r} for r in slices]
        dice_of = {r["slice"]: r["dice"] for r in slices}
        per_slice[task] = [dice_of.get(z) for z in range(pred.shape[0])]
    return tidy({"ground_truth_scores": rows, "per_slice_dice": per_slice})


# --------------------------------------------------------------------------------------------- CSV


def write_csv(path: Path, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> Path:
    """Write ``rows`` (dicts) with ``columns`` as a CSV file: None as an empty cell, floats tidied."""
    with Path(path).open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in tidy(dict(row)).items()})
    return Path(path)
