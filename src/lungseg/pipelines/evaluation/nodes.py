"""Evaluation nodes: wiring only.

The work is in :mod:`lungseg.evaluation` (``evaluate``: one variant on its held-out patients;
``compare``: the classical baseline and the table across variants); MLflow formatting is in
:mod:`lungseg.tracking`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from lungseg.config import check_section
from lungseg.evaluation.compare import comparison_table, evaluate_baselines, plot_comparison
from lungseg.evaluation.evaluate import evaluate_variant
from lungseg.tracking import history_to_steps, summary_to_metrics

Lazy = Callable[[], dict[str, np.ndarray]]
#: Keys of the ``evaluation`` parameters (conf/base/parameters_training.yml).
EVALUATION_KEYS = ("batch_size", "baseline_lung", "baseline_infection", "flip_tta", "lung_fill_holes")
#: may be left out: the stress set then paints with its defaults (lungseg.imaging.paint.PaintParams); the
#: combined cross-validation's infection_margin_mm is 0 (InferenceSettings.infection_margin_mm) and its
#: infection_ensemble_with [] (each fold's infection model alone), its infection_min_lesion_mm3 0 (every region kept)
EVALUATION_OPTIONAL = ("stress", "infection_margin_mm", "infection_ensemble_with", "infection_min_lesion_mm3")


def evaluate_model(model, model_config: dict[str, Any], model_input: dict[str, np.ndarray],
                   case_split: pd.DataFrame, enhanced_cases: dict[str, Lazy], params: dict[str, Any]):
    """One variant on its held-out patients: the summary (metrics.json), per-slice and per-case
    tables and the arrays of the overlay figure."""
    params = check_section(params, "evaluation", EVALUATION_KEYS, EVALUATION_OPTIONAL)
    result = evaluate_variant(model, model_config, model_input, case_split, enhanced_cases, int(params["batch_size"]))
    return result.summary, result.per_slice, result.per_case, result.overlay


def eval_metrics(summary: dict[str, Any]) -> dict[str, list[dict[str, float]]]:
    """The final metrics of a summary as MLflow metrics (``eval_<key>``)."""
    return summary_to_metrics(summary, prefix="eval_")


def epoch_metrics(history: dict[str, list[float]]) -> dict[str, list[dict[str, float]]]:
    """The training history as MLflow step metrics, one step per epoch."""
    return history_to_steps(history)


def metrics_table(summary: dict[str, Any]) -> pd.DataFrame:
    """The metrics summary as a one-row table (CSV)."""
    return pd.DataFrame([summary])


def plot_overlay(overlay: dict[str, Any]):
    from lungseg.evaluation.plots import plot_overlays

    return plot_overlays(overlay["images"], overlay["gt"], overlay["pred"], overlay["titles"], overlay["suptitle"])


def plot_history(history: dict[str, list[float]], model_config: dict[str, Any]):
    from lungseg.evaluation.plots import plot_training_curves

    return plot_training_curves(history, f"{model_config['task']}_{model_config['architecture']} training")


def baselines(case_table: pd.DataFrame, canonical_cases: dict[str, Lazy], case_split: pd.DataFrame,
              params: dict[str, Any]) -> tuple[dict[str, Any], pd.DataFrame]:
    """The classical baseline for both tasks on the held-out patients (options in ``evaluation``)."""
    params = check_section(params, "evaluation", EVALUATION_KEYS, EVALUATION_OPTIONAL)
    return evaluate_baselines(case_table, canonical_cases, case_split,
                              params["baseline_lung"] or {}, params["baseline_infection"] or {})


def compare_variants(previous: dict[str, Callable[[], dict]], baseline_metrics: dict[str, Any],
                     *current: dict[str, Any]):
    """One table (and plot) across every variant evaluated so far, the baseline and the paper."""
    table = comparison_table(previous, baseline_metrics, list(current))
    return table, plot_comparison(table)
