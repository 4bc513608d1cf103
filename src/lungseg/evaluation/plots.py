"""Report figures: training curves, slice overlays and metric comparisons.

Every function returns a :class:`matplotlib.figure.Figure` built without ``pyplot`` (no global state,
no GUI backend needed, nothing to close); Kedro's ``matplotlib.MatplotlibDataset`` saves it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from lungseg.errors import DataValidationError

logger = logging.getLogger(__name__)

GT_COLOUR = "#2ca02c"  # green
PRED_COLOUR = "#d62728"  # red
KIND_COLOURS = {"model": "#1f77b4", "baseline": "#7f7f7f", "reference": "#ff7f0e"}


# --------------------------------------------------------------------------------------------------
# training curves
# --------------------------------------------------------------------------------------------------
def plot_training_curves(history: Mapping[str, Sequence[float]], title: str) -> Figure:
    """One panel per quantity of a Keras history: ``loss`` first, then each metric, train and ``val_``.

    ``history`` maps names (``"loss"``, ``"val_loss"``, ``"dice"``, ``"val_dice"``, ...) to one value
    per epoch. A ``val_x`` without ``x`` gets its own panel too. An empty history gives one panel
    saying so.
    """
    names: list[str] = []
    for key in history:
        base = key[4:] if key.startswith("val_") else key
        if base not in names:
            names.append(base)
    names = sorted(names, key=lambda n: n != "loss")  # stable: loss first, then history order
    if not names:
        fig = Figure(figsize=(5, 3))
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no training history", ha="center", va="center")
        ax.set_axis_off()
        fig.suptitle(title)
        return fig
    fig = Figure(figsize=(4.5 * len(names), 3.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(names), squeeze=False)[0])
    for ax, name in zip(axes, names):
        for key, label, style in ((name, "train", "-"), (f"val_{name}", "validation", "--")):
            values = np.asarray(history.get(key, []), dtype=float)
            epochs = np.arange(1, values.size + 1)
            shown = np.isfinite(values)  # NaN: an epoch that was not validated (validation_freq)
            if shown.any():
                ax.plot(epochs[shown], values[shown], style, marker="o", markersize=3, label=label)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------------------------------
# overlays
# --------------------------------------------------------------------------------------------------
def _squeeze_channel(arr: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise DataValidationError(f"{name} must be (N, H, W) (or (N, H, W, 1)), got shape {a.shape}")
    return a


def _mask_overlay(ax, mask: np.ndarray, colour: str, alpha: float = 0.4) -> None:
    m = mask != 0
    if m.any():
        ax.imshow(np.ma.masked_where(~m, m), cmap=ListedColormap([colour]), alpha=alpha,
                  vmin=0, vmax=1, interpolation="nearest")
        ax.contour(m.astype(float), levels=[0.5], colors=[colour], linewidths=0.8)


def plot_overlays(
    images: np.ndarray,
    gt: np.ndarray,
    pred: np.ndarray,
    titles: Sequence[str],
    suptitle: str,
) -> Figure:
    """One row per slice: image | ground truth (green) | prediction (red, with the ground-truth contour).

    ``images`` are float (any range, shown min-max per slice) or uint8; masks are binary.
    Returns a figure with ``3 * N`` axes.
    """
    imgs = _squeeze_channel(images, "images")
    g = _squeeze_channel(gt, "ground truth")
    p = _squeeze_channel(pred, "prediction")
    if not (imgs.shape == g.shape == p.shape):
        raise DataValidationError(
            f"images {imgs.shape}, ground truth {g.shape} and prediction {p.shape} must have the same shape"
        )
    n = imgs.shape[0]
    if n == 0:
        raise DataValidationError("no slices to plot")
    if len(titles) != n:
        raise DataValidationError(f"{len(titles)} titles for {n} slices")
    fig = Figure(figsize=(9, 3 * n), layout="constrained")
    axes = fig.subplots(n, 3, squeeze=False)
    for i in range(n):
        img = imgs[i].astype(float)
        vmin, vmax = (0.0, 255.0) if imgs.dtype == np.uint8 else (float(img.min()), float(img.max()) or 1.0)
        for ax in axes[i]:
            ax.imshow(img, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        _mask_overlay(axes[i, 1], g[i], GT_COLOUR)
        _mask_overlay(axes[i, 2], p[i], PRED_COLOUR)
        if (g[i] != 0).any():
            axes[i, 2].contour((g[i] != 0).astype(float), levels=[0.5], colors=[GT_COLOUR], linewidths=0.8)
        axes[i, 0].set_ylabel(str(titles[i]), fontsize="small")
        if i == 0:
            axes[i, 0].set_title("image")
            axes[i, 1].set_title("ground truth")
            axes[i, 2].set_title("prediction (red), truth contour (green)", fontsize="small")
    fig.suptitle(suptitle)
    return fig


def select_best_median_worst(
    dice_per_slice: np.ndarray, eligible: np.ndarray | None = None
) -> dict[str, int]:
    """Indices of the best, median and worst slice by Dice (NaNs ignored).

    ``eligible`` (bool, same length), when given, restricts the choice, e.g. to the slices whose ground
    truth is not empty (``df["gt_pixels"] > 0``), so that a both-empty slice (Dice 1 by convention) is
    not shown as the best one. The returned indices always refer to the full array.

    Ties are broken deterministically by the lowest index: ``best`` is the first maximum, ``worst`` the
    first minimum, ``median`` the first slice whose value equals the lower median (the element of
    rank ``(n - 1) // 2`` in ascending order).
    """
    d = np.asarray(dice_per_slice, dtype=float).reshape(-1)
    ok = np.isfinite(d)
    if eligible is not None:
        e = np.asarray(eligible, dtype=bool).reshape(-1)
        if e.shape != d.shape:
            raise DataValidationError(f"eligible has {e.size} values for {d.size} slices")
        ok &= e
    valid = np.flatnonzero(ok)
    if valid.size == 0:
        raise DataValidationError("no eligible finite per-slice Dice value to pick slices from")
    v = d[valid]
    median_value = np.sort(v)[(v.size - 1) // 2]
    return {
        "best": int(valid[np.argmax(v)]),
        "median": int(valid[np.flatnonzero(v == median_value)[0]]),
        "worst": int(valid[np.argmin(v)]),
    }


# --------------------------------------------------------------------------------------------------
# metric comparison
# --------------------------------------------------------------------------------------------------
def plot_metric_comparison(table: pd.DataFrame, metric: str = "dice") -> Figure:
    """Horizontal bar chart of ``metric`` across models, the classical baseline and reference values.

    ``table`` has one row per entry, with columns ``variant`` (the label; the index is used when the
    column is absent), ``metric`` and optionally ``kind`` (``"model"``, ``"baseline"`` or
    ``"reference"``, which sets the colour), ``f"{metric}_std"`` (error bar) and ``level``
    (``"slice"`` / ``"case"``, appended to the label). Rows whose value is NaN are skipped (e.g. a
    paper that does not report the metric). See :func:`lungseg.evaluation.reference.reference_table`.
    """
    if metric not in table.columns:
        raise DataValidationError(
            f"the comparison table has no {metric!r} column (columns: {list(table.columns)})"
        )
    df = table.copy()
    if "variant" in df.columns:
        labels = df["variant"].astype(str)
    else:
        labels = pd.Series(df.index.astype(str), index=df.index)
    if "level" in df.columns:
        labels = labels + df["level"].map(lambda lv: f" [{lv}]" if isinstance(lv, str) and lv else "")
    df["_label"] = labels
    df["_value"] = pd.to_numeric(df[metric], errors="coerce")
    df = df[np.isfinite(df["_value"].to_numpy(dtype=float))]
    fig = Figure(figsize=(7, 0.45 * max(len(df), 1) + 1.5), layout="constrained")
    ax = fig.subplots()
    if df.empty:
        ax.text(0.5, 0.5, f"no {metric} values", ha="center", va="center")
        ax.set_axis_off()
        return fig
    kinds = df["kind"].astype(str) if "kind" in df.columns else pd.Series("model", index=df.index)
    colours = [KIND_COLOURS.get(k, "#9467bd") for k in kinds]
    std_col = f"{metric}_std"
    xerr = pd.to_numeric(df[std_col], errors="coerce").fillna(0).to_numpy() if std_col in df.columns else None
    y = np.arange(len(df))
    values = df["_value"].to_numpy(dtype=float)
    ax.barh(y, values, color=colours, xerr=xerr, capsize=3)
    ax.set_yticks(y, df["_label"].tolist())
    ax.invert_yaxis()
    ends = values + (xerr if xerr is not None else 0.0)
    for yi, val, end in zip(y, values, ends):
        ax.text(end, yi, f" {val:.3f}", va="center", fontsize="small")
    upper = max(1.0, float(ends.max()))
    ax.set_xlim(0, upper * 1.15)
    ax.set_xlabel(metric)
    ax.grid(axis="x", alpha=0.3)
    handles = [Patch(color=KIND_COLOURS.get(k, "#9467bd"), label=k) for k in dict.fromkeys(kinds)]
    ax.legend(handles=handles, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"{metric} comparison")
    return fig


# --------------------------------------------------------------------------------------------------
# cross-validation
# --------------------------------------------------------------------------------------------------
def plot_cv_cases(table: pd.DataFrame, metric: str) -> Figure:
    """Out-of-fold ``metric`` of every case, coloured by fold, sorted; with predicted against true
    involvement (%) beside it when the table has both columns (the combined system's table)."""
    if metric not in table.columns or "fold" not in table.columns:
        raise DataValidationError(f"the cross-validation table needs 'fold' and {metric!r} columns")
    scatter = {"true_involvement_percent", "pred_involvement_percent"} <= set(table.columns)
    fig = Figure(figsize=(12 if scatter else 7, 0.3 * max(len(table), 1) + 2), layout="constrained")
    axes = fig.subplots(1, 2 if scatter else 1, squeeze=False)[0]
    df = table.sort_values(metric)
    cmap = ListedColormap(["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                           "#7f7f7f", "#bcbd22", "#17becf"])
    colours = [cmap(int(f) % cmap.N) for f in df["fold"]]
    ax = axes[0]
    y = np.arange(len(df))
    ax.barh(y, df[metric].to_numpy(dtype=float), color=colours)
    labels = df["case_id"].astype(str)
    if "band" in df.columns:
        labels = labels + " (" + df["band"].astype(str) + ")"
    ax.set_yticks(y, labels.tolist(), fontsize="small")
    mean = float(df[metric].mean())
    ax.axvline(mean, color="k", ls="--", lw=1, label=f"out-of-fold mean {mean:.3f}")
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"{metric} (out of fold)")
    ax.legend(handles=[*ax.get_legend_handles_labels()[0]] + [
        Patch(color=cmap(int(f) % cmap.N), label=f"fold {int(f)}") for f in sorted(df["fold"].unique())],
        fontsize="small", loc="lower right")
    if scatter:
        ax = axes[1]
        t, p = table["true_involvement_percent"].to_numpy(float), table["pred_involvement_percent"].to_numpy(float)
        ax.scatter(t, p, c=[cmap(int(f) % cmap.N) for f in table["fold"]])
        top = max(5.0, float(np.nanmax(np.r_[t, p])) * 1.1)
        ax.plot([0, top], [0, top], color="grey", lw=1, ls=":")
        for x0 in (10, 30):
            ax.axvline(x0, color="grey", lw=0.5)
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_xlabel("true involvement (% of the lungs)")
        ax.set_ylabel("predicted involvement (%)")
        ax.set_title("Involvement, per case")
    return fig
