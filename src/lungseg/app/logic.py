"""Page logic of the web UI, as pure functions the Streamlit script calls and the tests drive directly.

Nothing here imports Streamlit. Reading, segmenting and reporting reuse ``lungseg.inference``,
display windowing reuses ``lungseg.imaging`` and the scores reuse ``lungseg.evaluation.metrics``.

Ground-truth rule (the "Evaluation" section of the page)
--------------------------------------------------------
A ground-truth mask is read onto the same canonical grid as the image (PNG for a 2D image, NIfTI
for a volume) and must have the image's shape. Its values decide what it holds:

* **label map**: it holds a value 2 or 3 (labels 1 left lung, 2 right lung, 3 infection).
  *lung* = labels 1, 2 **and 3** (infection lies inside the lungs, so infected voxels are lung);
  *infection* = label 3.
* **binary mask**: only 0/1 (or 0/255, read as 0/1). It is the mask of one task: the selected one
  ("Lungs" → lung mask, "Infection" → infection mask); with "Both" the user says which.

A PNG holding only 0/85/170/255 with some 85 or 170 is a label map written × 85 (as ``lungseg
predict`` and this page write the "Both" PNG) and is read back as labels 1/2/3.

Anything else (other values, a colour image, another shape) is an :class:`~lungseg.errors.InputError`.
The prediction compared is ``lung_labels > 0`` for the lung task and ``infection > 0`` for infection;
scores are computed over the whole volume (all slices at once).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lungseg.errors import InputError, LungsegError, ModelNotFoundError

logger = logging.getLogger(__name__)

#: Environment variable and default of the models folder shown in the sidebar.
MODELS_DIR_ENV = "LUNGSEG_MODELS_DIR"
DEFAULT_MODELS_DIR = "data/06_models"
#: Environment variable and default of the upload size limit, in MB (10**6 bytes).
MAX_UPLOAD_ENV = "LUNGSEG_MAX_UPLOAD_MB"
DEFAULT_MAX_UPLOAD_MB = 300.0

#: What the sidebar offers, and the model outputs each choice shows.
TASK_CHOICES: dict[str, tuple[str, ...]] = {
    "Lungs": ("lung",),
    "Infection": ("infection",),
    "Both": ("lung", "infection"),
}
#: The trained models each choice needs: the infection model works inside the predicted lungs,
#: so it always needs the lung model too.
REQUIRED_MODELS: dict[str, tuple[str, ...]] = {
    "Lungs": ("lung",),
    "Infection": ("lung", "infection"),
    "Both": ("lung", "infection"),
}
#: The command that trains a model of each task.
TRAIN_COMMANDS: dict[str, str] = {
    "lung": "kedro run --pipeline=lung_unet",
    "infection": "kedro run --pipeline=infection_unet",
}

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".zip")
INPUT_SUFFIXES = IMAGE_SUFFIXES + VOLUME_SUFFIXES
MASK_SUFFIXES_2D = (".png",)
MASK_SUFFIXES_3D = (".nii", ".nii.gz")

#: A "Both" PNG mask holds labels × 85 (as the CLI writes it).
PNG_LABEL_SCALE = 85
METRIC_NAMES = ("dice", "iou", "precision", "recall", "f1")
METRIC_LABELS = {"dice": "Dice", "iou": "IoU", "precision": "Precision", "recall": "Recall", "f1": "F1"}


# --------------------------------------------------------------------------------------------
# settings


def default_models_dir(env: Mapping[str, str] | None = None) -> str:
    """The models folder to show first: ``$LUNGSEG_MODELS_DIR`` or ``data/06_models``."""
    env = os.environ if env is None else env
    return env.get(MODELS_DIR_ENV) or DEFAULT_MODELS_DIR


def upload_limit_mb(env: Mapping[str, str] | None = None) -> float:
    """The largest accepted upload in MB: ``$LUNGSEG_MAX_UPLOAD_MB`` or 300.

    Raises:
        InputError: the variable is set but is not a positive number.
    """
    env = os.environ if env is None else env
    raw = env.get(MAX_UPLOAD_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_MAX_UPLOAD_MB
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value) or value <= 0:
        raise InputError(f"{MAX_UPLOAD_ENV}={raw!r} is not a positive number of megabytes")
    return value


def server_max_upload_mb(env: Mapping[str, str] | None = None) -> int:
    """A value for Streamlit's ``--server.maxUploadSize`` (MiB) above the app's own limit.

    Streamlit refuses bigger uploads itself (with its own message); uploads between the app's
    limit and this value reach the page, which refuses them with an ``st.error`` naming the limit.
    """
    return int(math.ceil(2 * upload_limit_mb(env)))


# --------------------------------------------------------------------------------------------
# uploads


def file_suffix(name: str) -> str:
    """The lower-case suffix of a file name, keeping both parts of ``.nii.gz``."""
    lower = Path(name).name.lower()
    if lower.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(lower).suffix


def safe_file_name(name: str) -> str:
    """The base name of an uploaded file, reduced to characters safe in a temporary path."""
    base = Path(str(name).replace("\\", "/")).name
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip(".")
    return base or "upload"


def file_stem(name: str) -> str:
    """A file name without its suffix (``ct.nii.gz`` → ``ct``)."""
    base = safe_file_name(name)
    suffix = file_suffix(base)
    return base[: len(base) - len(suffix)] if suffix else base


def check_upload(
    name: str,
    size_bytes: int,
    *,
    allowed: Sequence[str] = INPUT_SUFFIXES,
    max_mb: float = DEFAULT_MAX_UPLOAD_MB,
    what: str = "image",
) -> str:
    """Check an upload's type and size before reading it; return its suffix.

    Raises:
        InputError: empty file, a suffix not in ``allowed``, or more than ``max_mb`` megabytes.
    """
    suffix = file_suffix(name)
    if suffix not in allowed:
        shown = suffix or "no extension"
        raise InputError(
            f"file {name!r}: unsupported {what} type ({shown}); accepted types: {', '.join(allowed)}"
        )
    if size_bytes <= 0:
        raise InputError(f"file {name!r}: the file is empty")
    size_mb = size_bytes / 1e6
    if size_mb > max_mb:
        raise InputError(
            f"file {name!r}: {size_mb:.1f} MB is over the upload limit of {max_mb:g} MB "
            f"(set {MAX_UPLOAD_ENV} to change it)"
        )
    return suffix


@dataclass
class LoadedInput:
    """An uploaded image read into lungseg's canonical form.

    Attributes:
        name: the uploaded file's name.
        volume: the canonical (z, y, x) :class:`lungseg.volume.Volume`.
        source_kind: ``"hu"`` or ``"uint8"`` (see docs/architecture.md).
        is_2d: the upload was a PNG/JPG slice (its mask is offered as a PNG, not NIfTI).
        digest: SHA-1 of the uploaded bytes (a cache key).
    """

    name: str
    volume: Any
    source_kind: str
    is_2d: bool
    digest: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.volume.array.shape)  # type: ignore[return-value]


def digest_bytes(data: bytes) -> str:
    """SHA-1 hex digest of bytes."""
    return hashlib.sha1(data).hexdigest()


def _with_temp_file(name: str, data: bytes, fn):
    """Write ``data`` to a temporary file named like the upload (same suffix) and call ``fn(path)``."""
    with tempfile.TemporaryDirectory(prefix="lungseg-upload-") as tmp:
        path = Path(tmp) / safe_file_name(name)
        path.write_bytes(data)
        return fn(path)


def read_upload(name: str, data: bytes, *, max_mb: float | None = None) -> LoadedInput:
    """Read an uploaded CT (PNG/JPG slice, NIfTI, zipped DICOM series) with the inference reader.

    The bytes go to a temporary file that keeps the original suffix (``.nii.gz`` keeps both) and
    :func:`lungseg.inference.readers.read_input` reads it. The array is copied into memory, so the
    temporary file can go.

    Raises:
        InputError: wrong type, empty, too large, or unreadable (the reader's message).
    """
    from lungseg.inference.readers import read_input

    suffix = check_upload(
        name, len(data), allowed=INPUT_SUFFIXES, max_mb=upload_limit_mb() if max_mb is None else max_mb
    )

    def _read(path: Path):
        volume, kind = read_input(path)
        volume.array = np.array(volume.array, copy=True)  # detach from a memory map of the temp file
        return volume, kind

    volume, kind = _with_temp_file(name, data, _read)
    if volume.array.ndim != 3 or min(volume.array.shape) < 1:
        raise InputError(f"file {name!r}: expected an image or a volume, got shape {volume.array.shape}")
    return LoadedInput(
        name=name,
        volume=volume,
        source_kind=kind,
        is_2d=suffix in IMAGE_SUFFIXES,
        digest=digest_bytes(data),
    )


# --------------------------------------------------------------------------------------------
# models


@dataclass(frozen=True)
class ModelChoice:
    """One trained model offered in the sidebar."""

    task: str
    variant: str
    version: str
    path: str

    @property
    def label(self) -> str:
        return f"{self.variant} ({self.version})"


def model_choices(models_dir: str | Path) -> dict[str, list[ModelChoice]]:
    """The trained models per task (``"lung"``, ``"infection"``), in the order of
    :func:`lungseg.inference.models.list_trained_models` (newest first)."""
    from lungseg.inference.models import list_trained_models

    found = list_trained_models(models_dir)
    return {
        task: [
            ModelChoice(task=task, variant=str(m["variant"]), version=str(m["version"]), path=str(m["path"]))
            for m in entries
        ]
        for task, entries in found.items()
    }


def missing_tasks(choice: str, available: Mapping[str, Sequence[Any]]) -> list[str]:
    """The tasks whose model ``choice`` needs but ``available`` lacks."""
    return [task for task in REQUIRED_MODELS[choice] if not available.get(task)]


def missing_model_message(tasks: Sequence[str], models_dir: str | Path) -> str:
    """The message shown when no model is trained for ``tasks``: it names the training commands."""
    names = " and ".join(f"{t}" for t in tasks)
    commands = " / ".join(f"`{TRAIN_COMMANDS[t]}`" for t in tasks)
    return (
        f"No trained {names} model in `{models_dir}`. Train one with `make demo` "
        f"(the lung and infection U-Nets on the synthetic demo data) or, on the real dataset, {commands}, "
        f"or point the sidebar's models folder at a folder that holds them."
    )


def load_model(path: str | Path, task: str, models_dir: str | Path):
    """Load one trained model (its ``model.keras`` path) with :func:`lungseg.inference.models.load_model_spec`."""
    from lungseg.inference.models import load_model_spec

    return load_model_spec(str(path), task, models_dir)


# --------------------------------------------------------------------------------------------
# segmentation and report


def segment(loaded: LoadedInput, lung_model, infection_model, choice: str, batch_size: int = 8):
    """Segment an uploaded image with :class:`lungseg.inference.segment.Segmenter`."""
    from lungseg.inference.segment import Segmenter

    if lung_model is None:
        raise ModelNotFoundError(missing_model_message(["lung"], "the models folder"))
    tasks = TASK_CHOICES[choice]
    if "infection" in tasks and infection_model is None:
        raise ModelNotFoundError(missing_model_message(["infection"], "the models folder"))
    segmenter = Segmenter(lung_model, infection_model if "infection" in tasks else None, batch_size)
    return segmenter.segment(loaded.volume, loaded.source_kind, tasks=tasks, progress=False)


def lung_mask(seg) -> np.ndarray:
    """The predicted lung labels (z, y, x) uint8: 1 left, 2 right, 0 elsewhere."""
    return np.asarray(seg.lung_labels, dtype=np.uint8)


def infection_mask(seg) -> np.ndarray:
    """The predicted infection mask (z, y, x) uint8 0/1 (all zeros when infection was not run)."""
    return (np.asarray(seg.infection) > 0).astype(np.uint8)


def selected_mask(seg, choice: str) -> np.ndarray:
    """The mask of the chosen segmentation (what is shown and downloaded), (z, y, x) uint8.

    "Lungs": labels 1 left / 2 right; "Infection": 0/1; "Both": the combined map 1 / 2 / 3
    (:meth:`lungseg.inference.segment.Segmentation.combined`).
    """
    if choice == "Lungs":
        return lung_mask(seg)
    if choice == "Infection":
        return infection_mask(seg)
    return np.asarray(seg.combined(), dtype=np.uint8)


def make_report(seg, loaded: LoadedInput) -> dict:
    """The inference report (volumes, involvement, severity) for a segmentation."""
    from lungseg.inference.report import make_report as _make_report

    return _make_report(seg, loaded.volume.spacing)


# --------------------------------------------------------------------------------------------
# display


def default_slice(lungs: np.ndarray) -> int:
    """The slice with the most lung (the middle slice when there is no lung)."""
    counts = np.count_nonzero(np.asarray(lungs).reshape(lungs.shape[0], -1), axis=1)
    if counts.size == 0 or counts.max() == 0:
        return int(lungs.shape[0] // 2)
    return int(np.argmax(counts))


def display_slice(loaded: LoadedInput, index: int) -> np.ndarray:
    """One axial slice windowed to uint8 for display, with :func:`lungseg.imaging.window_to_uint8`."""
    from lungseg.imaging import window_to_uint8

    arr = np.asarray(loaded.volume.array[int(index)])
    return np.asarray(window_to_uint8(arr, loaded.source_kind), dtype=np.uint8)


def display_colours() -> dict[int, tuple[int, int, int]]:
    """RGB colours of the display labels: 1 lungs, 3 infection (the colours of the CLI's overlays)."""
    from lungseg.inference.report import OVERLAY_COLOURS  # BGR

    return {label: tuple(int(c) for c in reversed(OVERLAY_COLOURS[label])) for label in (1, 3)}  # type: ignore[misc]


def display_labels(mask: np.ndarray, choice: str) -> np.ndarray:
    """Map a selected mask to display labels: 1 lungs (left and right alike), 3 infection.

    An "Infection" 0/1 mask becomes 0/3.
    """
    mask = np.asarray(mask, dtype=np.uint8)
    if choice == "Infection":
        return np.where(mask > 0, np.uint8(3), np.uint8(0))
    return np.where(mask == 3, np.uint8(3), np.where(mask > 0, np.uint8(1), np.uint8(0)))


def colour_mask(labels: np.ndarray) -> np.ndarray:
    """An RGB picture of 2D display labels (:func:`display_labels`) on black."""
    labels = np.asarray(labels)
    rgb = np.zeros(labels.shape + (3,), dtype=np.uint8)
    for label, colour in display_colours().items():
        rgb[labels == label] = colour
    return rgb


def overlay(gray: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGB overlay of 2D display labels on a uint8 slice, drawn by the CLI's
    :func:`lungseg.inference.report.overlay_rgb` (blend and outline)."""
    from lungseg.inference.report import overlay_rgb

    gray = np.asarray(gray, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.uint8)
    if gray.shape != labels.shape:
        raise ValueError(f"image shape {gray.shape} and mask shape {labels.shape} differ")
    return np.ascontiguousarray(overlay_rgb(gray, labels)[..., ::-1])


# --------------------------------------------------------------------------------------------
# downloads


def png_values(mask2d: np.ndarray, choice: str) -> np.ndarray:
    """The pixel values of a downloaded PNG mask, as the CLI writes them: "Lungs" and "Infection"
    0/255; "Both" labels × 85 (85 left lung, 170 right lung, 255 infection)."""
    mask2d = np.asarray(mask2d, dtype=np.uint8)
    if choice == "Both":
        return mask2d * np.uint8(PNG_LABEL_SCALE)
    return (mask2d > 0).astype(np.uint8) * np.uint8(255)


def mask_png_bytes(mask2d: np.ndarray, choice: str) -> bytes:
    """A single-channel 8-bit PNG of a 2D mask (values by :func:`png_values`)."""
    import cv2

    mask2d = np.asarray(mask2d, dtype=np.uint8)
    if mask2d.ndim != 2:
        raise ValueError(f"expected a 2D mask, got shape {mask2d.shape}")
    ok, buf = cv2.imencode(".png", png_values(mask2d, choice))
    if not ok:
        raise LungsegError("could not encode the mask as PNG")
    return buf.tobytes()


def mask_nifti_bytes(loaded: LoadedInput, mask_zyx: np.ndarray) -> bytes:
    """A gzipped NIfTI (``.nii.gz``) of a canonical mask, on the input's own grid and affine."""
    img = loaded.volume.to_nifti(np.asarray(mask_zyx, dtype=np.uint8), np.uint8)
    return gzip.compress(img.to_bytes(), compresslevel=6)


def mask_download(loaded: LoadedInput, mask_zyx: np.ndarray, choice: str) -> tuple[bytes, str, str]:
    """(data, file name, MIME type) of the mask download: PNG for a 2D input, NIfTI otherwise."""
    suffix = {"Lungs": "lungs", "Infection": "infection", "Both": "labels"}[choice]
    stem = file_stem(loaded.name)
    if loaded.is_2d:
        return mask_png_bytes(np.asarray(mask_zyx)[0], choice), f"{stem}_{suffix}.png", "image/png"
    return mask_nifti_bytes(loaded, mask_zyx), f"{stem}_{suffix}.nii.gz", "application/gzip"


# --------------------------------------------------------------------------------------------
# report display


def report_headline(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The figures shown on top of the report (label, value), from
    :func:`lungseg.inference.report.make_report`'s dict: lung volume, the percentage of each lung
    involved and the severity grade 0-5 (when the infection task ran; its words are in the
    report's ``message``)."""
    rows: list[tuple[str, str]] = []
    lung = report.get("lung_volume_ml") or {}
    if "total" in lung:
        rows.append(("Lung volume", f"{float(lung['total']):.1f} ml"))
    percent = report.get("infection_percent") or {}
    for side, label in (("left", "Left lung involved"), ("right", "Right lung involved"), ("total", "Lungs involved")):
        if side in percent:
            rows.append((label, f"{float(percent[side]):.1f} %"))
    severity = report.get("severity") or {}
    if "total" in severity:
        rows.append(("Severity grade", f"{int(severity['total'])}/5"))
    return rows


# --------------------------------------------------------------------------------------------
# evaluation


def _read_mask_png(path: Path, name: str) -> np.ndarray:
    import cv2

    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise InputError(f"file {name!r}: cannot read the PNG (corrupt file?)")
    if raw.ndim == 3:
        channels = raw[..., :3]
        if not (np.array_equal(channels[..., 0], channels[..., 1]) and np.array_equal(channels[..., 0], channels[..., 2])):
            raise InputError(
                f"file {name!r}: the ground truth is a colour image; expected a single-channel mask "
                "(labels 0-3 or a binary 0/1 or 0/255 mask)"
            )
        raw = channels[..., 0]
    if raw.dtype != np.uint8:
        if raw.max(initial=0) > 255:
            raise InputError(f"file {name!r}: mask values above 255; expected labels 0-3 or 0/1 or 0/255")
        raw = raw.astype(np.uint8)
    return raw[None]


def _read_mask_nifti(path: Path, name: str) -> np.ndarray:
    import nibabel as nib

    from lungseg.volume import load_canonical

    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many kinds on corrupt files
        raise InputError(f"file {name!r}: cannot read the NIfTI ground truth (corrupt file?): {exc}") from exc
    try:
        vol = load_canonical(img, file=name)
    except LungsegError as exc:
        raise InputError(str(exc)) from exc
    arr = np.asarray(vol.array)
    if not np.all(np.isfinite(arr)):
        raise InputError(f"file {name!r}: the ground truth holds NaN or infinite values")
    rounded = np.rint(arr)
    if not np.array_equal(rounded, arr):
        raise InputError(f"file {name!r}: the ground truth holds non-integer values; expected labels 0-3")
    if rounded.min(initial=0) < 0 or rounded.max(initial=0) > 255:
        raise InputError(f"file {name!r}: mask values outside 0-255; expected labels 0-3 or 0/1")
    return rounded.astype(np.uint8)


def read_ground_truth(
    name: str, data: bytes, loaded: LoadedInput, *, max_mb: float | None = None
) -> np.ndarray:
    """Read an uploaded ground-truth mask onto the image's canonical grid, as uint8 (z, y, x).

    A PNG for a 2D image, a NIfTI for a volume. Binary 0/255 masks are turned into 0/1.

    Raises:
        InputError: wrong type, empty, too large, unreadable, colour, values other than labels
            0-3 or 0/255, or a shape that differs from the image's.
    """
    allowed = MASK_SUFFIXES_2D if loaded.is_2d else MASK_SUFFIXES_3D
    suffix = check_upload(
        name,
        len(data),
        allowed=allowed,
        max_mb=upload_limit_mb() if max_mb is None else max_mb,
        what="ground-truth mask",
    )
    reader = _read_mask_png if suffix == ".png" else _read_mask_nifti
    gt = _with_temp_file(name, data, lambda p: reader(p, name))
    if gt.shape != loaded.shape:
        raise InputError(
            f"file {name!r}: the ground truth has shape {describe_shape(gt.shape, loaded.is_2d)} but the image "
            f"{loaded.name!r} has shape {describe_shape(loaded.shape, loaded.is_2d)}; they must be on the same grid"
        )
    return normalise_labels(gt, name)


def describe_shape(shape: Sequence[int], is_2d: bool) -> str:
    """A shape in words: ``HxW`` for a 2D image, ``(z, y, x)`` for a volume."""
    if is_2d and len(shape) == 3 and shape[0] == 1:
        return f"{shape[1]}x{shape[2]} pixels"
    return f"{tuple(int(s) for s in shape)} (z, y, x)"


def normalise_labels(gt: np.ndarray, name: str = "ground truth") -> np.ndarray:
    """Check a ground truth's values; map a 0/255 binary mask to 0/1 and a labels × 85 PNG
    (0/85/170/255, as the CLI and this page write them) to labels 0-3.

    Raises:
        InputError: other values than {0, 1, 2, 3} (after the mappings).
    """
    gt = np.asarray(gt, dtype=np.uint8)
    values = set(np.unique(gt).tolist())
    if values <= {0, 255}:
        return (gt > 0).astype(np.uint8)
    if values <= {0, 85, 170, 255}:  # the CLI's / this page's label map PNG (labels × 85)
        return (gt // PNG_LABEL_SCALE).astype(np.uint8)
    bad = sorted(int(v) for v in values if v > 3)
    if bad:
        raise InputError(
            f"file {name!r}: unexpected mask values {bad[:5]}; expected labels 0-3 "
            "(1 left lung, 2 right lung, 3 infection) or a binary 0/1 or 0/255 mask"
        )
    return gt


def is_label_map(gt: np.ndarray) -> bool:
    """A label map holds a 2 or a 3; a mask with only 0/1 is binary."""
    return bool(np.any(gt >= 2))


def ground_truth_for(gt: np.ndarray, task: str, binary_task: str) -> np.ndarray | None:
    """The boolean ground truth of ``task`` by the rule in the module docstring.

    Returns None when the ground truth says nothing about ``task`` (a binary mask of the other task).
    """
    if is_label_map(gt):
        return gt == 3 if task == "infection" else gt > 0
    if task != binary_task:
        return None
    return gt > 0


def predicted_for(seg, task: str) -> np.ndarray:
    """The boolean prediction of ``task`` (lung: any lung label; infection: infection mask)."""
    if task == "lung":
        return lung_mask(seg) > 0
    return infection_mask(seg) > 0


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


# --------------------------------------------------------------------------------------------
# errors


def describe_error(exc: BaseException, step: str) -> str:
    """A short message for the page: the lungseg message as is, else the type and first line."""
    if isinstance(exc, LungsegError):
        return f"{step}: {exc}"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    detail = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    if len(detail) > 300:
        detail = detail[:297] + "..."
    return f"{step} failed ({detail}). See the server log for details."

