"""lungseg web UI: upload a CT, see the lungs and the infection, evaluate against a ground truth.

Started by ``lungseg ui`` (``python -m streamlit run src/lungseg/app/streamlit_app.py ...``).
This script only lays out the page; the work is done by :mod:`lungseg.app.logic`. Every step runs
inside :func:`_guarded`, so bad input shows a short ``st.error`` (the traceback goes to the log)
and the page keeps working for the next upload.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, TypeVar

import numpy as np
import streamlit as st

from lungseg.app import logic
from lungseg.errors import LungsegError

logger = logging.getLogger("lungseg.app.page")
T = TypeVar("T")


def _guarded(step: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """Run one step; on any error show a short message on the page, log it and return None."""
    try:
        return fn(*args, **kwargs)
    except LungsegError as exc:
        logger.warning("%s: %s", step, exc)
        st.error(logic.describe_error(exc, step))
    except Exception as exc:  # noqa: BLE001 - the page must survive anything; the log keeps the traceback
        logger.exception("%s failed", step)
        st.error(logic.describe_error(exc, step))
    return None


def _session_memo(slot: str, key: Any, step: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """:func:`_guarded`, remembered in the session under ``slot`` while ``key`` stays the same
    (so moving the slice slider does not redo the download file or the scores). Errors are not kept."""
    cached = st.session_state.get(slot)
    if cached is not None and cached[0] == key:
        return cached[1]
    st.session_state.pop(slot, None)
    value = _guarded(step, fn, *args, **kwargs)
    if value is not None:
        st.session_state[slot] = (key, value)
    return value


@st.cache_resource(show_spinner="Loading the model...", max_entries=8)
def _cached_model(path: str, task: str, models_dir: str, mtime: float):
    """Load a trained model once per (path, modification time) for all sessions."""
    del mtime  # only part of the cache key: a model rewritten in place is loaded again
    return logic.load_model(path, task, models_dir)


def _model_mtime(path: str) -> float:
    try:
        return os.path.getmtime(path)
    except OSError:
        return 0.0


def _sidebar() -> tuple[str, str, dict[str, logic.ModelChoice], list[str]]:
    """The sidebar: models folder, segmentation choice, one model per task. Returns the selection."""
    st.sidebar.header("Settings")
    models_dir = st.sidebar.text_input(
        "Models folder",
        value=logic.default_models_dir(),
        key="models_dir",
        help=f"Folder of trained models (<variant>/model.keras/<version>/model.keras). "
        f"Default: ${logic.MODELS_DIR_ENV} or {logic.MODELS_DIR}.",
    )
    choice = st.sidebar.radio(
        "Segmentation", list(logic.TASK_CHOICES), index=2, key="choice",
        help="Infection is searched inside the predicted lungs, so it needs the lung model too.",
    )
    available = _guarded("Listing the trained models", logic.model_choices, models_dir) or {}
    missing = logic.missing_tasks(choice, available)
    if missing:
        st.sidebar.error(logic.missing_model_message(missing, models_dir))
    selected: dict[str, logic.ModelChoice] = {}
    for task in logic.REQUIRED_MODELS[choice]:
        options = available.get(task) or []
        if len(options) > 1:
            labels = [c.label for c in options]
            picked = st.sidebar.selectbox(f"{task.capitalize()} model", labels, key=f"model_{task}")
            selected[task] = options[labels.index(picked)] if picked in labels else options[0]
        elif options:
            selected[task] = options[0]
            st.sidebar.caption(f"{task.capitalize()} model: {options[0].label}")
    return models_dir, choice, selected, missing


def _read_input(uploaded) -> logic.LoadedInput | None:
    """Read the uploaded CT once per distinct file (kept in the session)."""
    max_mb = _guarded("Reading the upload limit", logic.upload_limit_mb)
    if max_mb is None:
        return None
    if uploaded.size / 1e6 > max_mb:  # before reading the bytes into memory
        _guarded("Checking the upload", logic.check_upload, uploaded.name, uploaded.size, max_mb=max_mb)
        return None
    data = uploaded.getvalue()
    digest = logic.digest_bytes(data)
    cached = st.session_state.get("_input")
    if cached is not None and cached.digest == digest and cached.name == uploaded.name:
        return cached
    st.session_state.pop("_input", None)
    st.session_state.pop("_seg", None)
    with st.spinner(f"Reading {uploaded.name}..."):
        loaded = _guarded(f"Reading {uploaded.name!r}", logic.read_upload, uploaded.name, data, max_mb=max_mb)
    if loaded is not None:
        st.session_state["_input"] = loaded
    return loaded


def _segment(loaded: logic.LoadedInput, choice: str, models_dir: str, selected: dict[str, logic.ModelChoice]):
    """Segment once per (image, choice, models); returns (key, segmentation, report) or None."""
    key = (loaded.digest, choice, tuple(sorted((t, c.path) for t, c in selected.items())))
    cached = st.session_state.get("_seg")
    if cached is not None and cached[0] == key:
        return cached
    models = {}
    for task, model_choice in selected.items():
        model = _guarded(
            f"Loading the {task} model {model_choice.label}",
            _cached_model, model_choice.path, task, models_dir, _model_mtime(model_choice.path),
        )
        if model is None:
            return None
        models[task] = model
    with st.spinner("Segmenting..."):
        seg = _guarded("Segmentation", logic.segment, loaded, models.get("lung"), models.get("infection"), choice)
    if seg is None:
        return None
    report = _guarded("Making the report", logic.make_report, seg, loaded) or {}
    st.session_state["_seg"] = (key, seg, report)
    return key, seg, report


def _show_original_only(loaded: logic.LoadedInput) -> None:
    index = loaded.shape[0] // 2
    image = _guarded("Showing the image", logic.display_slice, loaded, index)
    if image is not None:
        st.image(image, caption=f"Original ({loaded.name}, slice {index})", width=320)


def _show_results(loaded: logic.LoadedInput, choice: str, seg_key: Any, seg, report: dict) -> np.ndarray | None:
    """Images, report and download; returns the selected mask."""
    mask = _guarded("Preparing the mask", logic.selected_mask, seg, choice)
    if mask is None:
        return None
    n_slices = loaded.shape[0]
    index = 0
    if n_slices > 1:
        start = logic.default_slice(logic.lung_mask(seg))
        index = st.slider(
            "Slice (axial)", 0, n_slices - 1, value=start, key=f"slice_{loaded.digest[:12]}",
            help="Starts on the slice with the most lung.",
        )
    gray = _guarded("Showing the image", logic.display_slice, loaded, index)
    if gray is None:
        return mask
    labels = logic.display_labels(mask[index], choice)
    where = "" if loaded.is_2d else f", slice {index}/{n_slices - 1}"
    left, middle, right = st.columns(3)
    left.image(gray, caption=f"Original{where}", width="stretch")
    middle.image(logic.colour_mask(labels), caption=f"Predicted mask ({choice.lower()})", width="stretch")
    right.image(logic.overlay(gray, labels), caption="Overlay", width="stretch")
    st.caption(
        "Lungs in green, infection in red. Mask files: NIfTI holds labels 1 left lung, 2 right lung, "
        "3 infection (0/1 for the Infection choice); a PNG holds 0/255, or labels x 85 for Both."
    )

    st.subheader("Report")
    _show_report(report)

    download = _session_memo("_download", seg_key, "Preparing the download", logic.mask_download, loaded, mask, choice)
    if download is not None:
        data, file_name, mime = download
        label = "Download the mask (PNG)" if loaded.is_2d else "Download the mask (NIfTI, input grid)"
        st.download_button(label, data=data, file_name=file_name, mime=mime, key="download_mask", on_click="ignore")
    return mask


def _show_report(report: dict) -> None:
    if not report:
        st.info("No report for this segmentation.")
        return
    if report.get("no_lungs_found"):
        st.warning(report.get("message") or "No lungs were found in this image.")
    elif report.get("message"):
        st.write(report["message"])
    headline = logic.report_headline(report)
    if headline:
        cols = st.columns(len(headline))
        for col, (label, value) in zip(cols, headline):
            col.metric(label, value, help=report.get("severity_scale") if label == "Severity grade" else None)
    with st.expander("Full report"):
        st.json(report)


def _evaluation(loaded: logic.LoadedInput, choice: str, seg_key: Any, seg) -> None:
    st.subheader("Evaluation against a ground truth")
    kind = "PNG mask" if loaded.is_2d else "NIfTI mask (.nii / .nii.gz)"
    st.caption(
        "Label maps (1 left lung, 2 right lung, 3 infection; or x 85 in a PNG): lung = labels 1-3, "
        "infection = label 3. A binary 0/1 (or 0/255) mask is the mask of the selected task."
    )
    gt_file = st.file_uploader(
        f"Optional ground truth: a {kind} on the image's grid", key=f"gt_upload_{loaded.digest[:12]}"
    )
    if gt_file is None:
        return
    max_mb = _guarded("Reading the upload limit", logic.upload_limit_mb)
    if max_mb is None:
        return
    if gt_file.size / 1e6 > max_mb:
        _guarded("Checking the ground truth", logic.check_upload, gt_file.name, gt_file.size, max_mb=max_mb)
        return
    gt_key = (loaded.digest, gt_file.file_id, gt_file.name, gt_file.size)
    gt = _session_memo(
        "_gt", gt_key, f"Reading the ground truth {gt_file.name!r}",
        logic.read_ground_truth, gt_file.name, gt_file.getvalue(), loaded, max_mb=max_mb,
    )
    if gt is None:
        return
    binary_task = None
    if choice == "Both" and not logic.is_label_map(gt):
        binary_task = st.radio(
            "This binary ground truth is a mask of", ["lung", "infection"], horizontal=True, key="binary_task"
        )
    scores = _session_memo(
        "_scores", (seg_key, gt_key, binary_task), "Computing the scores", logic.evaluate, seg, gt, choice, binary_task
    )
    if scores is None:
        return
    for task, values in scores.items():
        cols = st.columns(len(values))
        for col, (name, value) in zip(cols, values.items()):
            col.metric(f"{logic.METRIC_LABELS[name]} ({task})", f"{value:.4f}")


def main() -> None:
    st.set_page_config(page_title="lungseg", layout="wide")
    st.title("Lung and COVID-19 infection segmentation")
    models_dir, choice, selected, missing = _sidebar()

    uploaded = st.file_uploader(
        "Chest CT: a 2D grayscale PNG/JPG slice, a NIfTI volume (.nii, .nii.gz) or a zipped DICOM series (.zip)",
        key="ct_upload",
    )
    if uploaded is None:
        for slot in ("_input", "_seg", "_download", "_gt", "_scores"):  # free the last image and its masks
            st.session_state.pop(slot, None)
        st.info("Upload a CT image to segment it.")
        return
    loaded = _read_input(uploaded)
    if loaded is None:
        return
    if missing:
        st.warning("No segmentation without a trained model (see the sidebar); showing the image only.")
        _show_original_only(loaded)
        return
    result = _segment(loaded, choice, models_dir, selected)
    if result is None:
        return
    seg_key, seg, report = result
    if _show_results(loaded, choice, seg_key, seg, report) is None:
        return
    _evaluation(loaded, choice, seg_key, seg)


main()
