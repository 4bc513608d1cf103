"""The page's image viewer: NiiVue (WebGL: axial, coronal and sagittal views with a linked crosshair,
radiological convention) for volumes, and PNG slice images for a 2D slice or when WebGL is unavailable.

The pictures and data come from :mod:`lungseg.app.viewer` (pure functions); this module lays them out.
The whole section is one ``st.fragment``: moving a slider, choosing a lesion or moving NiiVue's crosshair
reruns only this section. NiiVue gets the CT once per upload: its bytes are made once per upload and
voxel size (cached, and gzipped without a time stamp), the component has a stable key, and
niivue-streamlit 0.3.0 reloads its base image only when those bytes change, so opacity, error-map and
ground-truth changes reload only the overlays.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

from lungseg.app import logic, viewer
from lungseg.app.page_common import guarded

NIIVUE = "Multiplanar viewer (NiiVue, WebGL)"
PNG_VIEWS = "Slice images (PNG, no WebGL needed)"
LUNG_RGB = (60, 200, 90)
INFECTION_RGB = (235, 60, 40)


def _cache(slot: str, key: Any, fn, *args):
    """A small per-session cache of display data (one entry per slot)."""
    store = st.session_state.setdefault("_viewer_cache", {})
    hit = store.get(slot)
    if hit is not None and hit[0] == key:
        return hit[1]
    value = fn(*args)
    store[slot] = (key, value)
    return value


def _legend(task: str) -> None:
    parts = " · ".join(f":{colour}[■ {name}]" for name, colour in viewer.ERROR_CODES.values())
    st.markdown(f"**Error map ({task})**: {parts}")


FREE_WINDOW = "Free (level / width)"


def _window(cols, loaded, png: bool):
    """The window of the slice images: a preset, or a free level and width in HU."""
    if loaded.source_kind != "hu":
        cols[0].caption("The input is already 0-255: it is shown as it is (no HU window).")
        return None
    if not png:
        cols[0].caption(
            "Window: NiiVue opens in the lung window and holds the CT in HU; right-drag over a region to "
            "window on it, or use its ColorScale menu. (The slice images have their own window control.)"
        )
        return None
    preset = cols[0].selectbox("Window (level/width, HU)", [*viewer.WINDOW_PRESETS, FREE_WINDOW], key="window")
    if preset != FREE_WINDOW:
        return preset
    level = cols[0].number_input("Level (HU)", -1500.0, 3000.0, -600.0, 10.0, key="window_level")
    width = cols[0].number_input("Width (HU)", 1.0, 5000.0, 1500.0, 10.0, key="window_width")
    return float(level), float(width)


def _controls(loaded, evaluation: dict | None, png: bool) -> dict:
    """Window (slice images), opacities and the error-map switch, in one row."""
    cols = st.columns(4)
    out: dict[str, Any] = {"preset": _window(cols, loaded, png), "error_task": None}
    out["lung_opacity"] = cols[1].slider("Lungs opacity", 0.0, 1.0, 0.2, 0.05, key="lung_opacity")
    out["opacity"] = cols[2].slider("Infection / error map opacity", 0.0, 1.0, 0.6, 0.05, key="overlay_opacity")
    if evaluation:
        tasks = evaluation["tasks"]
        show = cols[3].toggle("Error map against the ground truth", value=True, key="show_error_map")
        if show:
            task = (
                tasks[0]
                if len(tasks) == 1
                else cols[3].radio("Error map of", tasks, index=len(tasks) - 1, horizontal=True, key="error_map_task")
            )
            out["error_task"] = task
    return out


def _error_codes(seg, evaluation: dict, task: str) -> np.ndarray | None:
    key = (evaluation["key"], task)
    return _cache(
        "error_map",
        key,
        lambda: guarded(
            "Making the error map", logic.task_error_map, seg, evaluation["gt"], task, evaluation["binary_task"]
        ),
    )


def _points(seg, seg_key) -> list[tuple[int, int, int]]:
    """A voxel on each lesion, in the lesion table's order."""
    return _cache("lesion_points", seg_key, viewer.lesion_points, seg.infection)


