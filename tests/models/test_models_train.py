"""The fit loop: training on a synthetic blob dataset, best-model restore, resume after an interrupt."""

from __future__ import annotations

import contextlib
import json
import logging

import keras
import numpy as np
import pytest

from lungseg.errors import ConfigError, TrainingDataError
from lungseg.models import (
    SliceSequence,
    build_unet,
    check_training_data,
    compile_model,
    fit,
    set_seeds,
    strategy_scope,
)

S = 32


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bright discs (random centre and radius) on a dark noisy background; masks are the discs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:S, 0:S]
    cy, cx = rng.uniform(10, S - 10, (2, n, 1, 1))
    r = rng.uniform(4, 8, (n, 1, 1))
    masks = (((yy - cy) ** 2 + (xx - cx) ** 2) < r**2).astype(np.uint8)
    images = np.clip(40 + 160 * masks + rng.normal(0, 15, (n, S, S)), 0, 255).astype(np.uint8)
    return images, masks


def _model(lr=1e-2, **compile_kwargs):
    return compile_model(build_unet(S, base_filters=4, depth=2), loss="bce_dice", learning_rate=lr, **compile_kwargs)


def test_tiny_unet_trains_and_fit_returns_the_best_epoch(tmp_path):
    set_seeds(0)
    model = _model()
    train = SliceSequence(*blobs(16, 0), batch_size=8, augment={"rotation_deg": 10}, shuffle=True, seed=0)
    val = SliceSequence(*blobs(8, 1), batch_size=8, augment=None, shuffle=False, seed=0)
    ckpt = tmp_path / "ckpt" / "best.keras"
    model, history = fit(model, train, val, epochs=5, checkpoint_path=ckpt, backup_dir=None,
                         reduce_lr={"patience": 1}, early_stopping=None, verbose=0)
    assert len(history["loss"]) == 5
    assert {"loss", "dice", "iou", "val_loss", "val_dice", "val_iou", "learning_rate"} <= set(history)
    assert history["loss"][-1] < 0.8 * history["loss"][0]
    assert ckpt.is_file()
    # the returned weights are those of the epoch with the lowest val_loss
    restored = model.evaluate(val, verbose=0, return_dict=True)["loss"]
    assert restored == pytest.approx(min(history["val_loss"]), rel=1e-4, abs=1e-5)


