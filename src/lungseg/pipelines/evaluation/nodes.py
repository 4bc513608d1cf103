"""Evaluation nodes.

* Per slice (the paper's metrics) on the held-out model-input slices, at model resolution.
* Per case on the original grid: predictions go back through the recorded crop, pad and resize
  (``lungseg.imaging.restore_slices``) and are compared with the full ground-truth volume, with
  NSD and HD95 using the voxel spacing from the NIfTI header.
* A classical baseline (no learning) on the same held-out cases.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lungseg.evaluation.metrics import NSD_TOLERANCE_MM, slice_metrics, summarize_slices, volume_metrics
from lungseg.imaging import PreprocessConfig, crop_and_resize, restore_slices
from lungseg.inference.segment import predict_probabilities as predict_probs
from lungseg.pipelines.training.nodes import split_model_input

logger = logging.getLogger(__name__)
Lazy = Callable[[], dict[str, np.ndarray]]


def predict_case(model, config: dict[str, Any], image_u8: np.ndarray, lung: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Binary prediction of one enhanced case on its own (canonical) grid.

    The lung task crops every slice to the body; the infection task crops to the ground-truth
    lungs (its training protocol) and predicts nothing on slices without lung.
    """
    prep = PreprocessConfig.from_dict(config)
    pred = np.zeros(image_u8.shape, np.uint8)
    if prep.crop_mode == "lung_mask":
        idx = np.flatnonzero((lung > 0).any(axis=(1, 2)))
    else:
        idx = np.arange(len(image_u8))
    if idx.size == 0:
        return pred
    imgs, recs = crop_and_resize(image_u8[idx], prep, lung_mask=lung[idx])
    probs = restore_slices(predict_probs(model, imgs, batch_size), recs)
    pred[idx] = probs >= float(config.get("threshold", 0.5))
    return pred


def evaluate_model(
    model,
    model_config: dict[str, Any],
    model_input: dict[str, np.ndarray],
    case_split: pd.DataFrame,
    enhanced_cases: dict[str, Lazy],
    params: dict[str, Any],
) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame, dict[str, Any], dict[str, list[dict[str, float]]]]:
    """Evaluate one variant on the held-out patients.

    Returns the metrics summary (JSON), per-slice and per-case tables, the arrays of the overlay
    figure and the final metrics in MLflow's format.
    """
    task = model_config["task"]
    batch = int(params.get("batch_size", 16))
    x_val, y_val, idx = split_model_input(model_input, case_split, "val")
    probs = predict_probs(model, x_val, batch)
    pred = (probs >= float(model_config.get("threshold", 0.5))).astype(np.uint8)
    per_slice = slice_metrics(pred, y_val)
    per_slice.insert(0, "case_id", model_input["case_ids"][idx])
    per_slice.insert(1, "slice_index", model_input["slice_index"][idx])
    slice_summary = summarize_slices(per_slice.drop(columns=["case_id", "slice_index"]))

    val_cases = sorted(set(model_input["case_ids"][idx]))
    if (case_split["subset"] == "mixed").all():
        logger.warning("Leaky slice-level split: no held-out patient, so no per-case evaluation")
        val_cases = []
    rows = []
    for case in tqdm(val_cases, desc=f"evaluate {task} cases", unit="case"):
        rec = enhanced_cases[case]()
        gt = (rec["lung"] > 0) if task == "lung" else (rec["infection"] > 0)
        case_pred = predict_case(model, model_config, rec["image"], rec["lung"], batch)
        m = volume_metrics(case_pred, gt, tuple(rec["spacing"]), NSD_TOLERANCE_MM[task])
        rows.append({"case_id": case, **m})
    per_case = pd.DataFrame(rows)
    case_summary = {}
    if not per_case.empty:
        for col in ("dice", "iou", "precision", "recall", "nsd", "hd95"):
            finite = per_case[col].replace([np.inf, -np.inf], np.nan)
            case_summary[f"case_{col}"] = float(finite.mean()) if finite.notna().any() else float("nan")
    summary = {
        "variant": f"{task}_{model_config['architecture']}",
        "task": task,
        "architecture": model_config["architecture"],
        "dataset": model_config.get("dataset"),
        "image_size": model_config["image_size"],
        "split": str(case_split["method"].iloc[0]),
        "n_val_cases": len(val_cases),
        "n_val_slices": int(len(x_val)),
        "nsd_tolerance_mm": NSD_TOLERANCE_MM[task],
        "empty_slice_rule": "a slice where prediction and ground truth are both empty scores 1 on every metric",
        **{f"slice_{k}": v for k, v in slice_summary.items()},
        **case_summary,
    }
    from lungseg.evaluation.plots import select_best_median_worst

    dice_vals = per_slice["dice"].to_numpy()
    eligible = per_slice["gt_pixels"].to_numpy() > 0
    picks = select_best_median_worst(dice_vals, eligible=eligible if eligible.any() else None)
    picks = {k: int(picks[k]) for k in ("best", "median", "worst")}
    overlay = {
        "images": x_val[list(picks.values())],
        "gt": y_val[list(picks.values())],
        "pred": pred[list(picks.values())],
        "titles": [f"{k}: {per_slice.case_id.iloc[i]} slice {per_slice.slice_index.iloc[i]}, Dice {dice_vals[i]:.3f}"
                   for k, i in picks.items()],
        "suptitle": f"{summary['variant']}: held-out slices (ground truth vs prediction)",
    }
    mlflow_metrics = {
        f"eval_{k}": [{"value": float(v), "step": 0}]
        for k, v in summary.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
    }
    logger.info("%s: slice Dice %.4f, case Dice %s", summary["variant"], summary.get("slice_dice", float("nan")),
                f"{summary.get('case_dice', float('nan')):.4f}")
    return summary, per_slice, per_case, overlay, mlflow_metrics


