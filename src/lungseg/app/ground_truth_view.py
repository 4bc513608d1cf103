"""The "Evaluation" section of the web UI: an uploaded ground-truth mask against the prediction.

The mask is read, checked and interpreted by :mod:`lungseg.inference.ground_truth`, the reader the CLI
batch uses too (see its docstring for the rule): a PNG for a 2D image, a NIfTI for a volume, on the
image's canonical grid and of its shape; a label map (it holds a 2 or a 3) gives lung = labels 1-3 and
infection = label 3; a binary mask (0/1 or 0/255) is the mask of one task, and the user must say which:
it is never assumed (an infection mask scored as lungs gives a plausible-looking, meaningless Dice).
A PNG holding only 0/85/170/255 is a label map written x 85 (as ``lungseg predict`` and this page
write the "Both" PNG).

Anything else is an :class:`~lungseg.errors.InputError` naming the file. Scores are computed over the
whole volume (all slices at once); per slice and per lung too, and the volumes of both masks.
F1 is not shown: on binary masks it is the Dice coefficient.
"""

from __future__ import annotations

import numpy as np

from lungseg.app.uploads import LoadedInput, check_upload, upload_limit_mb, with_temp_file
from lungseg.errors import DataValidationError, InputError
from lungseg.inference.ground_truth import (
    MASK_SUFFIXES_2D,
    MASK_SUFFIXES_3D,
    is_label_map,
    read_mask,
)
from lungseg.inference.ground_truth import predicted as predicted_for
from lungseg.inference.ground_truth import task_truth as ground_truth_for

#: What the sidebar offers, and the model outputs each choice shows.
TASK_CHOICES: dict[str, tuple[str, ...]] = {
    "Lungs": ("lung",),
    "Infection": ("infection",),
    "Both": ("lung", "infection"),
}
METRIC_NAMES = ("dice", "iou", "precision", "recall")
METRIC_LABELS = {"dice": "Dice", "iou": "IoU", "precision": "Precision", "recall": "Recall"}
#: The tasks a binary ground truth can be the mask of (the user's answer).
BINARY_TASKS = ("lung", "infection")

__all__ = [
    "BINARY_TASKS",
    "METRIC_LABELS",
    "METRIC_NAMES",
    "TASK_CHOICES",
    "evaluate",
    "ground_truth_for",
    "gt_sides",
    "is_label_map",
    "per_lung_dice",
    "per_slice_dice",
    "predicted_for",
    "read_ground_truth_upload",
    "scored_tasks",
    "task_error_map",
    "volume_rows",
]


def read_ground_truth_upload(name: str, data: bytes, loaded: LoadedInput, *, max_mb: float | None = None) -> np.ndarray:
    """Read an uploaded ground-truth mask onto the image's canonical grid, as uint8 labels (z, y, x).

    A PNG for a 2D image, a NIfTI for a volume, read by :func:`lungseg.inference.ground_truth.read_mask`.
    Binary 0/255 masks are turned into 0/1, labels x 85 into labels 0-3.

    Raises:
        InputError: wrong type, empty, too large, unreadable, colour, values other than labels
            0-3 or 0/255, or a shape that differs from the image's.
    """
    allowed = MASK_SUFFIXES_2D if loaded.is_2d else MASK_SUFFIXES_3D
    check_upload(
        name,
        len(data),
        allowed=allowed,
        max_mb=upload_limit_mb() if max_mb is None else max_mb,
        what="ground-truth mask",
    )
    try:
        return with_temp_file(name, data, lambda path: read_mask(path, loaded.volume, name=name))
    except DataValidationError as exc:  # an upload the user can replace: the page's InputError
        raise InputError(str(exc)) from exc


def _binary_task(gt: np.ndarray, binary_task: str | None) -> str:
    """The task a ground truth is scored for when binary; a label map needs no answer."""
    if is_label_map(gt):
        return binary_task or "lung"  # unused: a label map gives both tasks
    if binary_task not in BINARY_TASKS:
        raise InputError(
            "the ground truth is a binary mask (only 0 and 1): choose whether it is a lung mask or an "
            "infection mask; it is not scored until you do"
        )
    return binary_task


def scored_tasks(gt: np.ndarray, choice: str, binary_task: str | None) -> list[str]:
    """The tasks of ``choice`` the ground truth says something about."""
    binary = _binary_task(gt, binary_task)
    return [t for t in TASK_CHOICES[choice] if ground_truth_for(gt, t, binary) is not None]


