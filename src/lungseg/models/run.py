"""Train one variant end to end: split, subsample, fingerprint, build, fit, describe.

:func:`train_variant` is what the Kedro training node calls (and what cross-validation calls once
per fold). It returns a :class:`TrainResult`; the node only hands its parts to the catalog.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lungseg.config import check_section, positive_number
from lungseg.errors import ConfigError, TrainingDataError
from lungseg.layout import RUN_ENV_VARIABLE
from lungseg.models.data import SliceSequence, augment_params, extent_weights, split_model_input
from lungseg.models.distribute import (
    as_distributed_input,
    is_multi_worker,
    make_strategy,
    multi_worker_fit,
    replicas,
    scaled,
    shard,
    worker_shard,
)
from lungseg.models.factory import build_model, compile_model
from lungseg.models.precision import check_precision, precision_policy, resolve_and_log, with_precision
from lungseg.models.train import (
    LR_SCHEDULES,
    WEIGHTS,
    check_training_data,
    fit,
    learning_rate_for,
    set_seeds,
)

logger = logging.getLogger(__name__)

#: Keys of a variant's ``training`` parameters; all are set in conf/base/parameters_training.yml.
TRAINING_KEYS = (
    "epochs", "batch_size", "learning_rate", "loss", "seed", "threshold", "reduce_lr", "early_stopping",
    "augment", "distribution_strategy", "verbose", "backup_dir", "max_train_slices", "repeats",
    "lr_schedule", "weights", "validation_freq", "precision",
)
#: Keys that may be left out (their default in brackets): ``run_eagerly`` [false], ``oversample`` [0: every
#: training slice once per epoch; s > 0: slices drawn by :func:`lungseg.models.data.extent_weights`].
TRAINING_OPTIONAL_KEYS = ("run_eagerly", "oversample")


@dataclass
class TrainResult:
    """What one training run produces.

    Attributes:
        model: the Keras model with its best epoch's weights.
        config: the model config that travels with the model (preprocessing settings, architecture,
            threshold, dataset, cases, fingerprint); inference reads it back.
        history: ``{metric: [value per epoch]}``.
    """

    model: Any
    config: dict[str, Any]
    history: dict[str, list[float]]


def check_training_params(model_params: Any, training_params: Any, section: str = "training") -> dict[str, Any]:
    """Fail before any training on a missing, unknown or mistyped parameter, naming it."""
    if not isinstance(model_params, dict) or "architecture" not in model_params:
        raise ConfigError("model parameters need an 'architecture' (unet | deeplabv3plus)")
    params = check_section(training_params, section, TRAINING_KEYS, TRAINING_OPTIONAL_KEYS)
    params.setdefault("run_eagerly", False)
    params.setdefault("oversample", 0)
    over = params["oversample"]
    if isinstance(over, bool) or not isinstance(over, (int, float)) or not np.isfinite(over) or over < 0:
        raise ConfigError(f"{section}.oversample must be a number >= 0 (0: no oversampling), got {over!r}")
    if not isinstance(params["run_eagerly"], bool):
        raise ConfigError(f"{section}.run_eagerly must be true or false, got {params['run_eagerly']!r}")
    if params["run_eagerly"] and params["distribution_strategy"] not in (None, "none"):
        raise ConfigError(f"{section}.run_eagerly applies to distribution_strategy: none "
                          f"(got {params['distribution_strategy']!r})")
    positive_number(params, "epochs", section, integer=True)
    positive_number(params, "batch_size", section, integer=True)
    positive_number(params, "learning_rate", section)
    positive_number(params, "repeats", section, integer=True)
    if params["max_train_slices"] is not None:
        positive_number(params, "max_train_slices", section, integer=True)
    for key, allowed in (("lr_schedule", LR_SCHEDULES), ("weights", WEIGHTS)):
        if params[key] not in allowed:
            raise ConfigError(f"{section}.{key} must be one of {', '.join(allowed)}, got {params[key]!r}")
    positive_number(params, "validation_freq", section, integer=True)
    check_precision(params["precision"], section)
    if params["validation_freq"] > 1 and params["weights"] != "last":
        raise ConfigError(f"{section}.validation_freq {params['validation_freq']} needs {section}.weights: last "
                          f"(weights: {params['weights']} picks the epoch by its validation loss)")
    if params["lr_schedule"] == "cosine" and params["reduce_lr"] is not None:
        raise ConfigError(f"{section}.reduce_lr must be null with {section}.lr_schedule: cosine "
                          "(the schedule sets the learning rate at every step)")
    return params


def run_fingerprint(arch: str, arch_params: dict[str, Any], training_params: dict[str, Any],
                    prep: dict[str, Any], x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray) -> str:
    """A short hash of what determines a training run: the model, the training settings (all but
    ``verbose``, ``backup_dir``, ``validation_freq`` and ``run_eagerly``, which change no weight), the preprocessing
    config and the training / validation data.

    A backup is resumed only by a run with the same fingerprint (see :func:`lungseg.models.fit`).
    """
    settings = {k: v for k, v in training_params.items()
                if k not in ("verbose", "backup_dir", "validation_freq", "run_eagerly")
                and not (k == "oversample" and not v)}  # no oversampling: the fingerprint of before the option
    h = hashlib.sha256(json.dumps([arch, arch_params, settings, prep], sort_keys=True, default=str).encode())
    for arr in (x_train, y_train, x_val):
        h.update(str(arr.shape).encode())
        h.update(np.ascontiguousarray(arr).data)
    return h.hexdigest()[:16]


def _training_slices(model_input, case_split, task: str, params: dict[str, Any], seed: int, with_lungs: bool = False):
    """Train and validation arrays, the training set subsampled to ``max_train_slices``; with ``with_lungs``
    also the training slices' lung masks (``model_input["lungs"]``), else None."""
    x_train, y_train, rows = split_model_input(model_input, case_split, "train")
    x_val, y_val, _ = split_model_input(model_input, case_split, "val")
    check_training_data(x_train, y_train, task)
    if len(x_val) == 0:
        raise TrainingDataError(f"{task} task: the validation subset has no slices; check the split")
    limit = params["max_train_slices"]
    if limit and len(x_train) > int(limit):
        pick = np.sort(np.random.default_rng(seed).choice(len(x_train), int(limit), replace=False))
        x_train, y_train, rows = x_train[pick], y_train[pick], rows[pick]
    lungs = np.asarray(model_input["lungs"])[rows] if with_lungs else None
    return x_train, y_train, x_val, y_val, lungs