def metrics_table(summary: dict[str, Any]) -> pd.DataFrame:
    """The metrics summary as a one-row table (CSV)."""
    return pd.DataFrame([summary])


def plot_overlay(overlay: dict[str, Any]):
    from lungseg.evaluation.plots import plot_overlays

    return plot_overlays(overlay["images"], overlay["gt"], overlay["pred"], overlay["titles"], overlay["suptitle"])


def plot_history(history: dict[str, list[float]], model_config: dict[str, Any]):
    from lungseg.evaluation.plots import plot_training_curves

    return plot_training_curves(history, f"{model_config['task']}_{model_config['architecture']} training")


def evaluate_baselines(
    case_table: pd.DataFrame,
    canonical_cases: dict[str, Lazy],
    case_split: pd.DataFrame,
    params: dict[str, Any],
) -> tuple[dict[str, Any], pd.DataFrame]:
    """The classical baseline for both tasks on the held-out patients, on the original grid."""
    from lungseg.evaluation.baseline import baseline_infection, baseline_lung

    val = set(case_split.loc[case_split["subset"] == "val", "case_id"])
    if not val:
        val = set(case_split["case_id"])
    kinds = dict(zip(case_table["case_id"], case_table["source_kind"]))
    # fixed HU thresholds suit real HU / windowed data; data re-scaled per slice (e.g. the dev set) needs Otsu
    lung_opts = dict(params.get("baseline_lung", {}) or {})
    rows = []
    for case in tqdm(sorted(val), desc="baseline cases", unit="case"):
        rec = canonical_cases[case]()
        spacing = tuple(rec["spacing"])
        lung_gt, inf_gt = rec["lung"] > 0, rec["infection"] > 0
        lung_pred = baseline_lung(rec["ct"], kinds[case], spacing, **lung_opts)
        inf_pred = baseline_infection(rec["ct"], kinds[case], lung_gt)  # ground-truth lungs, as the models get
        for task, pred, gt in (("lung", lung_pred, lung_gt), ("infection", inf_pred, inf_gt)):
            keep = (rec["lung"] > 0).any(axis=(1, 2))
            sl = slice_metrics(pred[keep].astype(np.uint8), gt[keep].astype(np.uint8))
            vm = volume_metrics(pred, gt, spacing, NSD_TOLERANCE_MM[task])
            rows.append({"task": task, "case_id": case, "slice_dice": float(sl["dice"].mean()),
                         "slice_iou": float(sl["iou"].mean()), **vm})
    per_case = pd.DataFrame(rows)
    summary: dict[str, Any] = {}
    for task, grp in per_case.groupby("task"):
        summary[str(task)] = {
            "variant": f"{task}_baseline",
            "slice_dice": float(grp["slice_dice"].mean()),
            "slice_iou": float(grp["slice_iou"].mean()),
            **{f"case_{c}": float(grp[c].replace([np.inf, -np.inf], np.nan).mean())
               for c in ("dice", "iou", "precision", "recall", "nsd", "hd95")},
            "n_val_cases": int(len(grp)),
        }
    return summary, per_case