def _point_key(loaded) -> str:
    return f"point_{loaded.digest[:12]}"


def go_to_lesion(loaded, points, index: int) -> None:
    """Move the slice images to lesion ``index`` (0-based, the lesion table's order)."""
    key = _point_key(loaded)
    st.session_state["_lesion"] = index
    st.session_state[key] = points[index]
    st.session_state[f"z_{key}"] = points[index][0]


def _png_views(loaded, seg, seg_key, choice: str, controls: dict, evaluation: dict | None, rows: list) -> None:
    """Axial, coronal and sagittal PNG views through a point; "next lesion" steps through the lesion table."""
    gray = _cache(
        "display",
        (loaded.digest, controls["preset"]),
        viewer.display_volume,
        loaded.volume.array,
        loaded.source_kind,
        controls["preset"],
    )
    points = _points(seg, seg_key)
    key = _point_key(loaded)
    if key not in st.session_state:
        st.session_state[key] = viewer.start_point(seg.lung_labels, seg.infection)
        st.session_state["_lesion"] = -1

    left, right = st.columns([1, 3])
    left.button(
        "Next lesion",
        on_click=lambda: go_to_lesion(loaded, points, (st.session_state.get("_lesion", -1) + 1) % len(points)),
        disabled=not points,
        key="next_lesion",
        help="Step through the lesions of the lesion table (3D connected regions), largest first.",
    )
    st.session_state.setdefault(f"z_{key}", int(st.session_state[key][0]))  # the slider's value lives there
    z = right.slider("Axial slice", 0, loaded.shape[0] - 1, key=f"z_{key}")
    point = (int(z), *st.session_state[key][1:])
    st.session_state[key] = point
    layers = []
    if controls["lung_opacity"] > 0 and not controls["error_task"]:
        layers.append(((np.asarray(seg.lung_labels) > 0).view(np.uint8), {1: LUNG_RGB}, controls["lung_opacity"]))
    layers.append(_top_layer(seg, choice, controls, evaluation))
    views = viewer.orthogonal_views(gray, layers, point, loaded.volume.spacing)
    cols = st.columns(3)
    for col, (name, image) in zip(cols, views.items()):
        col.image(image, caption=name, width="stretch")
    mm = viewer.position_mm(loaded.volume, point)
    lesion = st.session_state.get("_lesion", -1)
    size = ""
    if rows and 0 <= lesion < len(rows):
        ml = rows[lesion].get("volume_ml")
        size = f" ({ml:.2f} ml)" if ml is not None else f" ({rows[lesion]['voxels']} voxels)"
    where = (
        f"lesion {lesion + 1} of {len(rows)}{size}, "
        if rows and 0 <= lesion < len(rows)
        else f"{len(rows)} lesions; "
        if rows
        else "no infection found; "
    )
    value = float(np.asarray(loaded.volume.array)[point])
    intensity = f" {value:.0f} HU here." if loaded.source_kind == "hu" else f" Value {value:.0f} (0-255) here."
    st.caption(
        f"Position: {where}voxel (z {point[0]}, y {point[1]}, x {point[2]}), scanner x {mm[0]:.1f}, "
        f"y {mm[1]:.1f}, z {mm[2]:.1f} mm (RAS).{intensity} Radiological convention: the patient's right on the left."
    )


def _top_layer(seg, choice: str, controls: dict, evaluation: dict | None):
    """(codes, colours, opacity) of the top overlay: the error map, or the infection (or the lungs
    for the "Lungs" choice)."""
    if controls["error_task"] and evaluation:
        codes = _error_codes(seg, evaluation, controls["error_task"])
        if codes is not None:
            return codes, viewer.ERROR_RGB, controls["opacity"]
    if choice == "Lungs":
        return (np.asarray(seg.lung_labels) > 0).view(np.uint8), {1: LUNG_RGB}, max(controls["lung_opacity"], 0.3)
    return (np.asarray(seg.infection) > 0).astype(np.uint8), {1: INFECTION_RGB}, controls["opacity"]