def evaluate(seg, gt: np.ndarray, choice: str, binary_task: str | None = None) -> dict[str, dict[str, float]]:
    """Dice, IoU, precision and recall per task of ``choice``, with :mod:`lungseg.evaluation.metrics`.

    ``binary_task`` says which task a binary ground truth is the mask of; it is required for a binary
    mask (never assumed) and ignored for a label map. Tasks the ground truth says nothing about are
    left out.

    Raises:
        InputError: a binary ground truth without ``binary_task``; a ground truth that covers none of
            the chosen tasks; a shape that differs.
    """
    from lungseg.evaluation import metrics

    binary = _binary_task(gt, binary_task)
    results: dict[str, dict[str, float]] = {}
    for task in TASK_CHOICES[choice]:
        truth = ground_truth_for(gt, task, binary)
        if truth is None:
            continue
        pred = predicted_for(seg, task)
        if pred.shape != truth.shape:
            raise InputError(f"the ground truth's shape {truth.shape} differs from the prediction's {pred.shape}")
        results[task] = {name: float(getattr(metrics, name)(pred, truth)) for name in METRIC_NAMES}
    if not results:
        raise InputError(
            f"the binary ground truth was declared a {binary} mask, but the selected segmentation "
            f"({choice}) has no {binary} output"
        )
    return results


def per_slice_dice(seg, gt: np.ndarray, task: str, binary_task: str | None = None) -> np.ndarray:
    """Dice of each axial slice (z), NaN where prediction and ground truth are both empty."""
    truth = ground_truth_for(gt, task, _binary_task(gt, binary_task))
    if truth is None:
        raise InputError(f"the ground truth holds no {task} mask")
    pred = predicted_for(seg, task)
    n = pred.shape[0]
    inter = np.count_nonzero((pred & truth).reshape(n, -1), axis=1).astype(float)
    total = (np.count_nonzero(pred.reshape(n, -1), axis=1) + np.count_nonzero(truth.reshape(n, -1), axis=1)).astype(
        float
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2 * inter / np.maximum(total, 1), np.nan)


def gt_sides(gt: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The ground truth's left and right lung (boolean, infection included), from a label map: the rule of
    :func:`lungseg.inference.export.ground_truth_sides`. None for a binary mask."""
    from lungseg.inference.export import ground_truth_sides

    return ground_truth_sides(gt) if is_label_map(gt) else None


def per_lung_dice(seg, gt: np.ndarray, tasks) -> dict[str, dict[str, float]]:
    """Dice per lung ({task: {"left": d, "right": d}}) against a label map; {} for a binary mask.

    Lung: the predicted left lung (label 1) against the ground truth's left lung, and so for the right
    (a laterality error shows here). Infection: inside each ground-truth lung.
    """
    from lungseg.evaluation import metrics

    sides = gt_sides(gt)
    if sides is None:
        return {}
    out: dict[str, dict[str, float]] = {}
    lungs = np.asarray(seg.lung_labels)
    infected = np.asarray(seg.infection) > 0
    for task in tasks:
        out[task] = {}
        for name, label, side in (("left", 1, sides[0]), ("right", 2, sides[1])):
            if task == "lung":
                out[task][name] = float(metrics.dice(lungs == label, side))
            else:
                out[task][name] = float(metrics.dice(infected & side, (gt == 3) & side))
    return out


def task_error_map(seg, gt: np.ndarray, task: str, binary_task: str | None = None) -> np.ndarray:
    """The error map of one task: 1 true positive, 2 false positive, 3 false negative."""
    from lungseg.app.viewer import error_map

    truth = ground_truth_for(gt, task, _binary_task(gt, binary_task))
    if truth is None:
        raise InputError(f"the ground truth holds no {task} mask")
    return error_map(predicted_for(seg, task), truth)


def volume_rows(seg, gt: np.ndarray, tasks, binary_task: str | None, spacing, is_2d: bool) -> list[dict]:
    """Predicted and ground-truth sizes side by side: ml for a volume, pixels for a 2D slice."""
    binary = _binary_task(gt, binary_task)
    unit = "pixels" if is_2d else "ml"
    scale = 1.0 if is_2d else float(np.prod([float(s) for s in spacing])) / 1000.0
    sides = gt_sides(gt)
    lungs = np.asarray(seg.lung_labels)
    rows = []
    for task in tasks:
        truth = ground_truth_for(gt, task, binary)
        if truth is None:
            continue
        pred = predicted_for(seg, task)
        rows.append(
            {
                "what": task,
                f"predicted ({unit})": np.count_nonzero(pred) * scale,
                f"ground truth ({unit})": np.count_nonzero(truth) * scale,
            }
        )
        if task == "lung" and sides is not None:
            for name, label, side in (("left lung", 1, sides[0]), ("right lung", 2, sides[1])):
                rows.append(
                    {
                        "what": name,
                        f"predicted ({unit})": np.count_nonzero(lungs == label) * scale,
                        f"ground truth ({unit})": np.count_nonzero(side) * scale,
                    }
                )
    return rows
