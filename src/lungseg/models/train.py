"""The fit loop: checkpoint the best epoch, reduce the learning rate on plateaus, stop early,
back up every epoch so an interrupted run resumes where it stopped, and return the best model.

Backups (``backup_dir``) hold two sub-folders, both removed after a clean finish:

- ``keras_backup/``: ``keras.callbacks.BackupAndRestore`` (weights + optimizer state + epoch);
- ``lungseg_state/``: the best checkpoint so far (``best.keras``) and ``state.json`` with the
  history of the finished epochs and the best monitored value, so that after a resume the best
  model and the full history are still those of the whole run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import keras
import numpy as np

from lungseg.errors import ConfigError, TrainingDataError
from lungseg.models.data import SliceSequence

logger = logging.getLogger(__name__)

KERAS_BACKUP = "keras_backup"
STATE_DIR = "lungseg_state"
STATE_FILE = "state.json"
BEST_FILE = "best.keras"

REDUCE_LR_DEFAULTS: dict[str, Any] = {"factor": 0.5, "patience": 3, "min_lr": 1e-6, "min_delta": 1e-4, "cooldown": 0}
EARLY_STOPPING_DEFAULTS: dict[str, Any] = {"patience": 8, "min_delta": 1e-4}
_REDUCE_LR_KEYS = set(REDUCE_LR_DEFAULTS) | {"monitor", "mode", "enabled"}
_EARLY_STOPPING_KEYS = set(EARLY_STOPPING_DEFAULTS) | {"monitor", "mode", "start_from_epoch", "enabled"}
#: Which epoch's weights :func:`fit` returns.
WEIGHTS = ("best", "last")
#: Learning-rate schedules: ``plateau`` (constant, halved by ``ReduceLROnPlateau``; the paper) or
#: ``cosine`` (cosine decay to zero over the whole run; no validation loss involved).
LR_SCHEDULES = ("plateau", "cosine")


def learning_rate_for(schedule: str, learning_rate: float, total_steps: int):
    """The optimizer's learning rate: a float (``plateau``) or a cosine decay over ``total_steps``."""
    if schedule not in LR_SCHEDULES:
        raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {schedule!r}")
    if schedule == "plateau":
        return float(learning_rate)
    return keras.optimizers.schedules.CosineDecay(float(learning_rate), decay_steps=max(1, int(total_steps)))


def set_seeds(seed: int) -> None:
    """Seed Python, NumPy and the Keras backend (``keras.utils.set_random_seed``)."""
    keras.utils.set_random_seed(int(seed))


def strategy_scope(name: str | None):
    """Context manager to build and compile a model in: ``strategy.scope()`` of
    :func:`lungseg.models.distribute.make_strategy` (``none``: a no-op context).

    Raises:
        ConfigError: unknown name, or a strategy on a non-TensorFlow backend.
    """
    from lungseg.models.distribute import make_strategy

    strategy = make_strategy(name)
    return contextlib.nullcontext() if strategy is None else strategy.scope()


def check_training_data(images: np.ndarray, masks: np.ndarray, task: str) -> None:
    """Refuse data that cannot train a model, naming the task.

    Raises:
        TrainingDataError: no slice, images/masks that do not match, or no positive mask pixel.
    """
    images = np.asarray(images)
    masks = np.asarray(masks)
    if images.ndim == 0 or len(images) == 0:
        raise TrainingDataError(
            f"{task} task: the training set is empty (0 slices after filtering); check the slice filter "
            "parameters, the case split and that the masks of the training cases are not empty"
        )
    if masks.shape != images.shape[:3]:
        raise TrainingDataError(f"{task} task: masks shape {masks.shape} does not match images shape {images.shape}")
    if not np.any(masks):
        raise TrainingDataError(
            f"{task} task: the {len(masks)} training masks have no positive pixel, so there is nothing to "
            "learn; check the mask files and the label mapping of the task"
        )


def _callback_params(given: dict[str, Any] | None, defaults: dict[str, Any], allowed: set[str], what: str,
                     monitor: str) -> dict[str, Any] | None:
    if given is None or given is False:
        return None
    if given is True:
        given = {}
    if not isinstance(given, dict):
        raise ConfigError(f"{what} must be a mapping of settings or null, got {given!r}")
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ConfigError(f"unknown {what} setting(s) {unknown}; allowed: {sorted(allowed)}")
    if not given.get("enabled", True):
        return None
    out = {**defaults, "monitor": monitor, **{k: v for k, v in given.items() if k != "enabled"}}
    return out