def _niivue(loaded, seg, seg_key, choice: str, controls: dict, evaluation: dict | None) -> None:
    from niivue_component import niivue_viewer

    volume = loaded.volume
    factor = viewer.viewer_factor(volume.array.shape)
    # once per upload and voxel size: the same bytes on every rerun, so NiiVue does not load the CT again
    ct = _cache("nv_ct", (loaded.digest, tuple(volume.spacing)), viewer.viewer_ct, volume, loaded.source_kind, factor)

    def mask_overlay(slot: str, key: Any, mask, opacity: float) -> dict:
        """One NiiVue overlay of the boolean ``mask()`` (``slot``: lungs, infection, tp, fp, fn), cached per ``key``."""
        data = _cache(f"nv_{slot}", key, lambda: viewer.viewer_nifti(volume, mask(), 1, factor, masks=True))
        return {"data": data, "name": f"{slot}.nii.gz", "colormap": viewer.OVERLAY_COLORMAPS[slot], "opacity": opacity}

    overlays = []
    if controls["lung_opacity"] > 0 and not controls["error_task"]:  # the error map's green is its true positives
        lungs = mask_overlay("lungs", seg_key, lambda: np.asarray(seg.lung_labels) > 0, controls["lung_opacity"])
        overlays.append(lungs)
    if controls["error_task"] and evaluation:
        codes = _error_codes(seg, evaluation, controls["error_task"])
        if codes is not None:
            key = (evaluation["key"], controls["error_task"])
            for code, slot in ((1, "tp"), (2, "fp"), (3, "fn")):
                overlays.append(mask_overlay(slot, key, lambda c=code: codes == c, controls["opacity"]))
    elif "infection" in logic.TASK_CHOICES[choice]:
        overlays.append(mask_overlay("infection", seg_key, lambda: np.asarray(seg.infection) > 0, controls["opacity"]))
    clicked = niivue_viewer(
        nifti_data=ct,
        filename=f"{logic.file_stem(loaded.name)}.nii.gz",
        overlays=overlays,
        height=640,
        view_mode="multiplanar",
        styled=True,
        update_interval_ms=300,  # the crosshair's position and value come back (a rerun of this section only)
        key=f"niivue_{loaded.digest[:12]}",
        settings={"crosshair": True, "radiological": True, "colorbar": False, "interpolation": False},
    )
    st.caption(_crosshair_text(loaded, clicked))
    if factor > 1:
        st.caption(
            f"This large volume is shown here at 1/{factor} of its resolution in-plane (its data go to the "
            "browser once per upload); the slice images, the masks and all figures use the full grid."
        )
    st.caption(
        "Axial, coronal and sagittal views and a 3D rendering, with a linked crosshair: click or drag to move "
        "it; the footer shows its position in mm. Radiological convention (R on the left). NiiVue opens in "
        "the middle of the volume: niivue-streamlit 0.3.0 cannot move its crosshair from Python, so choosing "
        "a lesion in the table gives its position in mm to go to; the slice images move to it."
    )


def _crosshair_text(loaded, clicked) -> str:
    """The crosshair's position and the CT's value there, as NiiVue reports them (HU for HU input)."""
    if not isinstance(clicked, dict) or clicked.get("type") != "voxel_click":
        return "Crosshair: click in the viewer to read the position and the CT value here."
    x, y, z = (float(v) for v in clicked.get("mm") or (0, 0, 0))
    unit = "HU" if loaded.source_kind == "hu" else "(0-255)"
    return f"Crosshair: x {x:.1f}, y {y:.1f}, z {z:.1f} mm (scanner RAS); CT value {float(clicked.get('value', 0)):.0f} {unit}."


