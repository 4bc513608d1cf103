"""Losses and metrics of lungseg.models on hand-computed examples."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from lungseg.errors import ConfigError
from lungseg.models import (
    BCEDiceLoss,
    DiceCoefficient,
    DiceLoss,
    IoUScore,
    bce,
    bce_dice_loss,
    dice_loss,
    get_loss,
    get_metrics,
)


def _np(x) -> float:
    return float(keras.ops.convert_to_numpy(x))


def _masks():
    y = np.zeros((2, 8, 8, 1), np.float32)
    y[0, 2:6, 2:6] = 1  # 16 px
    y[1, 0:2, 0:4] = 1  # 8 px
    return y


def test_dice_loss_perfect_is_zero_and_disjoint_is_one():
    y = _masks()
    assert _np(dice_loss(y, y)) == pytest.approx(0.0, abs=1e-6)
    disjoint = np.zeros_like(y)
    disjoint[0, 7, 7] = disjoint[1, 7, 0:7] = 1  # 8 px, no overlap with y
    # 1 - (0 + 1) / (24 + 8 + 1)
    assert _np(dice_loss(y, disjoint)) == pytest.approx(1 - 1 / 33, abs=1e-6)
    assert _np(dice_loss(y, disjoint, smooth=0.0)) == pytest.approx(1.0, abs=1e-6)


def test_dice_loss_hand_computed_soft_and_per_image():
    y = _masks()
    p = y * 0.5  # soft prediction: intersection 12, sum p 12, sum y 24
    assert _np(dice_loss(y, p, smooth=0.0)) == pytest.approx(1 - 24 / 36, abs=1e-6)
    # per image: image 0: 1 - 16/24; image 1: 1 - 8/12 -> both 1/3
    assert _np(dice_loss(y, p, smooth=0.0, per_image=True)) == pytest.approx(1 / 3, abs=1e-6)
    assert _np(DiceLoss(smooth=0.0)(y, p)) == pytest.approx(1 - 24 / 36, abs=1e-6)


def test_bce_matches_keras_and_combined_loss_adds_up():
    rng = np.random.default_rng(0)
    y = _masks()
    p = rng.uniform(0.01, 0.99, y.shape).astype(np.float32)
    expected = _np(keras.losses.BinaryCrossentropy()(y, p))
    assert _np(bce(y, p)) == pytest.approx(expected, rel=1e-5)
    assert _np(get_loss("bce")(y, p)) == pytest.approx(expected, rel=1e-5)
    # hand value for a single pixel: -log(0.8)
    assert _np(bce(np.ones((1, 1, 1, 1)), np.full((1, 1, 1, 1), 0.8))) == pytest.approx(-np.log(0.8), rel=1e-5)
    combined = _np(bce_dice_loss(y, p))
    assert combined == pytest.approx(_np(bce(y, p)) + _np(dice_loss(y, p)), rel=1e-5)
    assert _np(BCEDiceLoss(bce_weight=2.0, dice_weight=0.5)(y, p)) == pytest.approx(
        2 * _np(bce(y, p)) + 0.5 * _np(dice_loss(y, p)), rel=1e-5
    )


def test_get_loss_names_and_serialisation():
    assert isinstance(get_loss("dice"), DiceLoss)
    assert isinstance(get_loss("bce_dice"), BCEDiceLoss)
    with pytest.raises(ConfigError, match="allowed: bce, dice, bce_dice, bce_tversky, focal_dice, structure"):
        get_loss("focal")
    loss = BCEDiceLoss(bce_weight=0.3, smooth=2.0)
    back = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(back, BCEDiceLoss) and back.bce_weight == 0.3 and back.smooth == 2.0


def test_metrics_on_known_masks_and_accumulation():
    y = _masks()  # 24 positive px
    p = np.zeros_like(y)
    p[0, 2:6, 2:4] = 0.9  # 8 px inside image 0's square
    p[0, 6, 0:4] = 0.7  # 4 px outside (false positives)
    p[0, 2:6, 4:6] = 0.4  # below threshold: not predicted
    dice, iou = DiceCoefficient(), IoUScore()
    dice.update_state(y, p)
    iou.update_state(y, p)
    # |A|=24, |B|=12, |A∩B|=8: Dice 16/36, IoU 8/28
    assert _np(dice.result()) == pytest.approx(16 / 36, abs=1e-6)
    assert _np(iou.result()) == pytest.approx(8 / 28, abs=1e-6)
    # a second batch accumulates counts (pooled over the epoch), it does not average scores
    dice.update_state(y, y)
    assert _np(dice.result()) == pytest.approx((16 + 48) / (36 + 48), abs=1e-6)
    dice.reset_state()
    empty = np.zeros_like(y)
    dice.update_state(empty, empty)
    assert _np(dice.result()) == pytest.approx(1.0)
    lower = DiceCoefficient(threshold=0.3)
    lower.update_state(y, p)  # now the 0.4 pixels count: |B|=20, |A∩B|=16
    assert _np(lower.result()) == pytest.approx(32 / 44, abs=1e-6)
    assert [m.name for m in get_metrics()] == ["dice", "iou"]


def test_tversky_weighs_misses_above_false_alarms_and_halves_to_dice():
    from lungseg.models.losses import tversky_loss

    y = _masks()  # 24 px
    assert _np(tversky_loss(y, y)) == pytest.approx(0.0, abs=1e-6)
    assert _np(tversky_loss(y, np.zeros_like(y))) == pytest.approx(1 - 1 / (0.7 * 24 + 1), abs=1e-6)
    # alpha = beta = 0.5 is the soft Dice loss (with twice the smoothing)
    p = np.random.default_rng(1).uniform(0.01, 0.99, y.shape).astype(np.float32)
    assert _np(tversky_loss(y, p, 0.5, 0.5)) == pytest.approx(_np(dice_loss(y, p, smooth=2.0)), rel=1e-5)
    # missing 8 lesion pixels costs more than 8 false alarms (beta 0.7 > alpha 0.3)
    under = y.copy()
    under[0, 2:4, 2:6] = 0
    over = y.copy()
    over[0, 6:8, 2:6] = 1
    assert _np(tversky_loss(y, under)) > _np(tversky_loss(y, over))
    bt = get_loss("bce_tversky")
    assert _np(bt(y, p)) == pytest.approx(_np(bce(y, p)) + _np(tversky_loss(y, p)), rel=1e-5)


def test_focal_loss_hand_value_and_easy_pixels_count_less():
    from lungseg.models.losses import focal_loss

    one, p8 = np.ones((1, 1, 1, 1), np.float32), np.full((1, 1, 1, 1), 0.8, np.float32)
    # -alpha (1 - p)^2 log p for a positive pixel at p = 0.8
    assert _np(focal_loss(one, p8)) == pytest.approx(-0.25 * 0.2 ** 2 * np.log(0.8), rel=1e-5)
    easy, hard = np.full_like(one, 0.95), np.full_like(one, 0.3)
    ratio_focal = _np(focal_loss(one, hard)) / _np(focal_loss(one, easy))
    ratio_bce = _np(bce(one, hard)) / _np(bce(one, easy))
    assert ratio_focal > 10 * ratio_bce
    y = _masks()
    p = np.random.default_rng(2).uniform(0.01, 0.99, y.shape).astype(np.float32)
    assert _np(get_loss("focal_dice")(y, p)) == pytest.approx(10 * _np(focal_loss(y, p)) + _np(dice_loss(y, p)),
                                                              rel=1e-5)


def test_structure_loss_weighs_edges_and_matches_a_numpy_reference():
    from scipy.ndimage import uniform_filter

    from lungseg.models.losses import StructureLoss, structure_loss

    y = np.zeros((2, 32, 32, 1), np.float32)
    y[0, 8:20, 10:24] = 1
    y[1, 2:6, 2:6] = 1
    p = np.random.default_rng(3).uniform(0.01, 0.99, y.shape).astype(np.float32)
    assert _np(structure_loss(y, y)) < 0.01  # only the clipped log and the +1 smoothing remain
    # numpy reference: window 31/352 of 32 px -> 3 px; "same" average pooling counts only real pixels
    pooled = np.stack([uniform_filter(im[..., 0], size=3, mode="constant") /
                       uniform_filter(np.ones_like(im[..., 0]), size=3, mode="constant") for im in y])[..., None]
    w = 1 + 5 * np.abs(pooled - y)
    assert w.max() > 1 and w[0, 0, 0, 0] == 1  # edges weigh more, far pixels 1
    pix = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    wbce = (w * pix).sum(axis=(1, 2, 3)) / w.sum(axis=(1, 2, 3))
    inter = (w * y * p).sum(axis=(1, 2, 3))
    union = (w * (y + p)).sum(axis=(1, 2, 3))
    expected = np.mean(wbce + 1 - (inter + 1) / (union - inter + 1))
    assert _np(structure_loss(y, p)) == pytest.approx(expected, rel=1e-4)
    loss = StructureLoss(edge_weight=3.0)
    back = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(back, StructureLoss) and back.edge_weight == 3.0
    assert _np(get_loss("structure")(y, p)) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("name", ["bce_tversky", "focal_dice", "structure"])
def test_new_losses_train_in_bf16_and_save(tmp_path, name):
    from lungseg.models import build_model, compile_model, load_model

    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).uniform(0, 1, (4, 16, 16, 1)).astype(np.float32)
    y = (x > 0.6).astype(np.float32)
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = compile_model(build_model("unet", 16, {"base_filters": 4, "depth": 2}), name, 1e-2)
        hist = model.fit(x, y, epochs=3, batch_size=4, verbose=0)
    finally:
        keras.config.set_dtype_policy("float32")
    losses = hist.history["loss"]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    model.save(tmp_path / "m.keras")
    back = load_model(tmp_path / "m.keras")
    assert back.loss.name == name
