"""Metrics in the format of kedro-mlflow's ``MlflowMetricsHistoryDataset``.

That dataset takes ``{"key": [{"value": v, "step": i}, ...]}`` and logs one MLflow metric per key,
one point per step. These helpers turn a training history and a metrics summary into it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from lungseg.layout import is_cv_name, strip_cv, variant_architecture, variant_task

logger = logging.getLogger(__name__)

MetricHistory = dict[str, list[dict[str, float]]]


def history_to_steps(history: Mapping[str, list[float]]) -> MetricHistory:
    """A Keras history (``{metric: [value per epoch]}``) as one MLflow point per epoch (step = epoch index).

    A NaN (a ``val_*`` quantity on an epoch that was not validated, see ``validation_freq``) is left
    out, so its curve joins the epochs that were."""
    return {k: [{"value": float(v), "step": i} for i, v in enumerate(vals) if math.isfinite(float(v))]
            for k, vals in history.items()}


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
                  tags: Mapping[str, str] | None = None,
                  inputs: Mapping[str, Mapping[str, Any]] | None = None) -> str | None:
    """Log one nested MLflow run under the active run (one fold of a cross-validation), with its
    training and validation inputs (:func:`split_inputs`) when given.

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
        if inputs:
            log_inputs(inputs)
        return child.info.run_id


# ----------------------------------------------------------------------------- datasets (mlflow.log_input)
#: The MLflow input contexts of a split's two sides, and the subsets that belong to each (a
#: ``slice_level_leaky`` split marks every case ``mixed``: its slices land on both sides).
INPUT_CONTEXTS = {"training": ("train", "mixed"), "validation": ("val", "mixed")}


def split_inputs(dataset_name: str, case_split, case_ids,
                 contexts: Mapping[str, tuple[str, ...]] = INPUT_CONTEXTS) -> dict[str, dict[str, Any]]:
    """What a run logs with ``mlflow.log_input``: per context (``training``, ``validation``), the
    dataset's name, the table of its cases (``case_id``, ``subset``, ``n_slices``), a digest of that
    table and the numbers of cases and slices.

    Args:
        dataset_name: ``params:dataset_name`` (``covid20-dev``, ``synthetic_demo``, ``covid19-ct-scans``).
        case_split: the split table (``case_id``, ``subset``), as ``split_cases`` or ``fold_split`` gives it.
        case_ids: the case id of every model-input slice (``model_input["case_ids"]``).
        contexts: the contexts logged and the ``subset`` values each holds.
    """
    import hashlib

    import numpy as np
    import pandas as pd

    ids, counts = np.unique(np.asarray(case_ids).astype(str), return_counts=True)
    slices = dict(zip(ids, (int(c) for c in counts)))
    split = case_split[["case_id", "subset"]].astype({"case_id": str, "subset": str})
    out: dict[str, dict[str, Any]] = {}
    for context, subsets in contexts.items():
        part = split[split["subset"].isin(subsets)].sort_values("case_id").reset_index(drop=True)
        table = part.assign(n_slices=[slices.get(c, 0) for c in part["case_id"]])
        text = f"{dataset_name}\n{table.to_csv(index=False)}"
        out[context] = {
            "name": str(dataset_name),
            "digest": hashlib.sha256(text.encode()).hexdigest()[:12],
            "n_cases": len(table),
            "n_slices": int(table["n_slices"].sum()),
            "table": pd.DataFrame(table),
        }
    return out


def log_inputs(inputs: Mapping[str, Mapping[str, Any]]) -> None:
    """Log :func:`split_inputs` to the active MLflow run: one ``mlflow.log_input`` per context, so
    that the runs table's Dataset column names the dataset (tags ``n_cases``, ``n_slices``)."""
    import mlflow
    import mlflow.data

    for context, item in inputs.items():
        dataset = mlflow.data.from_pandas(item["table"], name=item["name"], digest=item["digest"])
        mlflow.log_input(dataset, context=context,
                         tags={"n_cases": str(item["n_cases"]), "n_slices": str(item["n_slices"])})


# ------------------------------------------------------------------------------------- parameters
LONG_PARAMS_STRATEGIES = ("fail", "truncate", "tag")


def flatten_dict(params: Mapping[str, Any], recursive: bool = True, sep: str = ".") -> dict[str, Any]:
    """``{"model": {"depth": 4}}`` -> ``{"model.depth": 4}`` (values kept), as mlflow.yml's
    ``tracking.params.dict_params`` asks (``recursive: false`` flattens one level only); an empty dict
    leaves no key, as kedro-mlflow's own flattening does. (:func:`flatten_params` is the fold runs' one.)"""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            inner = flatten_dict(value, recursive, sep) if recursive else value
            out.update({f"{key}{sep}{k}": v for k, v in inner.items()})
        else:
            out[str(key)] = value
    return out


def log_param(name: str, value: Any, long_params_strategy: str = "fail") -> None:
    """Log one param to the active MLflow run; a value longer than MLflow accepts is handled as mlflow.yml's
    ``tracking.params.long_params_strategy`` says: ``fail`` (ValueError), ``truncate`` or ``tag``."""
    import mlflow
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    text = str(value)
    if len(text) <= MAX_PARAM_VAL_LENGTH:
        mlflow.log_param(name, value)
    elif long_params_strategy == "tag":
        logger.warning("parameter %r (value length %d) is set as a tag", name, len(text))
        mlflow.set_tag(name, value)
    elif long_params_strategy == "truncate":
        logger.warning("parameter %r (value length %d) is truncated to its %d first characters", name, len(text),
                       MAX_PARAM_VAL_LENGTH)
        mlflow.log_param(name, text[:MAX_PARAM_VAL_LENGTH])
    else:
        raise ValueError(f"parameter {name!r} is {len(text)} characters long, MLflow takes at most "
                         f"{MAX_PARAM_VAL_LENGTH}; set tracking.params.long_params_strategy to 'truncate' or 'tag' "
                         "in mlflow.yml to log it anyway")


# ----------------------------------------------------------------------------- one run per variant
def child_run_tags(variant: str, dataset: str | None, env: str | None) -> dict[str, str]:
    """Tags of a variant's run (``infection_unet`` or, for a cross-validation, ``infection_unet_cv``):
    ``task``, ``architecture``, ``dataset``, ``env`` (the Kedro environment, the parent's tag), ``variant``
    and ``cross_validation``."""
    base = strip_cv(variant)
    return {"variant": base, "task": variant_task(base), "architecture": variant_architecture(base),
            "dataset": dataset or "unknown", "env": env or "local",
            "cross_validation": str(is_cv_name(variant)).lower()}


def child_runs_table(parent_run_id: str):
    """One row per direct child run of ``parent_run_id``: its name, its tags ``variant``, ``task``,
    ``architecture``, ``dataset``, its ``model.architecture`` param and its final metrics."""
    import mlflow
    import pandas as pd

    client = mlflow.MlflowClient()
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=1000)
    rows = []
    for run in sorted(runs, key=lambda r: r.info.run_name or ""):
        tags = run.data.tags
        row = {"run_name": run.info.run_name, "run_id": run.info.run_id,
               **{k: tags.get(k) for k in ("variant", "task", "architecture", "dataset", "fold")}}
        row.update(sorted(run.data.metrics.items()))
        rows.append(row)
    return pd.DataFrame(rows)


def log_precision(policy: str) -> None:
    """Log the dtype policy a training ran under (``training.precision`` resolved, ``auto`` included)
    as the param ``training.precision_policy`` of the active MLflow run, if there is one."""
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_param("training.precision_policy", policy)