def _lr(model: keras.Model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


class _Interrupt(keras.callbacks.Callback):
    """Simulates a crash at the start of epoch ``at``; records, at the end of each epoch, the first
    kernel, all weights and the learning rate (after ReduceLROnPlateau: extra callbacks run last)."""

    def __init__(self, at: int):
        super().__init__()
        self.at = at
        self.weights_after: dict[int, np.ndarray] = {}
        self.all_weights_after: dict[int, list[np.ndarray]] = {}
        self.lr_after: dict[int, float] = {}

    def on_epoch_end(self, epoch, logs=None):
        self.all_weights_after[epoch] = [w.copy() for w in self.model.get_weights()]
        self.weights_after[epoch] = self.all_weights_after[epoch][0]
        self.lr_after[epoch] = _lr(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at:
            raise RuntimeError("simulated interrupt")


class _Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs: list[int] = []
        self.weights_before: dict[int, np.ndarray] = {}

        self.lr_before: dict[int, float] = {}

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)
        self.weights_before[epoch] = self.model.get_weights()[0].copy()
        self.lr_before[epoch] = _lr(self.model)


class _Sabotage(keras.callbacks.Callback):
    """After every training batch, pushes the output layer's bias far up, so that the model predicts
    foreground everywhere: every epoch it runs in validates far worse than any normal epoch."""

    def on_train_batch_end(self, batch, logs=None):
        head = next(layer for layer in reversed(self.model.layers) if getattr(layer, "bias", None) is not None)
        kernel, bias = head.get_weights()
        head.set_weights([kernel, np.full_like(bias, 30.0)])


def test_interrupted_fit_resumes_from_backup_instead_of_starting_over(tmp_path):
    set_seeds(1)
    train = SliceSequence(*blobs(8, 2), batch_size=8, augment=None, shuffle=True, seed=1)
    val = SliceSequence(*blobs(4, 3), batch_size=4, augment=None, shuffle=False, seed=1)
    backup = tmp_path / "backup"
    crash = _Interrupt(at=1)
    with pytest.raises(RuntimeError, match="simulated interrupt"):
        fit(_model(run_eagerly=True), train, val, epochs=3, checkpoint_path=None, backup_dir=backup,
            reduce_lr=None, early_stopping=None, verbose=0, callbacks=[crash], fingerprint="run-a")
    assert json.loads((backup / "keras_backup" / "training_metadata.json").read_text())["epoch"] == 1
    first_loss = json.loads((backup / "lungseg_state" / "state.json").read_text())["history"]["loss"]
    assert len(first_loss) == 1

    # A new process would build a fresh model: do the same, and resume with the same backup_dir.
    rec = _Recorder()
    model, history = fit(_model(run_eagerly=True), train, val, epochs=3, checkpoint_path=tmp_path / "best.keras",
                         backup_dir=backup, reduce_lr=None, early_stopping=None, verbose=0, callbacks=[rec],
                         fingerprint="run-a")
    assert rec.epochs == [1, 2]  # epoch 0 was not run again
    np.testing.assert_array_equal(rec.weights_before[1], crash.weights_after[0])  # weights came back
    assert len(history["loss"]) == 3 and history["loss"][0] == pytest.approx(first_loss[0])
    assert len(history["val_loss"]) == 3
    assert (tmp_path / "best.keras").is_file()
    assert not backup.exists()  # cleared after the clean finish


def _resume_data():
    train = SliceSequence(*blobs(8, 2), batch_size=8, augment=None, shuffle=True, seed=1)
    val = SliceSequence(*blobs(4, 3), batch_size=4, augment=None, shuffle=False, seed=1)
    return train, val


def test_resume_keeps_the_best_checkpoint_from_before_the_crash(tmp_path):
    set_seeds(2)
    train, val = _resume_data()
    backup = tmp_path / "backup"
    crash = _Interrupt(at=2)
    with pytest.raises(RuntimeError, match="simulated interrupt"):
        fit(_model(run_eagerly=True), train, val, epochs=4, backup_dir=backup, reduce_lr=None,
            early_stopping=None, verbose=0, callbacks=[crash], fingerprint="run-a")
    before = json.loads((backup / "lungseg_state" / "state.json").read_text())
    best_before = min(before["history"]["val_loss"])
    best_epoch = int(np.argmin(before["history"]["val_loss"]))
    assert before["best"] == pytest.approx(best_before)
    assert (backup / "lungseg_state" / "best.keras").is_file()

    # The resumed epochs are made far worse than those before the crash: the best stays the old one.
    ckpt = tmp_path / "out" / "best.keras"
    model, history = fit(_model(run_eagerly=True), train, val, epochs=4, checkpoint_path=ckpt, backup_dir=backup,
                         reduce_lr=None, early_stopping=None, verbose=0, callbacks=[_Sabotage()],
                         fingerprint="run-a")
    assert history["val_loss"][:2] == pytest.approx(before["history"]["val_loss"])
    assert min(history["val_loss"][2:]) > 2 * best_before  # the sabotage worked
    for got, kept in zip(model.get_weights(), crash.all_weights_after[best_epoch], strict=True):
        np.testing.assert_array_equal(got, kept)  # the weights of the best epoch before the crash
    assert model.evaluate(val, verbose=0, return_dict=True)["loss"] == pytest.approx(best_before, rel=1e-4, abs=1e-5)
    saved = keras.saving.load_model(ckpt, compile=False)
    for got, kept in zip(saved.get_weights(), crash.all_weights_after[best_epoch], strict=True):
        np.testing.assert_array_equal(got, kept)  # the file handed out is that checkpoint too
    assert not backup.exists()


def test_resume_restores_the_reduced_learning_rate(tmp_path):
    set_seeds(3)
    train, val = _resume_data()
    backup = tmp_path / "backup"
    # min_delta 10: no epoch counts as an improvement after the first, so with patience 1 the
    # learning rate halves at the end of epoch 1, just before the crash.
    reduce_lr = {"factor": 0.5, "patience": 1, "min_delta": 10.0, "min_lr": 1e-5}
    crash = _Interrupt(at=2)
    with pytest.raises(RuntimeError, match="simulated interrupt"):
        fit(_model(lr=1e-2, run_eagerly=True), train, val, epochs=4, backup_dir=backup, reduce_lr=reduce_lr,
            early_stopping=None, verbose=0, callbacks=[crash], fingerprint="run-a")
    assert crash.lr_after == pytest.approx({0: 1e-2, 1: 5e-3})

    rec = _Recorder()
    model, history = fit(_model(lr=1e-2, run_eagerly=True), train, val, epochs=4, backup_dir=backup,
                         reduce_lr=reduce_lr, early_stopping=None, verbose=0, callbacks=[rec], fingerprint="run-a")
    assert rec.epochs == [2, 3]
    assert rec.lr_before[2] == pytest.approx(5e-3)  # the reduced rate at the crash, not the initial 1e-2
    # the rate each epoch trained with, over the whole run
    assert history["learning_rate"] == pytest.approx([1e-2, 1e-2, 5e-3, 5e-3])
    assert not backup.exists()


def test_backup_of_a_run_with_other_settings_is_discarded_not_resumed(tmp_path, caplog):
    set_seeds(1)
    train = SliceSequence(*blobs(8, 2), batch_size=8, augment=None, shuffle=True, seed=1)
    val = SliceSequence(*blobs(4, 3), batch_size=4, augment=None, shuffle=False, seed=1)
    backup = tmp_path / "backup"
    with pytest.raises(RuntimeError, match="simulated interrupt"):
        fit(_model(run_eagerly=True), train, val, epochs=3, backup_dir=backup, reduce_lr=None,
            early_stopping=None, verbose=0, callbacks=[_Interrupt(at=1)], fingerprint="run-a")
    assert (backup / "keras_backup" / "training_metadata.json").is_file()

    rec = _Recorder()
    with caplog.at_level(logging.WARNING, logger="lungseg.models.train"):
        _, history = fit(_model(run_eagerly=True), train, val, epochs=3, backup_dir=backup, reduce_lr=None,
                         early_stopping=None, verbose=0, callbacks=[rec], fingerprint="run-b")
    assert rec.epochs == [0, 1, 2]  # started afresh
    assert len(history["loss"]) == 3
    assert any(str(backup) in r.getMessage() and "other settings or data" in r.getMessage()
               for r in caplog.records)
    assert not backup.exists()


def test_fit_refuses_bad_settings_before_training():
    train = SliceSequence(*blobs(4, 0), batch_size=2, augment=None, shuffle=False, seed=0)
    with pytest.raises(ConfigError, match=r"unknown reduce_lr setting\(s\) \['patiance'\]"):
        fit(_model(), train, None, epochs=1, checkpoint_path=None, backup_dir=None,
            reduce_lr={"patiance": 2}, early_stopping=None, verbose=0)
    with pytest.raises(ConfigError, match="epochs"):
        fit(_model(), train, None, epochs=0, checkpoint_path=None, backup_dir=None,
            reduce_lr=None, early_stopping=None, verbose=0)


def test_check_training_data_names_the_task():
    images, masks = blobs(3, 0)
    check_training_data(images, masks, "lung")  # fine
    with pytest.raises(TrainingDataError, match=r"infection task: .*0 slices after filtering"):
        check_training_data(images[:0], masks[:0], "infection")
    with pytest.raises(TrainingDataError, match="infection task: .*no positive pixel"):
        check_training_data(images, np.zeros_like(masks), "infection")
    with pytest.raises(TrainingDataError, match="does not match"):
        check_training_data(images, masks[:2], "lung")


def test_strategy_scope_and_seeds():
    assert isinstance(strategy_scope(None), contextlib.nullcontext)
    assert isinstance(strategy_scope("none"), contextlib.nullcontext)
    with pytest.raises(ConfigError, match="unknown distribution_strategy 'horovod'"):
        strategy_scope("horovod")
    if keras.backend.backend() == "tensorflow":
        with strategy_scope("mirrored"):
            model = build_unet(S, base_filters=2, depth=1)
        assert model.output_shape == (None, S, S, 1)
    set_seeds(5)
    a = build_unet(S, base_filters=2, depth=1).get_weights()[0]
    set_seeds(5)
    b = build_unet(S, base_filters=2, depth=1).get_weights()[0]
    np.testing.assert_array_equal(a, b)


def test_run_fingerprint_changes_with_settings_and_data_but_not_with_verbosity():
    from lungseg.models.run import run_fingerprint

    x, y = (np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8), np.zeros((2, 8, 8), np.uint8))
    prep = {"task": "lung", "image_size": 8}
    base = run_fingerprint("unet", {"base_filters": 4}, {"epochs": 3, "verbose": 1, "backup_dir": "a"}, prep, x, y, x)
    assert base == run_fingerprint("unet", {"base_filters": 4}, {"epochs": 3, "verbose": 2, "backup_dir": "b"},
                                   prep, x, y, x)
    others = {
        run_fingerprint("unet", {"base_filters": 8}, {"epochs": 3}, prep, x, y, x),
        run_fingerprint("unet", {"base_filters": 4}, {"epochs": 4}, prep, x, y, x),
        run_fingerprint("unet", {"base_filters": 4}, {"epochs": 3}, {**prep, "image_size": 16}, x, y, x),
        run_fingerprint("unet", {"base_filters": 4}, {"epochs": 3}, prep, x + 1, y, x),
        run_fingerprint("unet", {"base_filters": 4}, {"epochs": 3}, prep, x, y, x[:1]),
    }
    assert base not in others and len(others) == 5
    # no oversampling is the fingerprint of before the option; oversampling changes it
    assert base == run_fingerprint("unet", {"base_filters": 4}, {"epochs": 3, "oversample": 0}, prep, x, y, x)
    assert base != run_fingerprint("unet", {"base_filters": 4}, {"epochs": 3, "oversample": 2}, prep, x, y, x)


