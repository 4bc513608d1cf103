"""Metrics in the format of kedro-mlflow's ``MlflowMetricsHistoryDataset``.

That dataset takes ``{"key": [{"value": v, "step": i}, ...]}`` and logs one MLflow metric per key,
one point per step. These helpers turn a training history and a metrics summary into it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

MetricHistory = dict[str, list[dict[str, float]]]


def history_to_steps(history: Mapping[str, list[float]]) -> MetricHistory:
    """A Keras history (``{metric: [value per epoch]}``) as one MLflow point per epoch (step = epoch index)."""
    return {k: [{"value": float(v), "step": i} for i, v in enumerate(vals)] for k, vals in history.items()}


def summary_to_metrics(summary: Mapping[str, Any], prefix: str = "eval_") -> MetricHistory:
    """The finite numbers of a metrics summary as single-step MLflow metrics named ``prefix + key``.

    Booleans, strings, None and non-finite values (an HD95 of ``inf`` when a prediction is empty)
    are left out: MLflow cannot plot them.
    """
    out: MetricHistory = {}
    for key, value in summary.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(float(value)):
            out[f"{prefix}{key}"] = [{"value": float(value), "step": 0}]
    return out
