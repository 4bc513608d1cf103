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


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested parameters as MLflow params: ``{"model": {"depth": 4}}`` -> ``{"model.depth": "4"}``."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, f"{name}."))
        else:
            out[name] = str(value)[:500]  # MLflow's limit on a param value
    return out


def log_child_run(name: str, params: Mapping[str, Any], metrics: MetricHistory,
                  tags: Mapping[str, str] | None = None) -> str | None:
    """Log one nested MLflow run under the active run (one fold of a cross-validation).

    Returns the child run's id, or None when no MLflow run is active (a run outside kedro-mlflow,
    or a test on an in-memory catalog): then nothing is logged.
    """
    import mlflow

    parent = mlflow.active_run()
    if parent is None:
        return None
    parent_tags = mlflow.get_run(parent.info.run_id).data.tags
    inherited = {k: v for k, v in parent_tags.items() if not k.startswith("mlflow.")}
    with mlflow.start_run(run_name=name, nested=True) as child:
        mlflow.set_tags({**inherited, **(tags or {})})
        mlflow.log_params(flatten_params(params))
        for key, points in metrics.items():
            for point in points:
                mlflow.log_metric(key, point["value"], step=int(point["step"]))
        return child.info.run_id
