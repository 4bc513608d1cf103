"""Evaluate one trained variant on its held-out patients.

* Per slice (the paper's metrics) on the held-out model-input slices, at model resolution.
* Per case on the original grid: predictions go back through the recorded crop, pad and resize
  (:func:`lungseg.imaging.restore_slices`) and are compared with the full ground-truth volume, with
  NSD and HD95 using the voxel spacing from the NIfTI header.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lungseg.evaluation.metrics import NSD_TOLERANCE_MM, slice_metrics, summarize_slices, volume_metrics
from lungseg.imaging import PreprocessConfig, crop_and_resize, restore_slices
from lungseg.inference.segment import predict_probabilities
from lungseg.models.data import split_model_input

logger = logging.getLogger(__name__)
Lazy = Callable[[], dict[str, np.ndarray]]
CASE_COLUMNS = ("dice", "iou", "precision", "recall", "nsd", "hd95")
EMPTY_SLICE_RULE = "a slice where prediction and ground truth are both empty scores 1 on every metric"


@dataclass
class EvalResult:
    """The evaluation of one variant.

    Attributes:
        summary: the metrics summary (``metrics.json``): slice-level ``slice_*`` and case-level ``case_*``.
        per_slice: one row per held-out slice.
        per_case: one row per held-out case, on the original grid.
        overlay: the arrays and titles of the best / median / worst slice figure.
    """

    summary: dict[str, Any]
    per_slice: pd.DataFrame
    per_case: pd.DataFrame
    overlay: dict[str, Any]


def predict_case(model, config: dict[str, Any], image_u8: np.ndarray, lung: np.ndarray, batch_size: int) -> np.ndarray:
    """Binary prediction of one enhanced case on its own (canonical) grid.

    The lung task crops every slice to the body. The infection task predicts nothing on slices
    without lung: it crops to the ground-truth lungs (its training protocol), or, with
    ``crop_mode='body'``, to the body, its prediction then kept inside the ground-truth lungs' filled
    outline (as the combined system keeps it inside the predicted lungs).
    """
    from lungseg.imaging import fill_holes_2d

    prep = PreprocessConfig.from_dict(config)
    pred = np.zeros(image_u8.shape, np.uint8)
    infection = config.get("task") == "infection"
    in_lung = prep.crop_mode == "lung_mask" or infection
    idx = np.flatnonzero((lung > 0).any(axis=(1, 2))) if in_lung else np.arange(len(image_u8))
    if idx.size == 0:
        return pred
    imgs, recs = crop_and_resize(image_u8, prep, lung_mask=lung, index=idx)
    probs = restore_slices(predict_probabilities(model, imgs, batch_size), recs)
    found = probs >= float(config["threshold"])
    if infection and prep.crop_mode == "body":
        found &= fill_holes_2d(lung[idx] > 0).view(bool)
    pred[idx] = found
    return pred


def case_table_metrics(per_case: pd.DataFrame) -> dict[str, float]:
    """``case_<metric>``: the mean over cases of each per-case metric (infinite HD95 left out)."""
    out: dict[str, float] = {}
    if per_case.empty:
        return out
    for col in CASE_COLUMNS:
        finite = per_case[col].replace([np.inf, -np.inf], np.nan)
        out[f"case_{col}"] = float(finite.mean()) if finite.notna().any() else float("nan")
    return out


def evaluate_cases(model, model_config: dict[str, Any], cases: list[str], enhanced_cases: dict[str, Lazy],
                   batch_size: int) -> pd.DataFrame:
    """Per-case metrics on the original grid: Dice, IoU, precision, recall, NSD, HD95."""
    task = model_config["task"]
    rows = []
    for case in tqdm(cases, desc=f"evaluate {task} cases", unit="case"):
        rec = enhanced_cases[case]()
        gt = (rec["lung"] > 0) if task == "lung" else (rec["infection"] > 0)
        pred = predict_case(model, model_config, rec["image"], rec["lung"], batch_size)
        rows.append({"case_id": case, **volume_metrics(pred, gt, tuple(rec["spacing"]), NSD_TOLERANCE_MM[task])})
    return pd.DataFrame(rows, columns=["case_id", *CASE_COLUMNS] if not rows else None)


def overlay_figure_data(x: np.ndarray, y: np.ndarray, pred: np.ndarray, per_slice: pd.DataFrame,
                        variant: str) -> dict[str, Any]:
    """The best, median and worst held-out slices (by Dice, among slices with ground truth)."""
    from lungseg.evaluation.plots import select_best_median_worst

    dice_vals = per_slice["dice"].to_numpy()
    eligible = per_slice["gt_pixels"].to_numpy() > 0
    picks = select_best_median_worst(dice_vals, eligible=eligible if eligible.any() else None)
    picks = {k: int(picks[k]) for k in ("best", "median", "worst")}
    rows = list(picks.values())
    images = x[rows]
    if images.ndim == 4 and images.shape[-1] > 1:  # a 2.5D stack: the slice itself is the middle channel
        images = images[..., images.shape[-1] // 2]
    return {
        "images": images, "gt": y[rows], "pred": pred[rows],
        "titles": [f"{k}: {per_slice.case_id.iloc[i]} slice {per_slice.slice_index.iloc[i]}, Dice {dice_vals[i]:.3f}"
                   for k, i in picks.items()],
        "suptitle": f"{variant}: held-out slices (ground truth vs prediction)",
    }


def evaluate_variant(
    model,
    model_config: dict[str, Any],
    model_input: dict[str, np.ndarray],
    case_split: pd.DataFrame,
    enhanced_cases: dict[str, Lazy],
    batch_size: int,
) -> EvalResult:
    """Evaluate one variant on the ``val`` patients of ``case_split``, per slice and per case."""
    task = model_config["task"]
    variant = f"{task}_{model_config['architecture']}"
    x_val, y_val, idx = split_model_input(model_input, case_split, "val")
    probs = predict_probabilities(model, x_val, batch_size)
    pred = (probs >= float(model_config["threshold"])).astype(np.uint8)
    per_slice = slice_metrics(pred, y_val)
    per_slice.insert(0, "case_id", model_input["case_ids"][idx])
    per_slice.insert(1, "slice_index", model_input["slice_index"][idx])
    slice_summary = summarize_slices(per_slice.drop(columns=["case_id", "slice_index"]))

    val_cases = sorted(set(model_input["case_ids"][idx]))
    if (case_split["subset"] == "mixed").all():
        logger.warning("Leaky slice-level split: no held-out patient, so no per-case evaluation")
        val_cases = []
    per_case = evaluate_cases(model, model_config, val_cases, enhanced_cases, batch_size)
    summary = {
        "variant": variant, "task": task, "architecture": model_config["architecture"],
        "dataset": model_config.get("dataset"), "image_size": model_config["image_size"],
        "split": str(case_split["method"].iloc[0]), "n_val_cases": len(val_cases), "n_val_slices": int(len(x_val)),
        "nsd_tolerance_mm": NSD_TOLERANCE_MM[task], "empty_slice_rule": EMPTY_SLICE_RULE,
        **{f"slice_{k}": v for k, v in slice_summary.items()},
        **case_table_metrics(per_case),
    }
    logger.info("%s: slice Dice %.4f, case Dice %.4f", variant, summary.get("slice_dice", float("nan")),
                summary.get("case_dice", float("nan")))
    return EvalResult(summary, per_slice, per_case, overlay_figure_data(x_val, y_val, pred, per_slice, variant))
