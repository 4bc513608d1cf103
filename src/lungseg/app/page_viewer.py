"""The page's image viewer: NiiVue (WebGL: axial, coronal and sagittal views with a linked crosshair,
radiological convention) for volumes, and PNG slice images for a 2D slice or when WebGL is unavailable.

The pictures and data come from :mod:`lungseg.app.viewer` (pure functions); this module lays them out.
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


def _controls(loaded, evaluation: dict | None) -> dict:
    """Window, opacities and the error-map switch, in one row."""
    cols = st.columns(4)
    out: dict[str, Any] = {"preset": None, "error_task": None}
    if loaded.source_kind == "hu":
        out["preset"] = cols[0].selectbox("Window (level/width, HU)", list(viewer.WINDOW_PRESETS), key="window")
    else:
        cols[0].caption("The input is already 0-255: it is shown as it is (no HU window).")
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


def _png_views(loaded, seg, seg_key, choice: str, controls: dict, evaluation: dict | None) -> None:
    """Axial, coronal and sagittal PNG views through a point; "next lesion" steps through lesions."""
    gray = _cache(
        "display",
        (loaded.digest, controls["preset"]),
        viewer.display_volume,
        loaded.volume.array,
        loaded.source_kind,
        controls["preset"],
    )
    found = _cache("lesions", seg_key, viewer.lesions, seg.infection)
    key = f"point_{loaded.digest[:12]}"
    if key not in st.session_state:
        st.session_state[key] = viewer.start_point(seg.lung_labels, seg.infection)
        st.session_state["_lesion"] = -1

    def next_lesion() -> None:
        st.session_state["_lesion"] = (st.session_state.get("_lesion", -1) + 1) % len(found)
        st.session_state[key] = found[st.session_state["_lesion"]].centre
        st.session_state[f"z_{key}"] = found[st.session_state["_lesion"]].centre[0]

    left, right = st.columns([1, 3])
    left.button(
        "Next lesion",
        on_click=next_lesion,
        disabled=not found,
        key="next_lesion",
        help="Step through the predicted infection regions, largest first.",
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
    where = (
        f"lesion {lesion + 1} of {len(found)} ({found[lesion].voxels * loaded.volume.voxel_volume_ml:.2f} ml), "
        if found and lesion >= 0
        else f"{len(found)} lesions; "
        if found
        else "no infection found; "
    )
    st.caption(
        f"Position: {where}voxel (z {point[0]}, y {point[1]}, x {point[2]}), scanner x {mm[0]:.1f}, "
        f"y {mm[1]:.1f}, z {mm[2]:.1f} mm (RAS). Radiological convention: the patient's right on the left."
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
    ct = _cache(
        "nv_ct",
        (loaded.digest, controls["preset"]),
        lambda: viewer.viewer_nifti(
            volume, viewer.display_volume(volume.array, loaded.source_kind, controls["preset"]), 255, factor
        ),
    )

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
    niivue_viewer(
        nifti_data=ct,
        filename=f"{logic.file_stem(loaded.name)}.nii.gz",
        overlays=overlays,
        height=640,
        view_mode="multiplanar",
        styled=True,
        update_interval_ms=None,
        key=f"niivue_{loaded.digest[:12]}",
        settings={"crosshair": True, "radiological": True, "colorbar": False, "interpolation": False},
    )
    found = _cache("lesions", seg_key, viewer.lesions, seg.infection)
    where = ""
    if found:
        mm = viewer.position_mm(volume, found[0].centre)
        where = (
            f" The largest of {len(found)} predicted lesions is at x {mm[0]:.1f}, y {mm[1]:.1f}, "
            f"z {mm[2]:.1f} mm (scanner RAS, as in the viewer's footer)."
        )
    if factor > 1:
        where += (
            f" This large volume is shown here at 1/{factor} of its resolution in-plane (the data go to the "
            "browser on every change); the slice images, the masks and all figures use the full grid."
        )
    st.caption(
        "Axial, coronal and sagittal views and a 3D rendering, with a linked crosshair: click or drag to move "
        "it; the footer shows its position in mm. Radiological convention (R on the left). "
        "NiiVue opens in the middle of the volume." + where + " The slice images step from lesion to lesion."
    )


def viewer_section(loaded, seg, seg_key, choice: str, evaluation: dict | None) -> None:
    """The viewer of a volume (NiiVue or PNG views) or of a 2D slice (three PNG panels)."""
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
    controls = _controls(loaded, evaluation)
    if controls["error_task"]:
        _legend(controls["error_task"])
    if mode == NIIVUE:
        guarded("Showing the viewer", _niivue, loaded, seg, seg_key, choice, controls, evaluation)
    else:
        guarded("Showing the slice images", _png_views, loaded, seg, seg_key, choice, controls, evaluation)


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