class _SpoilLastEpoch(keras.callbacks.Callback):
    """Makes the last epoch's weights far worse than the best's (weights scaled up)."""

    def __init__(self, last: int):
        super().__init__()
        self.last = last

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.last - 1:
            for w in self.model.trainable_weights:
                w.assign(w * 3.0)


def test_weights_last_keeps_the_final_epoch_and_best_restores_the_best(tmp_path):
    train = SliceSequence(*blobs(16, 0), batch_size=8, augment=None, shuffle=True, seed=0)
    val = SliceSequence(*blobs(8, 1), batch_size=8, augment=None, shuffle=False, seed=0)
    losses = {}
    for weights in ("best", "last"):
        set_seeds(0)
        model, history = fit(_model(run_eagerly=True), train, val, epochs=3, checkpoint_path=None, backup_dir=None,
                             reduce_lr=None, early_stopping=None, verbose=0, weights=weights,
                             callbacks=[_SpoilLastEpoch(3)])
        losses[weights] = model.evaluate(val, verbose=0, return_dict=True)["loss"]
        assert len(history["val_loss"]) == 3
    assert losses["best"] < losses["last"]  # the sabotaged last epoch is kept only with weights: last
    with pytest.raises(ConfigError, match="weights must be one of best, last"):
        fit(_model(), train, val, epochs=1, weights="final")


