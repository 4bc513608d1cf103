"""Evaluation: numpy metrics (overlap and surface), classical baselines and report figures."""

from lungseg.evaluation.baseline import baseline_infection, baseline_lung, hu_to_level
from lungseg.evaluation.metrics import (
    NSD_TOLERANCE_MM,
    confusion,
    dice,
    f1,
    hd95,
    iou,
    normalized_surface_dice,
    precision,
    recall,
    slice_metrics,
    summarize_slices,
    surface_distances,
    volume_metrics,
)
from lungseg.evaluation.plots import (
    plot_metric_comparison,
    plot_overlays,
    plot_training_curves,
    select_best_median_worst,
)
from lungseg.evaluation.reference import reference_table

__all__ = [
    "NSD_TOLERANCE_MM",
    "baseline_infection",
    "baseline_lung",
    "confusion",
    "dice",
    "f1",
    "hd95",
    "hu_to_level",
    "iou",
    "normalized_surface_dice",
    "plot_metric_comparison",
    "plot_overlays",
    "plot_training_curves",
    "precision",
    "recall",
    "reference_table",
    "select_best_median_worst",
    "slice_metrics",
    "summarize_slices",
    "surface_distances",
    "volume_metrics",
]
