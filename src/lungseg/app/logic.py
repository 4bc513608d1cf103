"""Page logic of the web UI, as pure functions the Streamlit script calls and the tests drive directly.

Nothing here imports Streamlit. Reading, segmenting and reporting reuse ``lungseg.inference``,
display windowing reuses ``lungseg.imaging`` and the scores reuse ``lungseg.evaluation.metrics``.
Uploads live in :mod:`lungseg.app.uploads` and the "Evaluation" section (the ground-truth rule) in
:mod:`lungseg.app.evaluate`; their names are re-exported here, so the page uses ``logic.<name>`` only.
"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lungseg.app.evaluate import (
    METRIC_LABELS,
    METRIC_NAMES,
    TASK_CHOICES,
    evaluate,
    ground_truth_for,
    is_label_map,
    predicted_for,
    read_ground_truth,
)
from lungseg.app.uploads import (
    DEFAULT_MAX_UPLOAD_MB,
    INPUT_SUFFIXES,
    MAX_UPLOAD_ENV,
    VOLUME_SUFFIXES,
    LoadedInput,
    check_upload,
    digest_bytes,
    file_stem,
    file_suffix,
    read_upload,
    safe_file_name,
    server_max_upload_mb,
    upload_limit_mb,
)
from lungseg.errors import LungsegError, ModelNotFoundError
from lungseg.inference.ground_truth import PNG_LABEL_SCALE
from lungseg.layout import MODELS_DIR, TASKS, variant_name

__all__ = [  # the page's whole vocabulary, defined here or re-exported from uploads / evaluate
    "DEFAULT_MAX_UPLOAD_MB", "INPUT_SUFFIXES", "MAX_UPLOAD_ENV", "METRIC_LABELS", "METRIC_NAMES", "MODELS_DIR",
    "MODELS_DIR_ENV", "PNG_LABEL_SCALE", "REQUIRED_MODELS", "TASK_CHOICES", "TRAIN_COMMANDS", "VOLUME_SUFFIXES",
    "LoadedInput", "ModelChoice", "check_upload", "colour_mask", "default_models_dir", "default_slice",
    "describe_error", "digest_bytes", "display_colours", "display_labels", "display_slice", "evaluate", "file_stem",
    "file_suffix", "ground_truth_for", "infection_mask", "is_label_map", "load_model", "lung_mask", "make_report",
    "mask_download", "mask_nifti_bytes", "mask_png_bytes", "missing_model_message", "missing_tasks",
    "model_choices", "overlay", "png_values", "predicted_for", "read_ground_truth", "read_upload",
    "report_headline", "safe_file_name", "segment", "selected_mask", "server_max_upload_mb", "upload_limit_mb",
]

logger = logging.getLogger(__name__)

#: Environment variable of the models folder shown in the sidebar (default: layout.MODELS_DIR).
MODELS_DIR_ENV = "LUNGSEG_MODELS_DIR"

#: The trained models each choice needs: the infection model works inside the predicted lungs,
#: so it always needs the lung model too.
REQUIRED_MODELS: dict[str, tuple[str, ...]] = {
    "Lungs": ("lung",),
    "Infection": ("lung", "infection"),
    "Both": ("lung", "infection"),
}
#: The command that trains a model of each task.
TRAIN_COMMANDS: dict[str, str] = {task: f"kedro run --pipeline={variant_name(task, 'unet')}" for task in TASKS}


# --------------------------------------------------------------------------------------------
# settings


def default_models_dir(env: Mapping[str, str] | None = None) -> str:
    """The models folder to show first: ``$LUNGSEG_MODELS_DIR`` or ``data/06_models``."""
    env = os.environ if env is None else env
    return env.get(MODELS_DIR_ENV) or MODELS_DIR


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