def test_cosine_schedule_decays_the_learning_rate_to_zero_over_the_run():
    from lungseg.models.train import learning_rate_for

    assert learning_rate_for("plateau", 1e-3, 100) == 1e-3
    sched = learning_rate_for("cosine", 1e-3, 100)
    values = [float(keras.ops.convert_to_numpy(sched(step))) for step in (0, 50, 100)]
    assert values[0] == pytest.approx(1e-3) and values[1] == pytest.approx(5e-4, rel=1e-3) and values[2] == pytest.approx(0, abs=1e-9)
    with pytest.raises(ConfigError, match="lr_schedule must be one of plateau, cosine"):
        learning_rate_for("onecycle", 1e-3, 100)
    # a compiled model trains with it: the optimizer's rate falls step by step
    set_seeds(0)
    train = SliceSequence(*blobs(16, 0), batch_size=8, augment=None, shuffle=True, seed=0)
    model = _model(lr=learning_rate_for("cosine", 1e-2, 2 * len(train)))
    fit(model, train, None, epochs=1, verbose=0)
    assert _lr(model) == pytest.approx(5e-3, rel=1e-3)  # half way through the 2-epoch schedule


def test_training_params_refuse_a_bad_schedule_or_weights_by_name():
    from lungseg.models.run import check_training_params

    base = {"epochs": 2, "batch_size": 4, "learning_rate": 1e-3, "loss": "bce", "seed": 0, "threshold": 0.5,
            "reduce_lr": None, "early_stopping": None, "augment": None, "distribution_strategy": "none",
            "verbose": 0, "backup_dir": None, "max_train_slices": None, "repeats": 1,
            "lr_schedule": "cosine", "weights": "last", "validation_freq": 1, "precision": "float32"}
    model = {"architecture": "unet"}
    assert check_training_params(model, base)["lr_schedule"] == "cosine"
    with pytest.raises(ConfigError, match=r"training.reduce_lr must be null with training.lr_schedule: cosine"):
        check_training_params(model, {**base, "reduce_lr": {"patience": 2}})
    with pytest.raises(ConfigError, match=r"training.weights must be one of best, last, got 'final'"):
        check_training_params(model, {**base, "weights": "final"})
    with pytest.raises(ConfigError, match=r"training.validation_freq 2 needs training.weights: last"):
        check_training_params(model, {**base, "validation_freq": 2, "weights": "best"})
    with pytest.raises(ConfigError, match=r"'training.validation_freq' must be a positive number"):
        check_training_params(model, {**base, "validation_freq": 0})
    assert check_training_params(model, base)["oversample"] == 0  # may be left out
    for bad in (-1, "2", True):
        with pytest.raises(ConfigError, match=r"training.oversample must be a number >= 0"):
            check_training_params(model, {**base, "oversample": bad})


