"""The page's "Evaluation against a ground truth" section: upload, the task of a binary mask (asked,
never assumed), scores, Dice per lung and per slice, and the volumes of both masks side by side."""

from __future__ import annotations

import streamlit as st

from lungseg.app import logic
from lungseg.app.page_common import guarded, remember_upload_name, session_memo


def _per_slice_chart(seg, gt, tasks, binary_task, key) -> None:
    import pandas as pd

    curves = {}
    for task in tasks:
        values = session_memo(
            f"_per_slice_{task}", key, f"Dice per slice ({task})", logic.per_slice_dice, seg, gt, task, binary_task
        )
        if values is not None:
            curves[task] = values
    if not curves:
        return
    table = pd.DataFrame(curves)
    table.index.name = "slice (z)"
    st.markdown("**Per-slice Dice** along z (axial slices; no point where both masks are empty)")
    st.line_chart(table, x_label="axial slice (z, towards the head)", y_label="Dice", height=220)


def evaluation_section(loaded: logic.LoadedInput, choice: str, seg_key, seg) -> dict | None:
    """Read and score an optional ground truth. Returns what the viewer's error map needs
    (``gt``, ``binary_task``, ``tasks``, ``key``), or None when nothing is scored."""
    st.subheader("Evaluation against a ground truth")
    kind = "PNG mask" if loaded.is_2d else "NIfTI mask (.nii / .nii.gz)"
    st.caption(
        "Label maps (1 left lung, 2 right lung, 3 infection; or x 85 in a PNG): lung = labels 1-3, "
        "infection = label 3. For a binary 0/1 (or 0/255) mask you say which task it is the mask of."
    )
    gt_file = st.file_uploader(
        f"Optional ground truth: a {kind} on the image's grid", key=f"gt_upload_{loaded.digest[:12]}"
    )
    if gt_file is None:
        return None
    remember_upload_name(gt_file.name)
    max_mb = guarded("Reading the upload limit", logic.upload_limit_mb)
    if max_mb is None:
        return None
    if gt_file.size / 1e6 > max_mb:
        guarded("Checking the ground truth", logic.check_upload, gt_file.name, gt_file.size, max_mb=max_mb)
        return None
    gt_key = (loaded.digest, gt_file.file_id, gt_file.name, gt_file.size)
    gt = session_memo(
        "_gt",
        gt_key,
        f"Reading the ground truth {gt_file.name!r}",
        logic.read_ground_truth_upload,
        gt_file.name,
        gt_file.getvalue(),
        loaded,
        max_mb=max_mb,
    )
    if gt is None:
        return None
    binary_task = None
    if not logic.is_label_map(gt):
        binary_task = st.radio(
            f"{gt_file.name} is a binary mask (0/1): it is the mask of",
            list(logic.BINARY_TASKS),
            index=None,
            horizontal=True,
            key=f"binary_task_{gt_file.file_id}",
        )
        if binary_task is None:
            st.warning("Choose the task of this binary mask: nothing is scored until you do.")
            return None
    scores = session_memo(
        "_scores", (seg_key, gt_key, binary_task), "Computing the scores", logic.evaluate, seg, gt, choice, binary_task
    )
    if scores is None:
        return None
    for task, values in scores.items():
        cols = st.columns(len(values))
        for col, (name, value) in zip(cols, values.items()):
            col.metric(f"{logic.METRIC_LABELS[name]} ({task})", f"{value:.4f}")
    st.caption("F1 is not shown: on binary masks it equals the Dice coefficient.")
    tasks = list(scores)
    key = (seg_key, gt_key, binary_task)  # the figures below are kept while it stays the same
    per_lung = session_memo("_per_lung", key, "Dice per lung", logic.per_lung_dice, seg, gt, tasks)
    rows = session_memo(
        "_volumes", key, "Volumes", logic.volume_rows, seg, gt, tasks, binary_task, loaded.volume.spacing, loaded.is_2d
    )
    left, right = st.columns(2)
    if per_lung:
        left.markdown("**Dice per lung** (against the ground truth's left and right lung)")
        left.dataframe(
            [
                {"task": t, "left lung": f"{d['left']:.4f}", "right lung": f"{d['right']:.4f}"}
                for t, d in per_lung.items()
            ],
            hide_index=True,
        )
    elif per_lung is not None:
        left.caption("No Dice per lung: the ground truth is not a label map with both lungs (1 left, 2 right).")
    if rows:
        right.markdown("**Predicted and ground truth**" + (" (pixels)" if loaded.is_2d else " (ml)"))
        right.dataframe(
            [{k: (f"{v:.1f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows], hide_index=True
        )
    if not loaded.is_2d:
        _per_slice_chart(seg, gt, tasks, binary_task, key)
    return {"gt": gt, "binary_task": binary_task, "tasks": tasks, "key": key}
