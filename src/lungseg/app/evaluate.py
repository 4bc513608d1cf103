"""The "Evaluation" section of the web UI: an uploaded ground-truth mask against the prediction.

The mask is read, checked and interpreted by :mod:`lungseg.inference.ground_truth`, the reader the CLI
batch uses too (see its docstring for the rule): a PNG for a 2D image, a NIfTI for a volume, on the
image's canonical grid and of its shape; a label map (it holds a 2 or a 3) gives lung = labels 1-3 and
infection = label 3; a binary mask (0/1 or 0/255) is the mask of one task: the selected one
("Lungs" -> lung, "Infection" -> infection); with "Both" the user says which. A PNG holding only
0/85/170/255 is a label map written x 85 (as ``lungseg predict`` and this page write the "Both" PNG).

Anything else is an :class:`~lungseg.errors.InputError` naming the file. Scores are computed over the
whole volume (all slices at once).
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
METRIC_NAMES = ("dice", "iou", "precision", "recall", "f1")
METRIC_LABELS = {"dice": "Dice", "iou": "IoU", "precision": "Precision", "recall": "Recall", "f1": "F1"}

__all__ = [
    "METRIC_LABELS", "METRIC_NAMES", "TASK_CHOICES", "evaluate", "ground_truth_for", "is_label_map",
    "predicted_for", "read_ground_truth",
]


def read_ground_truth(
    name: str, data: bytes, loaded: LoadedInput, *, max_mb: float | None = None
) -> np.ndarray:
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


def evaluate(seg, gt: np.ndarray, choice: str, binary_task: str | None = None) -> dict[str, dict[str, float]]:
    """Dice, IoU, precision, recall and F1 per task of ``choice``, with :mod:`lungseg.evaluation.metrics`.

    ``binary_task`` says which task a binary ground truth is the mask of; by default the single
    task of the choice ("lung" for "Both"). Tasks the ground truth says nothing about are left out.

    Raises:
        InputError: the ground truth covers none of the chosen tasks, or its shape differs.
    """
    from lungseg.evaluation import metrics

    tasks = TASK_CHOICES[choice]
    binary_task = binary_task or tasks[0]
    results: dict[str, dict[str, float]] = {}
    for task in tasks:
        truth = ground_truth_for(gt, task, binary_task)
        if truth is None:
            continue
        pred = predicted_for(seg, task)
        if pred.shape != truth.shape:
            raise InputError(f"the ground truth's shape {truth.shape} differs from the prediction's {pred.shape}")
        results[task] = {name: float(getattr(metrics, name)(pred, truth)) for name in METRIC_NAMES}
    if not results:
        raise InputError(
            f"the binary ground truth was declared a {binary_task} mask, but the selected segmentation "
            f"({choice}) has no {binary_task} output"
        )
    return results

