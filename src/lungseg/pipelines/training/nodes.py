"""Training nodes: wiring only. The work is in :func:`lungseg.models.run.train_variant`."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def train_model(
    model_input: dict[str, np.ndarray],
    case_split: pd.DataFrame,
    model_params: dict[str, Any],
    training_params: dict[str, Any],
    dataset_name: str,
) -> tuple[dict[str, Any], Any, dict[str, list[float]]]:
    """Train one variant. Returns the model config (listed first: the catalog saves it before the
    model, so a model file never exists without its config), the best model and the history."""
    from lungseg.models.run import train_variant
    from lungseg.tracking import log_precision

    result = train_variant(model_input, case_split, model_params, training_params, dataset_name)
    log_precision(result.config["precision"])
    return result.config, result.model, result.history


def mlflow_model(model, model_config: dict[str, Any]) -> dict[str, Any]:
    """The model and its config, for the MLflow model logged with the run (the config goes into
    the logged model's metadata, so a model taken from MLflow carries its preprocessing)."""
    return {"model": model, "config": model_config}


def mlflow_inputs(model_input: dict[str, np.ndarray], case_split: pd.DataFrame, dataset_name: str) -> dict[str, Any]:
    """The training and validation cases of the run, for ``mlflow.log_input`` (dataset name, digest of
    the split's case table, numbers of cases and slices)."""
    from lungseg.tracking import split_inputs

    return split_inputs(dataset_name, case_split, model_input["case_ids"])
