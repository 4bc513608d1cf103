"""Page logic of the web UI, as pure functions the Streamlit script calls and the tests drive directly.

Nothing here imports Streamlit. Reading, segmenting and reporting reuse ``lungseg.inference``,
display windowing reuses ``lungseg.imaging`` and the scores reuse ``lungseg.evaluation.metrics``.
Uploads live in :mod:`lungseg.app.uploads` and the "Evaluation" section (the ground-truth rule) in
:mod:`lungseg.app.ground_truth_view`; their names are re-exported here, so the page uses ``logic.<name>`` only.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lungseg.app.ground_truth_view import (
    BINARY_TASKS,
    METRIC_LABELS,
    METRIC_NAMES,
    TASK_CHOICES,
    evaluate,
    ground_truth_for,
    is_label_map,
    per_lung_dice,
    per_slice_dice,
    predicted_for,
    read_ground_truth_upload,
    scored_tasks,
    task_error_map,
    volume_rows,
)
from lungseg.app.report_view import slice_report
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
    with_spacing,
)
from lungseg.errors import LungsegError, ModelNotFoundError
from lungseg.inference.choice import RankedModel, rank_models
from lungseg.inference.ground_truth import PNG_LABEL_SCALE
from lungseg.layout import MODELS_DIR, TASKS, variant_name

# fmt: off
__all__ = [  # the page's whole vocabulary, defined here or re-exported from uploads / ground_truth_view
    "BINARY_TASKS", "DEFAULT_MAX_UPLOAD_MB", "INPUT_SUFFIXES", "MAX_UPLOAD_ENV", "METRIC_LABELS", "METRIC_NAMES",
    "MODELS_DIR", "MODELS_DIR_ENV", "PNG_LABEL_SCALE", "REQUIRED_MODELS", "TASK_CHOICES", "TRAIN_COMMANDS",
    "VOLUME_SUFFIXES", "LoadedInput", "ModelChoice", "check_upload", "colour_mask", "default_models_dir",
    "default_slice", "describe_error", "digest_bytes", "display_colours", "display_labels", "display_slice",
    "evaluate", "file_stem", "file_suffix", "ground_truth_for", "infection_mask", "is_label_map", "load_ui_model",
    "lung_mask", "mask_download", "mask_nifti_bytes", "mask_png_bytes", "missing_model_message", "missing_tasks",
    "model_choices", "overlay", "per_lung_dice", "per_slice_dice", "png_values", "predicted_for",
    "read_ground_truth_upload", "read_upload", "report_headline", "safe_file_name", "scored_tasks",
    "segment_upload", "selected_mask", "server_max_upload_mb", "task_error_map", "ui_report", "upload_limit_mb",
    "volume_rows", "with_spacing",
]
# fmt: on

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
TRAIN_COMMANDS: dict[str, str] = {task: f"kedro run --pipelines={variant_name(task, 'unet')}" for task in TASKS}


# --------------------------------------------------------------------------------------------
# settings


def default_models_dir(env: Mapping[str, str] | None = None) -> str:
    """The models folder to show first: ``$LUNGSEG_MODELS_DIR`` or ``data/06_models``."""
    env = os.environ if env is None else env
    return env.get(MODELS_DIR_ENV) or MODELS_DIR


# --------------------------------------------------------------------------------------------
# models


#: One trained model offered in the sidebar (name, version, recorded score, path).
ModelChoice = RankedModel


def model_choices(models_dir: str | Path) -> dict[str, list[ModelChoice]]:
    """The finished models per task (``"lung"``, ``"infection"``), best recorded score first
    (:func:`lungseg.inference.choice.rank_models`); the first is the default."""
    return rank_models(models_dir)


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


#: The sidebar's prediction precisions (as ``lungseg predict --precision``); float32 is the default.
PRECISION_CHOICES = ("float32", "mixed_bfloat16", "auto")


def load_ui_model(path: str | Path, task: str, models_dir: str | Path, precision: str = "float32"):
    """Load one trained model (its ``model.keras`` path) with :func:`lungseg.inference.models.load_model_spec`,
    set to predict in ``precision`` (:func:`lungseg.models.precision.loaded_in`; the weights stay float32)."""
    from lungseg.inference.models import load_model_spec
    from lungseg.models.precision import check_precision, loaded_in, resolve_and_log

    policy = resolve_and_log(check_precision(precision, "the UI's"), "Prediction")
    return loaded_in(load_model_spec(str(path), task, models_dir), policy)


# --------------------------------------------------------------------------------------------
# segmentation and report


def segment_upload(loaded: LoadedInput, lung_model, infection_model, choice: str, batch_size: int = 8):
    """Segment an uploaded image with :class:`lungseg.inference.segment.Segmenter` (the project's guard bounds)."""
    from lungseg.inference.segment import Segmenter
    from lungseg.inference.settings import InferenceSettings
    from lungseg.limits import load_guard

    if lung_model is None:
        raise ModelNotFoundError(missing_model_message(["lung"], "the models folder"))
    tasks = TASK_CHOICES[choice]
    if "infection" in tasks and infection_model is None:
        raise ModelNotFoundError(missing_model_message(["infection"], "the models folder"))
    settings = InferenceSettings(guard=load_guard(), batch_size=batch_size)
    segmenter = Segmenter.from_models(lung_model, infection_model if "infection" in tasks else None, settings)
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


def ui_report(seg, loaded: LoadedInput, models: Mapping[str, Any] | None = None) -> dict:
    """The report of a segmentation: :func:`lungseg.inference.report.make_report` for a volume, areas
    in pixels and percentages for a 2D slice (:func:`lungseg.app.report_view.slice_report`); the
    models used (name, version, score), their provenance, the lesion table (``lesions``, as
    ``lesions.csv``), the voxel size's source and the share of dense tissue the predicted lungs leave out."""
    from lungseg.app.report_view import LEFT_OUT_WARN_FRACTION, left_out_dense
    from lungseg.inference.export import lesion_table
    from lungseg.inference.report import make_report

    report = make_report(seg, loaded.volume.spacing)
    if loaded.is_2d:  # areas in pixels; where the models come from, and why figures are withheld, as for a volume
        report = {**slice_report(report, seg), **{k: report.get(k) for k in ("provenance", "severity_withheld")}}
    # the table lesions.csv gets from lungseg predict: 3D components, largest first
    report["lesions"] = lesion_table(loaded.volume, seg, volumes_in_ml=report.get("lung_volume_ml") is not None)
    if not loaded.is_2d:
        meta = loaded.volume.meta
        report["spacing_assumed"] = bool(meta.get("spacing_assumed", False))
        report["spacing_source"] = meta.get("spacing_source", "assumed" if meta.get("spacing_assumed") else "header")
        report["spacing_note"] = meta.get("spacing_note")
    if models:
        report["models"] = {task: dict(m) for task, m in models.items()}
    fraction = left_out_dense(
        loaded.volume.array, loaded.source_kind, seg.lung_labels, loaded.volume.spacing, loaded.is_2d
    )
    report["dense_tissue_left_out_percent_of_lung"] = 100.0 * fraction
    if fraction >= LEFT_OUT_WARN_FRACTION and "infection" in tuple(seg.tasks):
        report["warning"] = (
            f"The predicted lungs leave out dense tissue at their edge ({100 * fraction:.0f} % of the lung "
            "area): possibly consolidation. The infection model looks only inside the predicted lungs, so "
            "the infection found, and the involvement, may be too low."
        )
    return report


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


def report_headline(report: Mapping[str, Any], is_2d: bool = False) -> list[tuple[str, str]]:
    """The figures shown on top of the report (:func:`lungseg.app.report_view.headline`): lung volume,
    involvement per lung and severity for a volume; areas in pixels and percentages for a 2D slice;
    nothing for an implausible input (the page shows the warning instead)."""
    from lungseg.app.report_view import headline

    return headline(report, is_2d)


# --------------------------------------------------------------------------------------------
# errors


_CLASS_NAME = re.compile(r"\b[A-Z][A-Za-z0-9_]*(?:Error|Exception|Warning)\b:?\s*")
_TEMP_UPLOAD = re.compile(re.escape(tempfile.gettempdir().rstrip("/")) + r"/lungseg-upload-[^/\s'\"]*/([^\s'\"]+)")


def describe_error(exc: BaseException, step: str, names: Mapping[str, str] | None = None) -> str:
    """A short message for the page, without server paths or exception class names.

    A lungseg error's message as is, with any temporary upload path replaced by the file's original
    name (``names``: safe file name -> the name as uploaded). Any other error: the step and a pointer
    to the server log, which keeps the traceback.
    """
    if not isinstance(exc, LungsegError):
        return f"{step} failed. See the server log for details."
    names = dict(names or {})
    message = _TEMP_UPLOAD.sub(lambda m: names.get(m.group(1), m.group(1)), str(exc))
    message = _CLASS_NAME.sub("", message).strip()
    if len(message) > 600:
        message = message[:597] + "..."
    return f"{step}: {message}"
