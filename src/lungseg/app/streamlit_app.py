"""lungseg web UI: upload a CT, see the lungs and the infection, evaluate against a ground truth.

Started by ``lungseg ui`` (``python -m streamlit run src/lungseg/app/streamlit_app.py ...``).
This script lays out the page: the sidebar (models folder, segmentation, models), the viewer
(:mod:`lungseg.app.page_viewer`), the report and the evaluation (:mod:`lungseg.app.page_eval`). The
work is done by :mod:`lungseg.app.logic`. Every step runs guarded (:mod:`lungseg.app.page_common`), so
bad input shows a short ``st.error`` (the traceback goes to the log) and the page keeps working.
"""

from __future__ import annotations

import json
import os

import streamlit as st

from lungseg.app import logic
from lungseg.app.page_common import guarded, remember_upload_name, session_memo
from lungseg.app.page_eval import evaluation_section
from lungseg.app.page_viewer import viewer_section
from lungseg.app.provenance_view import provenance_lines, sidebar_provenance, spacing_note, synthetic_banner
from lungseg.app.report_view import models_line


@st.cache_resource(show_spinner="Loading the model...", max_entries=8)
def _cached_model(path: str, task: str, models_dir: str, mtime: float, precision: str = "float32"):
    """Load a trained model once per (path, modification time, precision) for all sessions."""
    del mtime  # only part of the cache key: a model rewritten in place is loaded again
    return logic.load_ui_model(path, task, models_dir, precision)


@st.cache_data(show_spinner=False, max_entries=64)
def _provenance(model: logic.ModelChoice, mtime: float) -> str:
    """A model's training data, environment and score (``lungseg models``' words), once per model file."""
    del mtime  # only part of the cache key
    return sidebar_provenance(model)


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
        "Segmentation",
        list(logic.TASK_CHOICES),
        index=2,
        key="choice",
        help="Infection is searched inside the predicted lungs, so it needs the lung model too.",
    )
    available = guarded("Listing the trained models", logic.model_choices, models_dir) or {}
    missing = logic.missing_tasks(choice, available)
    if missing:
        st.sidebar.error(logic.missing_model_message(missing, models_dir))
    selected: dict[str, logic.ModelChoice] = {}
    for task in logic.REQUIRED_MODELS[choice]:
        options = available.get(task) or []
        if len(options) > 1:
            labels = [c.label for c in options]
            picked = st.sidebar.selectbox(
                f"{task.capitalize()} model",
                labels,
                index=0,
                key=f"model_{task}",
                help="Finished models only (their config was written), best recorded validation or "
                "out-of-fold score first; the first is the default.",
            )
            selected[task] = options[labels.index(picked)] if picked in labels else options[0]
        elif options:
            selected[task] = options[0]
            st.sidebar.caption(f"{task.capitalize()} model: {options[0].label}")
    for task, model in selected.items():
        line = guarded(f"Reading the {task} model's provenance", _provenance, model, _model_mtime(model.path))
        if line:
            st.sidebar.caption(f"{task.capitalize()} model {model.variant}: {line}")
    st.sidebar.selectbox(
        "Precision",
        list(logic.PRECISION_CHOICES),
        index=0,
        key="precision",
        help="float32 (default), or compute in bfloat16 (mixed_bfloat16; auto: where the CPU has AMX-BF16 / "
        "AVX512-BF16), as lungseg predict --precision. The weights stay float32; docs/results.md gives the "
        "speed and how close the masks stay.",
    )
    return models_dir, choice, selected, missing


def _read_input(uploaded) -> logic.LoadedInput | None:
    """Read the uploaded CT once per distinct file (kept in the session)."""
    max_mb = guarded("Reading the upload limit", logic.upload_limit_mb)
    if max_mb is None:
        return None
    if uploaded.size / 1e6 > max_mb:  # before reading the bytes into memory
        guarded("Checking the upload", logic.check_upload, uploaded.name, uploaded.size, max_mb=max_mb)
        return None
    remember_upload_name(uploaded.name)
    data = uploaded.getvalue()
    digest = logic.digest_bytes(data)
    cached = st.session_state.get("_input")
    if cached is not None and cached.digest == digest and cached.name == uploaded.name:
        return cached
    st.session_state.pop("_input", None)
    st.session_state.pop("_seg", None)
    with st.spinner(f"Reading {uploaded.name}..."):
        loaded = guarded(f"Reading {uploaded.name!r}", logic.read_upload, uploaded.name, data, max_mb=max_mb)
    if loaded is not None:
        st.session_state["_input"] = loaded
    return loaded