class _EpochSync(keras.callbacks.Callback):
    """Makes the training sequence follow the epoch Keras runs (also after a resume)."""

    def __init__(self, sequence: SliceSequence):
        super().__init__()
        self.sequence = sequence
        self.started = False

    def on_epoch_begin(self, epoch, logs=None):
        self.started = True
        if hasattr(self.sequence, "set_epoch"):
            self.sequence.set_epoch(epoch)


def validation_epochs(epochs: int, validation_freq: int) -> list[int]:
    """The 1-based epochs that are validated: every ``validation_freq``-th, and always the last."""
    if isinstance(validation_freq, bool) or not isinstance(validation_freq, (int, np.integer)) or validation_freq < 1:
        raise ConfigError(f"validation_freq must be a positive integer, got {validation_freq!r}")
    return sorted({*range(int(validation_freq), int(epochs) + 1, int(validation_freq)), int(epochs)})


def _record_epoch(history: dict[str, list[float]], logs: dict[str, Any] | None, epoch: int) -> None:
    """Append epoch ``epoch``'s (0-based) logs to ``history``, keeping every list one value per epoch:
    a quantity an epoch did not log (``val_*`` on an epoch that was not validated) is NaN there."""
    logs = logs or {}
    for key in set(history) | set(logs):
        values = history.setdefault(key, [])
        values.extend([math.nan] * (epoch - len(values)))
        del values[epoch:]
        values.append(float(logs[key]) if key in logs else math.nan)


class _HistoryRecorder(keras.callbacks.Callback):
    """The run's history, one value per epoch for every quantity (see :func:`_record_epoch`)."""

    def __init__(self, history: dict[str, list[float]]):
        super().__init__()
        self.history = history

    def on_epoch_end(self, epoch, logs=None):
        _record_epoch(self.history, logs, epoch)


class _StateSaver(keras.callbacks.Callback):
    """After each epoch, writes the history so far and the best value to ``state.json`` (atomically)."""

    def __init__(self, path: Path, history: dict[str, list[float]], checkpoint: keras.callbacks.ModelCheckpoint,
                 fingerprint: str | None = None):
        super().__init__()
        self.path = path
        self.history = history
        self.checkpoint = checkpoint
        self.fingerprint = fingerprint

    def on_epoch_end(self, epoch, logs=None):
        _record_epoch(self.history, logs, epoch)
        best = self.checkpoint.best
        state = {"epochs_done": epoch + 1, "monitor": self.checkpoint.monitor,
                 "best": None if best is None or not math.isfinite(float(best)) else float(best),
                 "history": self.history, "fingerprint": self.fingerprint}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.path)


