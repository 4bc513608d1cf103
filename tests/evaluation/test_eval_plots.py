"""lungseg.evaluation.plots and reference values: figures with the expected axes, deterministic picks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from lungseg.errors import ConfigError, DataValidationError
from lungseg.evaluation.plots import (
    plot_metric_comparison,
    plot_overlays,
    plot_training_curves,
    select_best_median_worst,
)
from lungseg.evaluation.reference import reference_table


def test_training_curves_one_panel_per_quantity(tmp_path):
    history = {
        "dice": [0.2, 0.5, 0.7],
        "loss": [1.0, 0.6, 0.4],
        "val_loss": [1.1, 0.8, 0.6],
        "val_dice": [0.1, 0.4, 0.6],
        "iou": [0.1, 0.3, 0.5],
    }
    fig = plot_training_curves(history, "lung_unet")
    assert isinstance(fig, Figure)
    assert [ax.get_title() for ax in fig.axes] == ["loss", "dice", "iou"]
    assert len(fig.axes[0].get_lines()) == 2 and len(fig.axes[2].get_lines()) == 1
    np.testing.assert_allclose(fig.axes[1].get_lines()[1].get_ydata(), [0.1, 0.4, 0.6])
    fig.savefig(tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0
    empty = plot_training_curves({}, "nothing")
    assert len(empty.axes) == 1
    # epochs that were not validated (validation_freq) are NaN: the curve joins the validated ones
    sparse = plot_training_curves({"loss": [1.0, 0.6, 0.4], "val_loss": [float("nan"), 0.8, 0.6]}, "sparse")
    val_line = sparse.axes[0].get_lines()[1]
    np.testing.assert_allclose(val_line.get_xdata(), [2, 3])
    np.testing.assert_allclose(val_line.get_ydata(), [0.8, 0.6])


def test_history_to_steps_leaves_out_the_epochs_that_were_not_validated():
    from lungseg.tracking import history_to_steps

    steps = history_to_steps({"loss": [1.0, 0.5], "val_loss": [float("nan"), 0.7]})
    assert steps["loss"] == [{"value": 1.0, "step": 0}, {"value": 0.5, "step": 1}]
    assert steps["val_loss"] == [{"value": 0.7, "step": 1}]


def test_overlays_three_axes_per_slice(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((3, 16, 16)).astype(np.float32)
    gt = np.zeros((3, 16, 16, 1), np.uint8)
    gt[:, 4:10, 4:10] = 1
    pred = np.roll(gt, 2, axis=2)
    pred[2] = 0  # an empty prediction must not break the figure
    fig = plot_overlays(images, gt, pred, ["best", "median", "worst"], "case_01")
    assert len(fig.axes) == 9
    assert fig.axes[0].get_ylabel() == "best" and fig.axes[6].get_ylabel() == "worst"
    fig.savefig(tmp_path / "overlay.png")
    single = plot_overlays((images[:1] * 255).astype(np.uint8), gt[:1], pred[:1], ["one"], "x")
    assert len(single.axes) == 3
    with pytest.raises(DataValidationError, match="titles"):
        plot_overlays(images, gt, pred, ["a"], "x")
    with pytest.raises(DataValidationError, match="shape"):
        plot_overlays(images, gt[:2], pred, ["a", "b", "c"], "x")


def test_select_best_median_worst_with_ties_and_nan():
    d = np.array([0.5, 0.9, 0.1, 0.9, 0.5, 0.1, 0.7])
    # sorted: 0.1 0.1 0.5 0.5 0.7 0.9 0.9 -> lower median (rank 3) = 0.5, first at index 0
    assert select_best_median_worst(d) == {"best": 1, "median": 0, "worst": 2}
    d2 = np.array([np.nan, 0.3, 0.8, 0.6, np.nan])
    assert select_best_median_worst(d2) == {"best": 2, "median": 3, "worst": 1}
    assert select_best_median_worst(np.array([0.4])) == {"best": 0, "median": 0, "worst": 0}
    # only slices with a non-empty ground truth: the both-empty slice 0 (Dice 1) is skipped
    d3 = np.array([1.0, 0.2, 0.9, 0.5])
    eligible = np.array([False, True, True, True])
    assert select_best_median_worst(d3, eligible) == {"best": 2, "median": 3, "worst": 1}
    with pytest.raises(DataValidationError):
        select_best_median_worst(np.array([np.nan]))


def test_metric_comparison_bars_and_reference_table(tmp_path):
    ref = reference_table("lung")
    assert set(ref["kind"]) == {"reference"}
    paper = ref[ref["variant"] == "paper U-Net"].iloc[0]
    assert paper["dice"] == 0.8513 and paper["iou"] == 0.7652 and paper["level"] == "slice"
    assert len(reference_table("infection")) == 3
    with pytest.raises(ConfigError):
        reference_table("heart")
    models = pd.DataFrame(
        {
            "variant": ["lung_unet", "lung_deeplabv3plus", "baseline"],
            "kind": ["model", "model", "baseline"],
            "level": ["case", "case", "case"],
            "dice": [0.93, 0.95, 0.90],
            "dice_std": [0.02, 0.01, 0.05],
            "iou": [0.87, 0.9, 0.82],
        }
    )
    table = pd.concat([models, ref], ignore_index=True)
    fig = plot_metric_comparison(table, "dice")
    ax = fig.axes[0]
    assert len(ax.patches) == len(table)  # one bar per row
    assert ax.get_yticklabels()[0].get_text() == "lung_unet [case]"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["model", "baseline", "reference"]
    # IoU: the benchmark rows that report no IoU are skipped
    fig_iou = plot_metric_comparison(table, "iou")
    assert len(fig_iou.axes[0].patches) == 3 + 2
    fig.savefig(tmp_path / "cmp.png")
    with pytest.raises(DataValidationError, match="nsd"):
        plot_metric_comparison(table, "nsd")