def _segment(loaded: logic.LoadedInput, choice: str, models_dir: str, selected: dict[str, logic.ModelChoice]):
    """Segment once per (image, choice, models); returns (key, segmentation, report) or None."""
    precision = st.session_state.get("precision", "float32")
    models_key = tuple(sorted((t, c.path) for t, c in selected.items()))
    key = (loaded.digest, tuple(loaded.volume.spacing), choice, models_key, precision)
    cached = st.session_state.get("_seg")
    if cached is not None and cached[0] == key:
        return cached
    models = {}
    for task, model_choice in selected.items():
        model = guarded(
            f"Loading the {task} model {model_choice.label}",
            _cached_model,
            model_choice.path,
            task,
            models_dir,
            _model_mtime(model_choice.path),
            precision,
        )
        if model is None:
            return None
        models[task] = model
    with st.spinner("Segmenting..."):
        seg = guarded("Segmentation", logic.segment_upload, loaded, models.get("lung"), models.get("infection"), choice)
    if seg is None:
        return None
    models_used = {task: c.describe() for task, c in selected.items()}
    report = guarded("Making the report", logic.ui_report, seg, loaded, models_used) or {}
    if report:
        report["precision"] = getattr(models.get("lung"), "precision", precision)
    st.session_state["_seg"] = (key, seg, report)
    return key, seg, report


def _spacing(loaded: logic.LoadedInput) -> logic.LoadedInput | None:
    """The voxel-size field, offered when the upload's voxel size is probably a placeholder
    (``spacing_assumed``): a value given there replaces it, as ``lungseg predict --spacing`` does."""
    note = spacing_note(loaded.volume)
    if note is None:
        return loaded
    text = st.text_input(
        "Voxel size X,Y,Z (mm)",
        key=f"spacing_{loaded.digest[:12]}",
        placeholder="e.g. 0.7,0.7,5",
        help="x: left-right, y: front-back, z: between slices, as lungseg predict --spacing X,Y,Z. The figures, "
        "the lesion table and the views use it; the masks stay on the file's own grid.",
    ).strip()
    if not text:
        st.warning(note + " Give it in the voxel-size field.")
        return loaded
    return guarded(f"Setting the voxel size of {loaded.name!r}", logic.with_spacing, loaded, text)


def _show_original_only(loaded: logic.LoadedInput) -> None:
    index = loaded.shape[0] // 2
    image = guarded("Showing the image", logic.display_slice, loaded, index)
    if image is not None:
        st.image(image, caption=f"Original ({loaded.name}, slice {index})", width=320)


def _report_section(loaded: logic.LoadedInput, choice: str, seg_key, seg, report: dict) -> None:
    """The report: the models used, the figures (or the warning instead of them) and the downloads."""
    st.subheader("Report")
    implausible = getattr(seg, "implausible_input", None) or report.get("implausible_input")
    if implausible:
        st.warning(report.get("message") or f"Implausible input: {implausible}. No figures are given.")
    else:
        if report.get("message"):
            st.write(report["message"])
        headline = logic.report_headline(report, loaded.is_2d)
        if headline:
            cols = st.columns(len(headline))
            for col, (label, value) in zip(cols, headline):
                col.metric(label, value, help=report.get("severity_scale") if label == "Severity grade" else None)
        if report.get("warning"):
            st.warning(report["warning"])
    with st.expander("Full report"):
        st.json(report)
    mask = guarded("Preparing the mask", logic.selected_mask, seg, choice)
    if mask is None:
        return
    download = session_memo("_download", seg_key, "Preparing the download", logic.mask_download, loaded, mask, choice)
    left, right = st.columns(2)
    if download is not None:
        data, file_name, mime = download
        label = "Download the mask (PNG)" if loaded.is_2d else "Download the mask (NIfTI, input grid)"
        left.download_button(label, data=data, file_name=file_name, mime=mime, key="download_mask", on_click="ignore")
    right.download_button(
        "Download the report (JSON)",
        data=json.dumps(report, indent=2, default=str),
        file_name=f"{logic.file_stem(loaded.name)}_report.json",
        mime="application/json",
        key="download_report",
        on_click="ignore",
    )


def main() -> None:
    st.set_page_config(page_title="lungseg", layout="wide")
    st.title("Lung and COVID-19 infection segmentation")
    models_dir, choice, selected, missing = _sidebar()

    uploaded = st.file_uploader(
        "Chest CT: a 2D grayscale PNG/JPG slice, a NIfTI volume (.nii, .nii.gz) or a zipped DICOM series (.zip)",
        key="ct_upload",
    )
    if uploaded is None:
        for slot in (
            "_input",
            "_seg",
            "_download",
            "_gt",
            "_scores",
            "_viewer_cache",
            "_per_lung",
            "_volumes",
            "_per_slice_lung",
            "_per_slice_infection",
        ):  # free the last image and its masks
            st.session_state.pop(slot, None)
        st.info("Upload a CT image to segment it.")
        return
    loaded = _read_input(uploaded)
    if loaded is None:
        return
    loaded = _spacing(loaded)
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
    st.caption(f"Models used: {models_line(report.get('models') or {c.task: c.describe() for c in selected.values()})}")
    for line in provenance_lines(report.get("provenance") or {}):
        st.caption(line)
    banner = synthetic_banner(seg, report)
    if banner:
        st.warning(banner)
    viewer_box = st.container()
    _report_section(loaded, choice, seg_key, seg, report)
    evaluation = evaluation_section(loaded, choice, seg_key, seg)
    with viewer_box:
        guarded("Showing the images", viewer_section, loaded, seg, seg_key, choice, evaluation, report.get("lesions"))


main()