def keras_verbosity(verbose: int) -> int:
    """Keras' ``verbose`` for ``fit``: a progress bar (1) only on a terminal. When stdout is a file or
    a pipe (``make demo > log``, CI), Keras would redraw the bar into the log line after line, so it
    prints one line per epoch (2) instead."""
    verbose = int(verbose)
    if verbose == 1 and not (hasattr(sys.stdout, "isatty") and sys.stdout.isatty()):
        return 2
    return verbose


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def fit(
    model: keras.Model,
    train: SliceSequence,
    val: SliceSequence | None,
    *,
    epochs: int,
    checkpoint_path: Path | None = None,
    backup_dir: Path | None = None,
    reduce_lr: dict[str, Any] | None = None,
    early_stopping: dict[str, Any] | None = None,
    verbose: int = 1,
    callbacks: list[keras.callbacks.Callback] | None = None,
    fingerprint: str | None = None,
    weights: str = "best",
    validation_freq: int = 1,
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Train a compiled model and return it with the weights of its best (or last) epoch, and the history.

    Args:
        model: a compiled model (see :func:`lungseg.models.compile_model`).
        train: training batches; its own per-epoch shuffle is used (Keras' batch shuffle is off).
        val: validation batches, or None (then the training loss is monitored).
        epochs: total number of epochs (a resumed run counts the epochs done before the interruption).
        checkpoint_path: where the best model (``.keras``) is saved; None: a temporary file.
        backup_dir: folder for per-epoch backups; when it holds a backup of an interrupted run with
            the same model, training resumes after the last finished epoch. Cleared after a clean finish.
        reduce_lr: ``ReduceLROnPlateau`` settings (``factor``, ``patience``, ``min_lr``, ``min_delta``,
            ``cooldown``); None or ``{"enabled": false}`` turns it off; ``{}`` uses the defaults.
        early_stopping: ``EarlyStopping`` settings (``patience``, ``min_delta``, ``start_from_epoch``);
            None turns it off.
        verbose: Keras verbosity (1: a progress bar per epoch on a terminal, one line per epoch
            otherwise; 2: one line per epoch; 0: silent).
        callbacks: extra Keras callbacks, run after the lungseg ones.
        fingerprint: identifies the run's settings and data (see
            :func:`lungseg.models.run.run_fingerprint`). It is stored with the backup; a
            backup made under another fingerprint (or under none, when one is given) is discarded
            with a warning and training starts afresh, instead of resuming a different run.
        weights: ``"best"``: the weights of the epoch with the lowest monitored loss (ModelCheckpoint,
            the paper); ``"last"``: the final epoch's, so that the validation patients choose nothing
            (a cross-validation fold's held-out patients then only measure).
        validation_freq: validate every ``validation_freq``-th epoch and the last one
            (:func:`validation_epochs`); the history holds NaN for the ``val_*`` quantities of the other
            epochs. Above 1 only with ``weights="last"`` and no callback that watches a ``val_``
            quantity: nothing then depends on the skipped validations, which only cost time.

    Returns:
        ``(model, history)``: the same model object holding the chosen epoch's weights, and
        ``{metric: [value per epoch]}`` over the whole run (including epochs before a resume).

    Raises:
        ConfigError: bad epochs or callback settings.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ConfigError(f"epochs must be a positive integer, got {epochs!r}")
    if weights not in WEIGHTS:
        raise ConfigError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    if getattr(model, "optimizer", None) is None or not getattr(model, "compiled", True):
        raise ConfigError("fit needs a compiled model; call lungseg.models.compile_model first")
    val_epochs = validation_epochs(int(epochs), validation_freq)
    sparse = val is not None and validation_freq > 1
    if sparse and weights != "last":
        raise ConfigError(f"validation_freq {validation_freq} needs weights: last (weights: {weights} picks "
                          "the epoch by the validation loss, so every epoch must be validated)")
    monitor = "val_loss" if val is not None else "loss"
    lr_params = _callback_params(reduce_lr, REDUCE_LR_DEFAULTS, _REDUCE_LR_KEYS, "reduce_lr", monitor)
    es_params = _callback_params(early_stopping, EARLY_STOPPING_DEFAULTS, _EARLY_STOPPING_KEYS,
                                 "early_stopping", monitor)
    if sparse:
        for what, cb in (("reduce_lr", lr_params), ("early_stopping", es_params)):
            if cb is not None and str(cb["monitor"]).startswith("val_"):
                raise ConfigError(f"validation_freq {validation_freq} skips validations that {what} watches "
                                  f"({cb['monitor']}): set validation_freq: 1, or {what}: null")
        monitor = "loss"  # the checkpoint's choice is not used (weights: last) and val_loss is not always there

    with contextlib.ExitStack() as stack:
        if backup_dir is not None:
            backup_dir = Path(backup_dir)
            state_dir = backup_dir / STATE_DIR
            best_path = state_dir / BEST_FILE
        else:
            state_dir = None
            if checkpoint_path is None:
                tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="lungseg-best-"))
                best_path = Path(tmp) / BEST_FILE
            else:
                best_path = Path(checkpoint_path)
        if best_path.suffix != ".keras":
            raise ConfigError(f"checkpoint_path must end in .keras, got {str(best_path)!r}")
        best_path.parent.mkdir(parents=True, exist_ok=True)

        # Resume: what a previous, interrupted run with this backup_dir left behind.
        prior_history: dict[str, list[float]] = {}
        best_so_far = None
        initial_epoch = 0
        if backup_dir is not None:
            meta = _read_json(backup_dir / KERAS_BACKUP / "training_metadata.json")
            state = _read_json(state_dir / STATE_FILE)
            if meta is not None and fingerprint is not None and (state or {}).get("fingerprint") != fingerprint:
                logger.warning(
                    "Folder %s holds a backup of an interrupted run with other settings or data "
                    "(fingerprint %s, this run %s): discarding it and starting afresh",
                    backup_dir, (state or {}).get("fingerprint"), fingerprint)
                shutil.rmtree(backup_dir / KERAS_BACKUP, ignore_errors=True)
                shutil.rmtree(state_dir, ignore_errors=True)
                meta = state = None
            if meta is not None:
                initial_epoch = int(meta.get("epoch", 0))
                if state is not None and state.get("monitor") == monitor and best_path.is_file():
                    best_so_far = state.get("best")
                if state is not None:
                    prior_history = {k: list(v)[:initial_epoch] for k, v in state.get("history", {}).items()}
                logger.info("Resuming training from backup %s after epoch %d of %d", backup_dir, initial_epoch, epochs)
            elif state_dir.exists():
                shutil.rmtree(state_dir)  # leftovers without a Keras backup: start afresh
            if not (best_path.is_file() and best_so_far is not None):
                best_so_far = None

        checkpoint = keras.callbacks.ModelCheckpoint(
            str(best_path), monitor=monitor, save_best_only=True, mode="min",
            initial_value_threshold=best_so_far, verbose=0,
        )
        sync = _EpochSync(train)
        history: dict[str, list[float]] = {k: list(v) for k, v in prior_history.items()}
        cbs: list[keras.callbacks.Callback] = [sync, keras.callbacks.TerminateOnNaN(), checkpoint]
        run_history: dict[str, list[float]] = {k: list(v) for k, v in prior_history.items()}
        if lr_params is not None:
            cbs.append(keras.callbacks.ReduceLROnPlateau(**lr_params, verbose=int(verbose > 0)))
        if es_params is not None:
            cbs.append(keras.callbacks.EarlyStopping(**es_params, restore_best_weights=False,
                                                     verbose=int(verbose > 0)))
        if backup_dir is not None:
            # After ReduceLROnPlateau, so the backup holds the reduced learning rate and the state
            # file the ``learning_rate`` it logs.
            cbs.append(keras.callbacks.BackupAndRestore(str(backup_dir / KERAS_BACKUP), delete_checkpoint=True))
            cbs.append(_StateSaver(state_dir / STATE_FILE, run_history, checkpoint, fingerprint))
        cbs.extend(callbacks or [])
        cbs.append(_HistoryRecorder(history))  # last, as Keras' own History: it sees what the others log

        logger.info("Training %s for %d epochs: %d train slices in %d batches, %s val slices%s",
                    model.name, epochs, train.n_slices if hasattr(train, "n_slices") else -1, len(train),
                    val.n_slices if val is not None and hasattr(val, "n_slices") else 0,
                    f" (validated after epochs {', '.join(map(str, val_epochs))})" if sparse else "")
        try:
            model.fit(train, validation_data=val, epochs=int(epochs), callbacks=cbs, shuffle=False,
                      verbose=keras_verbosity(verbose), validation_freq=val_epochs if sparse else 1)
        except (ValueError, OSError) as exc:
            if initial_epoch and not sync.started:  # failed while restoring the backup
                raise ConfigError(
                    f"folder {str(backup_dir)!r}: cannot resume training from this backup, which does not "
                    f"match the model ({type(exc).__name__}: {exc}); delete the folder to start afresh"
                ) from exc
            raise

        if weights == "last":
            logger.info("Keeping the last epoch's weights (weights: last)")
        elif best_path.is_file():
            model.load_weights(str(best_path))
            best = history.get(monitor, [])
            if best:
                logger.info("Best epoch %d: %s = %.5f", int(np.nanargmin(best)) + 1, monitor, float(np.nanmin(best)))
            if checkpoint_path is not None and Path(checkpoint_path) != best_path:
                Path(checkpoint_path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(best_path, checkpoint_path)
        else:
            logger.warning("No checkpoint was saved (%s never finite); keeping the last weights", monitor)
        if backup_dir is not None:
            shutil.rmtree(state_dir, ignore_errors=True)
            with contextlib.suppress(OSError):
                backup_dir.rmdir()  # only if empty: never remove what others put there
    return model, history
