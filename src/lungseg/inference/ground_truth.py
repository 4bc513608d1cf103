"""Ground-truth masks for scoring a segmentation: one reader and one rule, for the CLI batch and the UI.

Reading
    A mask is a NIfTI file (a volume; a 2D NIfTI is one slice) or a PNG (a 2D image). It is read onto
    the canonical (z, y, x) grid, like the CT, by :func:`lungseg.volume.load_mask` (ingestion's reader
    too), and must be on the CT's grid (no resampling): in the batch, stored on the CT's own grid within
    ``inference.limits``' geometry tolerance; in the UI, of the CT's shape once reoriented. Its values
    must be whole numbers: labels 0-3, a binary 0/1 or 0/255 mask, or a "Both" PNG written as labels x 85
    (0/85/170/255, as ``lungseg predict`` and the web UI write it), read back as labels 0-3. Anything else
    (NaN, fractions, other values, a colour PNG, another shape) is a :class:`DataValidationError` naming
    the case and the file.

Rule (what a mask says about each task)
    * **label map**: it holds a 2 or a 3 (1 left lung, 2 right lung, 3 infection). *lung* = labels 1, 2
      **and 3** (infection lies inside the lungs); *infection* = label 3.
    * **binary mask** (only 0/1): the mask of one task, the one it was given for (the ``lung_mask`` or
      ``infection_mask`` column of ``metadata.csv``; in the UI, the selected task or the user's answer).

The prediction compared is ``lung_labels > 0`` for the lung task and ``infection > 0`` for infection.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from lungseg.errors import DataValidationError
from lungseg.layout import NIFTI_SUFFIXES, check_task, file_suffix

#: A "Both" PNG mask holds labels x 85 (as the CLI and the UI write it).
PNG_LABEL_SCALE = 85
#: The mask files accepted for a 2D image and for a volume.
MASK_SUFFIXES_2D: tuple[str, ...] = (".png",)
MASK_SUFFIXES_3D: tuple[str, ...] = NIFTI_SUFFIXES


def _values(gt: np.ndarray) -> list[int]:
    """The distinct values of a uint8 array (a histogram: far faster than np.unique on a CT-sized mask)."""
    return np.flatnonzero(np.bincount(gt.ravel(), minlength=256)).tolist()


def normalise_labels(gt: np.ndarray, name: str = "ground truth", *, case: str | None = None) -> np.ndarray:
    """Check a mask's values; map a 0/255 binary mask to 0/1 and a labels x 85 PNG
    (0/85/170/255) to labels 0-3.

    Raises:
        DataValidationError: other values than {0, 1, 2, 3} (after the mappings).
    """
    gt = np.asarray(gt, dtype=np.uint8)
    values = set(_values(gt))
    if values <= {0, 255}:
        return (gt > 0).astype(np.uint8)
    if values <= {0, 85, 170, 255}:  # the CLI's / the UI's label map PNG (labels x 85)
        return (gt // PNG_LABEL_SCALE).astype(np.uint8)
    bad = sorted(v for v in values if v > 3)
    if bad:
        raise DataValidationError(
            f"unexpected mask values {bad[:5]}; expected labels 0-3 "
            "(1 left lung, 2 right lung, 3 infection) or a binary 0/1 or 0/255 mask",
            case=case, file=name,
        )
    return gt


def is_label_map(gt: np.ndarray) -> bool:
    """A label map holds a 2 or a 3; a mask with only 0/1 is binary."""
    return bool(np.any(np.asarray(gt) >= 2))


def task_truth(gt: np.ndarray, task: str, binary_task: str) -> np.ndarray | None:
    """The boolean ground truth of ``task`` by the rule in the module docstring.

    ``binary_task`` is the task a binary mask belongs to. Returns None when the mask says nothing
    about ``task`` (a binary mask of the other task).
    """
    check_task(task)
    if is_label_map(gt):
        return gt == 3 if task == "infection" else gt > 0
    if task != binary_task:
        return None
    return gt > 0


def predicted(seg, task: str) -> np.ndarray:
    """The boolean prediction of ``task`` from a :class:`~lungseg.inference.segment.Segmentation`."""
    check_task(task)
    return np.asarray(seg.lung_labels if task == "lung" else seg.infection) > 0


def _read_png(path: Path, case: str | None, name: str) -> np.ndarray:
    """A PNG mask as a single-channel canonical (1, H, W) array (its values checked by :func:`load_mask`)."""
    import cv2

    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise DataValidationError("cannot read the PNG ground-truth mask (corrupt file?)", case=case, file=name)
    if raw.ndim == 3:
        channels = raw[..., :3]
        grey = np.array_equal(channels[..., 0], channels[..., 1]) and np.array_equal(channels[..., 0], channels[..., 2])
        if not grey:
            raise DataValidationError(
                "the ground truth is a colour image; expected a single-channel mask "
                "(labels 0-3 or a binary 0/1 or 0/255 mask)", case=case, file=name,
            )
        raw = channels[..., 0]
    return raw[None]


def _open_nifti(path: Path, case: str | None, name: str):
    """A NIfTI mask as a 3D nibabel image (a 2D NIfTI is one slice, as the CT reader accepts it)."""
    import nibabel as nib

    from lungseg.volume import load_nifti

    try:
        img = load_nifti(path)  # nib.load, gzip through python-isal
    except Exception as exc:  # nibabel raises ImageFileError, EOFError, zlib errors, OSError...
        raise DataValidationError(
            f"cannot read the NIfTI ground-truth mask (corrupt file?): {type(exc).__name__}: {exc}",
            case=case, file=name,
        ) from exc
    if len(img.shape) == 2:
        img = nib.Nifti1Image(np.asanyarray(img.dataobj)[..., None], img.affine, header=img.header)
    return img


def read_mask(path: str | Path, target, *, case: str | None = None, name: str | None = None,
              tolerance: Mapping[str, float] | None = None) -> np.ndarray:
    """Read a ground-truth mask onto the canonical grid of ``target``, as uint8 labels (z, y, x).

    The grid and value checks are :func:`lungseg.volume.load_mask`'s, the reader ingestion uses too.

    Args:
        path: a NIfTI (``.nii``, ``.nii.gz``) or PNG mask.
        target: the canonical :class:`lungseg.volume.Volume` of the CT it belongs to.
        case: the case id, for messages.
        name: the file name shown in messages (default: ``path``), e.g. an upload's own name.
        tolerance: given (the batch: ``inference.limits``' geometry tolerance), a NIfTI mask must be stored
            on the CT's own grid within it; None (the UI), it is reoriented and only its shape is compared.

    Returns:
        The mask with 0/255 mapped to 0/1 and labels x 85 to labels 0-3 (see the module docstring).

    Raises:
        DataValidationError: missing, unreadable or unsupported file, bad values, or not the CT's grid.
    """
    from lungseg.volume import load_mask

    path = Path(path)
    name = str(path) if name is None else name
    if not path.is_file():
        raise DataValidationError("ground-truth mask not found", case=case, file=name)
    suffix = file_suffix(path.name)
    if suffix in MASK_SUFFIXES_2D:
        mask = _read_png(path, case, name)
    elif suffix in MASK_SUFFIXES_3D:
        mask = _open_nifti(path, case, name)
    else:
        accepted = ", ".join(MASK_SUFFIXES_3D + MASK_SUFFIXES_2D)
        raise DataValidationError(f"unsupported ground-truth mask type ({suffix or 'no extension'}); "
                                  f"accepted types: {accepted}", case=case, file=name)
    gt = load_mask(mask, target, what="the ground-truth mask", case=case, file=name, tolerance=tolerance)
    return normalise_labels(gt, name, case=case)


def read_ground_truth(path: str | Path, task: str, target, *, case: str | None = None,
                      name: str | None = None, tolerance: Mapping[str, float] | None = None) -> np.ndarray:
    """The boolean ground truth of ``task`` from a mask file given for that task (see :func:`read_mask`).

    A label map gives ``task`` by the rule (lung: labels 1-3, infection: label 3); a binary mask is
    taken as the mask of ``task``.
    """
    return task_truth(read_mask(path, target, case=case, name=name, tolerance=tolerance), task, binary_task=task)