def train_variant(
    model_input: dict[str, np.ndarray],
    case_split: pd.DataFrame,
    model_params: dict[str, Any],
    training_params: dict[str, Any],
    dataset_name: str,
    strategy: Any = None,
) -> TrainResult:
    """Build, compile and fit one variant on the ``train`` cases of ``case_split``, validating on
    its ``val`` cases, and describe the result in a model config.

    ``strategy``: a ``tf.distribute`` strategy made beforehand (``lungseg train-worker`` makes the
    multi-worker one first thing); default: the one ``training.distribution_strategy`` names. The global
    batch and the learning rate follow its replicas (:mod:`lungseg.models.distribute`)."""
    params = check_training_params(model_params, training_params)
    prep = json.loads(str(model_input["config_json"]))
    task, size = prep["task"], int(prep["image_size"])
    arch = model_params["architecture"]
    arch_params = {k: v for k, v in model_params.items() if k != "architecture"}
    seed = int(params["seed"])
    set_seeds(seed)
    # ``auto`` is resolved here, so the fingerprint, the config and MLflow see the policy actually used
    params["precision"] = resolve_and_log(params["precision"], "Training")

    augment = augment_params(params["augment"])
    # the lung model paints inside its own mask (consolidated lung is still lung); the infection model paints
    # inside the model input's lung masks and learns the painted pixels as infection
    paint_in_lungs = augment is not None and bool(augment.paint) and task != "lung"
    if paint_in_lungs and "lungs" not in model_input:
        raise ConfigError(f"training.augment.paint: the {task} model input {dataset_name!r} carries no lung masks "
                          "to paint into (built before they were stored): rerun its preprocessing nodes")
    x_train, y_train, x_val, y_val, l_train = _training_slices(model_input, case_split, task, params, seed,
                                                               with_lungs=paint_in_lungs)
    fingerprint = run_fingerprint(arch, arch_params, params, prep, x_train, y_train, x_val)
    repeats = int(params["repeats"])
    if repeats > 1:  # small sets: several differently augmented passes per epoch
        x_train = np.tile(x_train, (repeats,) + (1,) * (x_train.ndim - 1))
        y_train = np.tile(y_train, (repeats, 1, 1))
        l_train = None if l_train is None else np.tile(l_train, (repeats, 1, 1))
    logger.info("Training %s/%s at %d px: %d train / %d val slices", task, arch, size, len(x_train), len(x_val))

    if strategy is None:
        strategy = make_strategy(params["distribution_strategy"])
    batch, base_lr = scaled(int(params["batch_size"]), float(params["learning_rate"]), strategy)
    multi = is_multi_worker(strategy)
    if multi:  # each worker feeds its own shard; its batch is its share of the global batch
        index, count = worker_shard()
        batch = batch // count
        if l_train is None:
            x_train, y_train = shard(x_train, y_train, index, count, batch)
        else:
            x_train, y_train, l_train = shard(x_train, y_train, index, count, batch, l_train)
    if replicas(strategy) > 1:
        logger.info("%d replicas: global batch %d, learning rate %g (batch_size %s and learning_rate %s per replica)",
                    replicas(strategy), batch * (count if multi else 1), base_lr, params["batch_size"],
                    params["learning_rate"])
    weights = extent_weights(y_train, float(params["oversample"]))
    if weights is not None:
        logger.info("Oversampling by lesion extent (oversample %g): slice weights %.2f to %.2f (1: no lesion)",
                    params["oversample"], weights.min(), weights.max())
    train_seq = SliceSequence(x_train, y_train, batch, params["augment"], shuffle=True, seed=seed,
                              sample_weights=weights, paint_regions=l_train)
    lr = learning_rate_for(params["lr_schedule"], base_lr, int(params["epochs"]) * len(train_seq))
    scope = contextlib.nullcontext() if strategy is None else strategy.scope()
    with scope, precision_policy(params["precision"]):
        model = build_model(arch, size, arch_params, channels=int(prep.get("context", 1)))  # fails early on a bad size
        compile_model(model, loss=params["loss"], learning_rate=lr, run_eagerly=params["run_eagerly"])
    val_seq = SliceSequence(x_val, y_val, batch, None, shuffle=False, seed=seed)
    train_in, val_in = (as_distributed_input(train_seq), as_distributed_input(val_seq)) if multi else (train_seq, val_seq)
    backup = params["backup_dir"]
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="lungseg-ckpt-"))
        if multi:  # Keras' fit across workers, made to run (keras-team/keras#20585): see multi_worker_fit
            stack.enter_context(strategy.scope())
            stack.enter_context(multi_worker_fit(model, val_seq[0] if len(val_seq) else train_seq[0]))
        model, history = fit(
            model, train_in, val_in,
            epochs=int(params["epochs"]),
            checkpoint_path=Path(tmp) / "best.keras",
            backup_dir=Path(backup) if backup else None,
            reduce_lr=params["reduce_lr"],
            early_stopping=params["early_stopping"],
            verbose=int(params["verbose"]),
            fingerprint=fingerprint,
            weights=params["weights"],
            validation_freq=int(params["validation_freq"]),
        )
    if params["precision"] != "float32":  # saved and served as a float32 model: loads and predicts anywhere
        model = compile_model(with_precision(model, "float32"), loss=params["loss"], learning_rate=lr)
    elif params["run_eagerly"]:  # saved compiled as usual: the eager mode was the training run's only
        model = compile_model(model, loss=params["loss"], learning_rate=lr)
    config = {
        **prep,
        "architecture": arch,
        "model_params": arch_params,
        "threshold": float(params["threshold"]),
        "loss": params["loss"],
        "precision": params["precision"],
        "dataset": dataset_name,
        "train_cases": sorted(set(case_split.loc[case_split["subset"] != "val", "case_id"])),
        "val_cases": sorted(set(case_split.loc[case_split["subset"] != "train", "case_id"])),
        "run_fingerprint": fingerprint,
        "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    environment = os.environ.get(RUN_ENV_VARIABLE)  # the Kedro environment, set by the project's hooks
    if environment:
        config["environment"] = environment
    return TrainResult(model=model, config=config, history=history)