def test_validation_freq_validates_every_nth_and_the_last_epoch_and_keeps_one_value_per_epoch(tmp_path):
    from lungseg.models.train import validation_epochs

    assert validation_epochs(5, 1) == [1, 2, 3, 4, 5]
    assert validation_epochs(5, 2) == [2, 4, 5]
    assert validation_epochs(5, 10) == [5]
    train = SliceSequence(*blobs(16, 0), batch_size=8, augment=None, shuffle=True, seed=0)
    val = SliceSequence(*blobs(8, 1), batch_size=8, augment=None, shuffle=False, seed=0)
    set_seeds(0)
    model, history = fit(_model(), train, val, epochs=3, verbose=0, weights="last", validation_freq=2,
                         backup_dir=tmp_path / "backup")
    assert len(history["loss"]) == len(history["val_loss"]) == len(history["val_dice"]) == 3
    assert np.isnan(history["val_loss"][0]) and np.isnan(history["val_dice"][0])
    assert np.isfinite(history["val_loss"][1:]).all() and np.isfinite(history["loss"]).all()
    # the last epoch was validated on the weights that are returned
    assert model.evaluate(val, verbose=0, return_dict=True)["loss"] == pytest.approx(history["val_loss"][-1], rel=1e-4)
    # skipped validations cannot choose an epoch or drive a callback on a val_ quantity
    with pytest.raises(ConfigError, match="validation_freq 2 needs weights: last"):
        fit(_model(), train, val, epochs=2, verbose=0, weights="best", validation_freq=2)
    with pytest.raises(ConfigError, match=r"skips validations that reduce_lr watches \(val_loss\)"):
        fit(_model(), train, val, epochs=2, verbose=0, weights="last", validation_freq=2, reduce_lr={"patience": 1})


def test_run_eagerly_is_optional_a_boolean_and_for_one_device_only():
    import yaml
    from conftest import PROJECT_ROOT

    from lungseg.models.run import check_training_params

    base = yaml.safe_load((PROJECT_ROOT / "conf" / "base" / "parameters_training.yml").read_text())
    training = {k: v for k, v in base["lung_unet"]["training"].items() if k != "run_eagerly"}
    model = {"architecture": "unet"}
    assert check_training_params(model, training)["run_eagerly"] is False  # left out: graph mode
    assert check_training_params(model, {**training, "run_eagerly": True})["run_eagerly"] is True
    with pytest.raises(ConfigError, match="run_eagerly must be true or false, got 'yes'"):
        check_training_params(model, {**training, "run_eagerly": "yes"})
    with pytest.raises(ConfigError, match="run_eagerly applies to distribution_strategy: none"):
        check_training_params(model, {**training, "run_eagerly": True, "distribution_strategy": "mirrored"})
