"""The classical baseline on the held-out patients, and one table across every variant.

The table puts each variant evaluated so far (on the same dataset) next to the baseline and the
paper's published figures (:mod:`lungseg.evaluation.reference`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lungseg.evaluation.metrics import NSD_TOLERANCE_MM, slice_metrics, volume_metrics
from lungseg.layout import TASKS

logger = logging.getLogger(__name__)
Lazy = Callable[[], dict[str, np.ndarray]]

COMPARISON_COLUMNS = ["variant", "kind", "task", "dataset", "split", "n_val_cases", "slice_dice", "slice_iou",
                      "slice_precision", "slice_recall", "slice_f1", "case_dice", "case_iou", "case_nsd",
                      "case_hd95", "paper_dice", "paper_iou"]


def held_out_cases(case_split: pd.DataFrame) -> list[str]:
    """The ``val`` cases of a split; every case when the split holds none (the leaky protocol)."""
    val = set(case_split.loc[case_split["subset"] == "val", "case_id"])
    return sorted(val or set(case_split["case_id"]))


def baseline_case_rows(case: str, rec: dict[str, np.ndarray], source_kind: str,
                       lung_options: Mapping[str, Any], infection_options: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Both tasks' classical baselines on one case: slice-level means and volume metrics."""
    from lungseg.evaluation.baseline import baseline_infection, baseline_lung

    spacing = tuple(rec["spacing"])
    lung_gt, inf_gt = rec["lung"] > 0, rec["infection"] > 0
    lung_pred = baseline_lung(rec["ct"], source_kind, spacing, **lung_options)
    inf_pred = baseline_infection(rec["ct"], source_kind, lung_gt, **infection_options)  # GT lungs, as the models get
    keep = lung_gt.any(axis=(1, 2))
    rows = []
    for task, pred, gt in (("lung", lung_pred, lung_gt), ("infection", inf_pred, inf_gt)):
        sl = slice_metrics(pred[keep].astype(np.uint8), gt[keep].astype(np.uint8))
        rows.append({"task": task, "case_id": case, "slice_dice": float(sl["dice"].mean()),
                     "slice_iou": float(sl["iou"].mean()),
                     **volume_metrics(pred, gt, spacing, NSD_TOLERANCE_MM[task])})
    return rows


def summarize_baselines(per_case: pd.DataFrame) -> dict[str, Any]:
    """One summary per task, in the same keys as a variant's ``metrics.json``."""
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
    return summary


def evaluate_baselines(case_table: pd.DataFrame, canonical_cases: dict[str, Lazy], case_split: pd.DataFrame,
                       lung_options: Mapping[str, Any], infection_options: Mapping[str, Any]
                       ) -> tuple[dict[str, Any], pd.DataFrame]:
    """The classical baseline for both tasks on the held-out patients, on the original grid."""
    kinds = dict(zip(case_table["case_id"], case_table["source_kind"]))
    rows = []
    for case in tqdm(held_out_cases(case_split), desc="baseline cases", unit="case"):
        rows += baseline_case_rows(case, canonical_cases[case](), kinds[case], lung_options, infection_options)
    per_case = pd.DataFrame(rows)
    return summarize_baselines(per_case), per_case


def _previous_reports(previous: Mapping[str, Callable[[], dict]]) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for key, load in sorted(previous.items()):
        try:
            m = load()
        except Exception as exc:  # noqa: BLE001 - a corrupt old report must not break this run
            logger.warning("Ignoring unreadable report %s: %s", key, exc)
            continue
        if isinstance(m, dict) and "variant" in m and "task" in m:
            rows[m["variant"]] = m
    return rows


def comparison_table(previous: Mapping[str, Callable[[], dict]], baselines: Mapping[str, Any],
                     current: list[dict[str, Any]]) -> pd.DataFrame:
    """Every variant evaluated so far on this run's dataset, the baseline and the paper's figures.

    ``previous`` holds the ``metrics.json`` of earlier runs (loaders keyed by path); this run's
    metrics (``current``) override them.
    """
    from lungseg.evaluation.reference import paper_figures

    rows = _previous_reports(previous)
    rows.update({m["variant"]: m for m in current})
    datasets = {m.get("dataset") for m in current}
    table = []
    for name, m in rows.items():
        if datasets and m.get("dataset") not in datasets:
            continue
        paper = paper_figures(name)
        table.append({**{c: m.get(c) for c in COMPARISON_COLUMNS}, "kind": "model",
                      "paper_dice": paper.get("dice"), "paper_iou": paper.get("iou")})
    for task, b in baselines.items():
        if any(r["task"] == task for r in table):
            table.append({**{c: b.get(c) for c in COMPARISON_COLUMNS}, "variant": f"{task}_baseline",
                          "kind": "baseline", "task": task, "dataset": next(iter(datasets), None)})
    return pd.DataFrame(table, columns=COMPARISON_COLUMNS).sort_values(["task", "kind", "variant"]).reset_index(drop=True)


def plot_comparison(df: pd.DataFrame):
    """Slice-level Dice of every model and baseline, next to the published figures, one panel per task."""
    from lungseg.evaluation.plots import plot_metric_comparison
    from lungseg.evaluation.reference import reference_table

    tasks = [t for t in TASKS if (df["task"] == t).any()] or [TASKS[0]]
    parts = []
    for task in tasks:
        ours = df[df["task"] == task].assign(dice=lambda d: d["slice_dice"], level="slice")
        parts.append(pd.concat([ours[["variant", "kind", "level", "dice"]],
                                reference_table(task)[["variant", "kind", "level", "dice"]]
                                .assign(variant=lambda d, t=task: f"{t}: " + d["variant"])], ignore_index=True))
    return plot_metric_comparison(pd.concat(parts, ignore_index=True), "dice")
