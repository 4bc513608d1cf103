"""Patient-level k-fold cross-validation: the folds, and one model per fold.

Every case (patient) is held out exactly once. :func:`train_folds` trains the same recipe on each
fold's training patients with :func:`lungseg.models.run.train_variant`, so a fold model is exactly
what a single training run would give on that split.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from lungseg.errors import ConfigError
from lungseg.models.inputs import SPLIT_KEYS, split_cases
from lungseg.models.run import TrainResult, train_variant

logger = logging.getLogger(__name__)


def fold_name(fold: int) -> str:
    """The name of fold ``fold`` in files and dict keys: ``fold_0``, ``fold_1``..."""
    return f"fold_{int(fold)}"


def fold_table(case_table: pd.DataFrame, split_params: dict[str, Any]) -> pd.DataFrame:
    """``case_id`` and ``fold`` (0 .. n_folds-1) of every case, from the ``split`` parameters
    (``n_folds`` and ``seed``; the method is k-fold whatever ``split.method`` says)."""
    params = {k: split_params[k] for k in SPLIT_KEYS if k in split_params}
    table = split_cases(case_table, {**params, "method": "kfold", "fold": 0})
    return table[["case_id", "fold"]].assign(n_folds=int(params["n_folds"]), seed=int(params["seed"]))


def fold_split(folds: pd.DataFrame, fold: int) -> pd.DataFrame:
    """The case split of one fold, in the format of :func:`lungseg.models.inputs.split_cases`."""
    if fold not in set(folds["fold"]):
        raise ConfigError(f"fold {fold} is not among the folds {sorted(set(folds['fold']))}")
    return pd.DataFrame({
        "case_id": folds["case_id"], "subset": np.where(folds["fold"] == fold, "val", "train"),
        "fold": folds["fold"], "method": "kfold", "val_fraction": float((folds["fold"] == fold).mean()),
        "seed": folds["seed"],
    })


def train_folds(
    model_input: dict[str, np.ndarray],
    folds: pd.DataFrame,
    model_params: dict[str, Any],
    training_params: dict[str, Any],
    dataset_name: str,
    on_fold: Callable[[str, TrainResult], None] | None = None,
) -> dict[str, TrainResult]:
    """One model per fold, trained on the other folds' patients and validated on its own.

    A ``backup_dir`` gets one sub-folder per fold, so an interrupted cross-validation resumes the
    fold it was in. ``on_fold(name, result)`` is called after each fold.
    """
    results: dict[str, TrainResult] = {}
    n = int(folds["fold"].max()) + 1
    if training_params.get("weights") == "best" or training_params.get("reduce_lr") is not None:
        logger.warning(
            "Cross-validation with training.weights: %s and reduce_lr %s: each fold's held-out patients "
            "also choose the epoch or the learning-rate steps, so the out-of-fold figures are slightly "
            "optimistic; weights: last with lr_schedule: cosine leaves them only to measure",
            training_params.get("weights"), "on" if training_params.get("reduce_lr") is not None else "off")
    for fold in range(n):
        name = fold_name(fold)
        params = dict(training_params)
        if params.get("backup_dir"):
            params["backup_dir"] = f"{params['backup_dir']}/{name}"
        logger.info("Cross-validation: training fold %d of %d", fold + 1, n)
        result = train_variant(model_input, fold_split(folds, fold), model_params, params, dataset_name)
        result.config["fold"], result.config["n_folds"] = fold, n
        results[name] = result
        if on_fold is not None:
            on_fold(name, result)
    return results
