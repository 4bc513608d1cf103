"""Exploratory data analysis: plots written through ``matplotlib.MatplotlibDataset``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

PAPER_INFECTION_PERCENT = 10.39


def eda_summary(case_table: pd.DataFrame) -> dict[str, Any]:
    """Dataset-level figures: slices, kinds, class balance (infection % of the segmented area)."""
    segmented = case_table["lung_voxels"] + case_table["infection_outside_lung_voxels"]
    total_inf = float(case_table["infection_voxels"].sum())
    return {
        "n_cases": int(len(case_table)),
        "n_slices": int(case_table["n_slices"].sum()),
        "slices_per_case": {"min": int(case_table["n_slices"].min()), "median": float(case_table["n_slices"].median()),
                            "max": int(case_table["n_slices"].max())},
        "source_kinds": {str(k): int(v) for k, v in case_table["source_kind"].value_counts().items()},
        "cases_without_infection": int((case_table["infection_voxels"] == 0).sum()),
        "infection_percent_of_segmented_area": 100.0 * total_inf / max(float(segmented.sum()), 1.0),
        "paper_infection_percent": PAPER_INFECTION_PERCENT,
    }


def plot_dataset_overview(case_table: pd.DataFrame) -> plt.Figure:
    """Intensity range per case, class balance per case and the distribution of slice counts."""
    t = case_table.sort_values("case_id")
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), constrained_layout=True)
    colors = np.where(t["source_kind"] == "hu", "tab:blue", "tab:orange")
    ax = axes[0]
    ax.vlines(np.arange(len(t)), t["ct_min"], t["ct_max"], colors=colors, lw=6)
    ax.set_xticks(np.arange(len(t)), t["case_id"], rotation=90, fontsize=7)
    ax.set_ylabel("stored intensity (min to max)")
    ax.set_title("Intensity range per case (blue: HU, orange: 0-255)")
    ax = axes[1]
    segmented = (t["lung_voxels"] + t["infection_outside_lung_voxels"]).clip(lower=1)
    pct = 100 * t["infection_voxels"] / segmented
    ax.bar(np.arange(len(t)), pct, color="tab:red")
    overall = 100 * t["infection_voxels"].sum() / segmented.sum()
    ax.axhline(overall, color="k", ls="--", label=f"overall {overall:.1f}%")
    ax.axhline(PAPER_INFECTION_PERCENT, color="grey", ls=":", label=f"paper {PAPER_INFECTION_PERCENT}%")
    ax.set_xticks(np.arange(len(t)), t["case_id"], rotation=90, fontsize=7)
    ax.set_ylabel("infection, % of segmented area")
    ax.set_title("Class balance")
    ax.legend()
    ax = axes[2]
    ax.hist(t["n_slices"], bins=min(20, max(5, len(t))), color="tab:green")
    ax.set_xlabel("slices per case")
    ax.set_ylabel("cases")
    ax.set_title(f"Slice counts ({int(t['n_slices'].sum())} slices)")
    return fig


def plot_example_slices(
    case_table: pd.DataFrame, enhanced_cases: dict[str, Callable[[], dict]], n_examples: int = 4
) -> plt.Figure:
    """For a few cases, the slice with the most infection (or lung), with its masks outlined."""
    cases = list(case_table.sort_values("infection_voxels", ascending=False)["case_id"])[:n_examples]
    fig, axes = plt.subplots(1, max(1, len(cases)), figsize=(4 * max(1, len(cases)), 4.4), squeeze=False)
    for ax, case in zip(axes[0], cases):
        rec = enhanced_cases[case]()
        score = rec["infection"].sum(axis=(1, 2)) * 10 + (rec["lung"] > 0).sum(axis=(1, 2))
        k = int(np.argmax(score))
        ax.imshow(rec["image"][k], cmap="gray", vmin=0, vmax=255)
        for label, color in ((1, "deepskyblue"), (2, "lime")):
            if (rec["lung"][k] == label).any():
                ax.contour(rec["lung"][k] == label, levels=[0.5], colors=color, linewidths=0.8)
        if rec["infection"][k].any():
            ax.contour(rec["infection"][k] > 0, levels=[0.5], colors="red", linewidths=0.8)
        ax.set_title(f"{case} slice {k}", fontsize=9)
        ax.axis("off")
    fig.suptitle("Examples after windowing + CLAHE (blue: left lung, green: right lung, red: infection)")
    return fig
