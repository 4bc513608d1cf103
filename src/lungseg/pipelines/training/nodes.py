"""Training node: build, compile and fit one variant on its task's model input."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lungseg.errors import ConfigError, TrainingDataError

logger = logging.getLogger(__name__)

TRAINING_KEYS = {
    "epochs", "batch_size", "learning_rate", "loss", "seed", "reduce_lr", "early_stopping", "augment",
    "distribution_strategy", "threshold", "backup_dir", "verbose", "max_train_slices", "repeats",
}
REQUIRED_TRAINING_KEYS = {"epochs", "batch_size", "learning_rate", "loss"}
MODEL_KEYS = {"architecture"}


def check_params(model_params: dict[str, Any], training_params: dict[str, Any]) -> None:
    """Fail before any training on a missing or mistyped parameter, naming it."""
    if not isinstance(model_params, dict) or "architecture" not in model_params:
        raise ConfigError("model parameters need an 'architecture' (unet | deeplabv3plus)")
    unknown = set(training_params) - TRAINING_KEYS
    if unknown:
        raise ConfigError(f"unknown training parameter(s) {sorted(unknown)}; allowed: {sorted(TRAINING_KEYS)}")
    missing = REQUIRED_TRAINING_KEYS - set(training_params)
    if missing:
        raise ConfigError(f"missing training parameter(s) {sorted(missing)}")
    for key, kind in (("epochs", int), ("batch_size", int), ("learning_rate", float)):
        value = training_params[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"training.{key} must be a positive number, got {value!r}")
        if kind is int and int(value) != value:
            raise ConfigError(f"training.{key} must be an integer, got {value!r}")


def split_model_input(
    model_input: dict[str, np.ndarray], case_split: pd.DataFrame, subset: str, seed: int = 42
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images, masks and row indices of ``subset`` (``train`` / ``val``) of a model input.

    With the leaky slice-level split (every case ``mixed``), slices are split at random instead.
    """
    cases = model_input["case_ids"]
    if (case_split["subset"] == "mixed").all():
        frac = float(case_split["val_fraction"].iloc[0])
        rng = np.random.default_rng(int(case_split["seed"].iloc[0]))
        is_val = rng.random(len(cases)) < frac
        idx = np.flatnonzero(is_val if subset == "val" else ~is_val)
    else:
        chosen = set(case_split.loc[case_split["subset"] == subset, "case_id"])
        idx = np.flatnonzero(np.isin(cases, list(chosen)))
    return model_input["images"][idx], model_input["masks"][idx], idx


def run_fingerprint(arch: str, arch_params: dict[str, Any], training_params: dict[str, Any],
                    prep: dict[str, Any], x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray) -> str:
    """A short hash of what determines a training run: the model, the training settings (all but
    ``verbose`` and ``backup_dir``), the preprocessing config and the training / validation data.

    A backup is resumed only by a run with the same fingerprint (see :func:`lungseg.models.fit`).
    """
    settings = {k: v for k, v in training_params.items() if k not in ("verbose", "backup_dir")}
    h = hashlib.sha256(json.dumps([arch, arch_params, settings, prep], sort_keys=True, default=str).encode())
    for arr in (x_train, y_train, x_val):
        h.update(str(arr.shape).encode())
        h.update(np.ascontiguousarray(arr).data)
    return h.hexdigest()[:16]


def train_model(
    model_input: dict[str, np.ndarray],
    case_split: pd.DataFrame,
    model_params: dict[str, Any],
    training_params: dict[str, Any],
    dataset_name: str,
) -> tuple[dict[str, Any], Any, Any, dict[str, Any], dict[str, list[float]], dict[str, list[dict[str, float]]]]:
    """Train one variant.

    Returns the model config that travels with the model (saved first, so a model file never
    exists without its config), the best model (twice: for the versioned ``.keras`` file and for
    MLflow), the config again (beside the reports / in MLflow), the history per epoch, and the same
    history as MLflow step metrics.
    """
    from lungseg.models import SliceSequence, build_model, check_training_data, compile_model, fit, set_seeds
    from lungseg.models.train import strategy_scope

    check_params(model_params, training_params)
    prep = json.loads(str(model_input["config_json"]))
    task, size = prep["task"], int(prep["image_size"])
    arch = model_params["architecture"]
    arch_params = {k: v for k, v in model_params.items() if k != "architecture"}
    seed = int(training_params.get("seed", 42))
    set_seeds(seed)

    x_train, y_train, _ = split_model_input(model_input, case_split, "train")
    x_val, y_val, _ = split_model_input(model_input, case_split, "val")
    check_training_data(x_train, y_train, task)
    limit = training_params.get("max_train_slices")
    if limit and len(x_train) > int(limit):
        pick = np.sort(np.random.default_rng(seed).choice(len(x_train), int(limit), replace=False))
        x_train, y_train = x_train[pick], y_train[pick]
    fingerprint = run_fingerprint(arch, arch_params, training_params, prep, x_train, y_train, x_val)
    repeats = int(training_params.get("repeats", 1) or 1)
    if repeats > 1:  # small sets: several differently augmented passes per epoch
        x_train, y_train = np.tile(x_train, (repeats, 1, 1)), np.tile(y_train, (repeats, 1, 1))
    if len(x_val) == 0:
        raise TrainingDataError(f"{task} task: the validation subset has no slices; check the split")
    logger.info("Training %s/%s at %d px: %d train / %d val slices", task, arch, size, len(x_train), len(x_val))

    with strategy_scope(training_params.get("distribution_strategy")):
        model = build_model(arch, size, arch_params)  # fails early on an unsuitable image size
        compile_model(model, loss=training_params["loss"], learning_rate=float(training_params["learning_rate"]))
    batch = int(training_params["batch_size"])
    train_seq = SliceSequence(x_train, y_train, batch, training_params.get("augment"), shuffle=True, seed=seed)
    val_seq = SliceSequence(x_val, y_val, batch, None, shuffle=False, seed=seed)
    backup = training_params.get("backup_dir")
    with tempfile.TemporaryDirectory(prefix="lungseg-ckpt-") as tmp:
        model, history = fit(
            model, train_seq, val_seq,
            epochs=int(training_params["epochs"]),
            checkpoint_path=Path(tmp) / "best.keras",
            backup_dir=Path(backup) if backup else None,
            reduce_lr=training_params.get("reduce_lr"),
            early_stopping=training_params.get("early_stopping"),
            verbose=int(training_params.get("verbose", 1)),
            fingerprint=fingerprint,
        )
    config = {
        **prep,
        "architecture": arch,
        "model_params": arch_params,
        "threshold": float(training_params.get("threshold", 0.5)),
        "loss": training_params["loss"],
        "dataset": dataset_name,
        "train_cases": sorted(set(case_split.loc[case_split["subset"] != "val", "case_id"])),
        "val_cases": sorted(set(case_split.loc[case_split["subset"] != "train", "case_id"])),
        "run_fingerprint": fingerprint,
        "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    steps = {k: [{"value": float(v), "step": i} for i, v in enumerate(vals)] for k, vals in history.items()}
    return config, model, model, dict(config), history, steps