PAPER = {
    "lung_unet": {"dice": 0.8513, "iou": 0.7652},
    "lung_deeplabv3plus": {"dice": 0.8623, "iou": 0.7831},
    "infection_unet": {"dice": 0.7210, "iou": 0.6450},
}
COMPARISON_COLUMNS = ["variant", "kind", "task", "dataset", "split", "n_val_cases", "slice_dice", "slice_iou",
                      "slice_precision", "slice_recall", "slice_f1", "case_dice", "case_iou", "case_nsd",
                      "case_hd95", "paper_dice", "paper_iou"]


def compare_variants(
    previous: dict[str, Callable[[], dict]], baselines: dict[str, Any], *current: dict[str, Any]
) -> tuple[pd.DataFrame, Any]:
    """One table across every variant evaluated so far (same dataset), the baseline and the paper.

    ``previous`` holds the ``metrics.json`` of earlier runs (a ``PartitionedDataset`` over
    ``data/08_reporting``); this run's metrics override them.
    """
    from lungseg.evaluation.plots import plot_metric_comparison

    rows: dict[str, dict[str, Any]] = {}
    for key, load in sorted(previous.items()):
        try:
            m = load()
        except Exception as exc:  # a corrupt old report must not break this run
            logger.warning("Ignoring unreadable report %s: %s", key, exc)
            continue
        if isinstance(m, dict) and "variant" in m and "task" in m:
            rows[m["variant"]] = m
    for m in current:
        rows[m["variant"]] = m
    datasets = {m.get("dataset") for m in current}
    table = []
    for name, m in rows.items():
        if datasets and m.get("dataset") not in datasets:
            continue
        paper = PAPER.get(name, {})
        table.append({**{c: m.get(c) for c in COMPARISON_COLUMNS}, "kind": "model",
                      "paper_dice": paper.get("dice"), "paper_iou": paper.get("iou")})
    for task, b in baselines.items():
        if any(r["task"] == task for r in table):
            table.append({**{c: b.get(c) for c in COMPARISON_COLUMNS}, "variant": f"{task}_baseline",
                          "kind": "baseline", "task": task, "dataset": next(iter(datasets), None)})
    df = pd.DataFrame(table, columns=COMPARISON_COLUMNS).sort_values(["task", "kind", "variant"]).reset_index(drop=True)
    return df, plot_comparison(df)


def plot_comparison(df: pd.DataFrame):
    """Slice-level Dice of every model and baseline, next to the published figures, one panel per task."""
    from matplotlib.figure import Figure

    from lungseg.evaluation.plots import plot_metric_comparison
    from lungseg.evaluation.reference import reference_table

    tasks = [t for t in ("lung", "infection") if (df["task"] == t).any()] or ["lung"]
    parts = []
    for task in tasks:
        ours = df[df["task"] == task].assign(dice=lambda d: d["slice_dice"], level="slice")
        parts.append(pd.concat([ours[["variant", "kind", "level", "dice"]],
                                reference_table(task)[["variant", "kind", "level", "dice"]]
                                .assign(variant=lambda d: f"{task}: " + d["variant"])], ignore_index=True))
    table = pd.concat(parts, ignore_index=True)
    fig = plot_metric_comparison(table, "dice")
    assert isinstance(fig, Figure)
    return fig