def _lesion_table(loaded, seg, seg_key, rows: list) -> None:
    """The lesion table (lesions.csv's rows); choosing a row moves the slice images to the lesion."""
    from lungseg.app.lesions_view import lesion_frame, selected_row

    points = _points(seg, seg_key)
    if not rows:
        st.caption("Lesions: none (no infection predicted).")
        return
    st.markdown(f"**Lesions** ({len(rows)}: 3D connected regions, largest first; as lesions.csv)")
    table = f"lesion_table_{loaded.digest[:12]}"

    def chosen() -> None:  # before the rerun, so the slice slider can still be moved
        row = selected_row(st.session_state.get(table))
        if row is not None and row < len(points):
            go_to_lesion(loaded, points, row)

    st.dataframe(
        lesion_frame(rows),
        hide_index=True,
        on_select=chosen,
        selection_mode="single-row",
        key=table,
        height=min(36 * (len(rows) + 1) + 2, 250),
    )
    row = selected_row(st.session_state.get(table))
    if row is not None and row < len(points):
        mm = viewer.position_mm(loaded.volume, points[row])
        st.caption(f"Lesion {row + 1}: x {mm[0]:.1f}, y {mm[1]:.1f}, z {mm[2]:.1f} mm (scanner RAS).")


@st.fragment
def viewer_section(loaded, seg, seg_key, choice: str, evaluation: dict | None, lesions: list | None = None) -> None:
    """The viewer of a volume (NiiVue or PNG views, and the lesion table: ``lesions``, the report's rows)
    or of a 2D slice (three PNG panels)."""
    if loaded.is_2d:
        st.caption("View: slice images (a 2D input has no other planes).")
        _slice_panels(loaded, seg, choice, evaluation)
        return
    mode = st.radio(
        "View",
        [NIIVUE, PNG_VIEWS],
        horizontal=True,
        key="view_mode",
        help="The slice images need no WebGL: use them when the multiplanar viewer stays blank.",
    )
    st.caption(f"View in use: {mode}.")
    controls = _controls(loaded, evaluation, png=mode == PNG_VIEWS)
    if controls["error_task"]:
        _legend(controls["error_task"])
    if mode == NIIVUE:
        guarded("Showing the viewer", _niivue, loaded, seg, seg_key, choice, controls, evaluation)
    else:
        guarded("Showing the slice images", _png_views, loaded, seg, seg_key, choice, controls, evaluation, lesions or [])
    guarded("Showing the lesions", _lesion_table, loaded, seg, seg_key, lesions or [])


def _slice_panels(loaded, seg, choice: str, evaluation: dict | None) -> None:
    """A 2D slice: original, predicted mask and overlay (and the error map against a ground truth)."""
    mask = logic.selected_mask(seg, choice)
    gray = logic.display_slice(loaded, 0)
    labels = logic.display_labels(mask[0], choice)
    left, middle, right = st.columns(3)
    left.image(gray, caption="Original", width="stretch")
    middle.image(logic.colour_mask(labels), caption=f"Predicted mask ({choice.lower()})", width="stretch")
    right.image(logic.overlay(gray, labels), caption="Overlay", width="stretch")
    st.caption("Lungs in green, infection in red. Mask files: a PNG holds 0/255, or labels x 85 for Both.")
    if evaluation:
        tasks = evaluation["tasks"]
        task = (
            tasks[-1]
            if len(tasks) == 1
            else st.radio("Error map of", tasks, index=len(tasks) - 1, horizontal=True, key="error_map_task")
        )
        codes = _error_codes(seg, evaluation, task)
        if codes is not None:
            _legend(task)
            st.image(viewer.blend(gray, codes[0], viewer.ERROR_RGB, 0.7), caption=f"Error map ({task})", width=360)
