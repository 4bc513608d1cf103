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
    with pytest.raises(ConfigError, match="allowed: bce, dice, bce_dice"):
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
