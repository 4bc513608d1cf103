"""Segmentation losses on ``(N, S, S, 1)`` sigmoid probabilities (keras.ops only, any backend).

Every function and class is registered with Keras (package ``lungseg``), so a model compiled with
them saves to ``.keras`` and loads back with ``safe_mode=True``.

The soft Dice is computed over the whole batch by default (all pixels of all slices pooled), which
is stable on slices with small or no foreground; ``per_image=True`` averages per-slice Dice instead.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import ops

from lungseg.errors import ConfigError

_register = keras.saving.register_keras_serializable(package="lungseg")

LOSS_NAMES = ("bce", "dice", "bce_dice")


def _prepare(y_true, y_pred):
    y_pred = ops.convert_to_tensor(y_pred)
    if keras.backend.standardize_dtype(y_pred.dtype) not in ("float32", "float64"):
        y_pred = ops.cast(y_pred, "float32")
    y_true = ops.cast(y_true, y_pred.dtype)
    return y_true, y_pred


@_register
def bce(y_true, y_pred):
    """Mean binary cross-entropy over all pixels (same value and clipping as Keras' BCE)."""
    y_true, y_pred = _prepare(y_true, y_pred)
    return ops.mean(keras.losses.binary_crossentropy(y_true, y_pred))


@_register
def dice_loss(y_true, y_pred, smooth: float = 1.0, per_image: bool = False):
    """Soft Dice loss ``1 - (2 sum(y p) + smooth) / (sum(y) + sum(p) + smooth)``.

    0 for a perfect prediction, close to 1 for disjoint masks.
    """
    y_true, y_pred = _prepare(y_true, y_pred)
    axes = tuple(range(1, len(y_pred.shape))) if per_image else None
    inter = ops.sum(y_true * y_pred, axis=axes)
    total = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes)
    dice = (2.0 * inter + smooth) / (total + smooth)
    return ops.mean(1.0 - dice)


@_register
def bce_dice_loss(y_true, y_pred, bce_weight: float = 1.0, dice_weight: float = 1.0,
                  smooth: float = 1.0, per_image: bool = False):
    """``bce_weight * bce + dice_weight * dice_loss``."""
    return bce_weight * bce(y_true, y_pred) + dice_weight * dice_loss(y_true, y_pred, smooth, per_image)


@_register
class BCELoss(keras.losses.Loss):
    """:func:`bce` as a Keras loss."""

    def __init__(self, name: str = "bce", reduction: str = "sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        return bce(y_true, y_pred)


@_register
class DiceLoss(keras.losses.Loss):
    """:func:`dice_loss` as a Keras loss."""

    def __init__(self, smooth: float = 1.0, per_image: bool = False, name: str = "dice",
                 reduction: str = "sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.smooth = float(smooth)
        self.per_image = bool(per_image)

    def call(self, y_true, y_pred):
        return dice_loss(y_true, y_pred, self.smooth, self.per_image)

    def get_config(self):
        return {**super().get_config(), "smooth": self.smooth, "per_image": self.per_image}


@_register
class BCEDiceLoss(keras.losses.Loss):
    """:func:`bce_dice_loss` as a Keras loss."""

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0,
                 per_image: bool = False, name: str = "bce_dice", reduction: str = "sum_over_batch_size",
                 dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)
        self.smooth = float(smooth)
        self.per_image = bool(per_image)

    def call(self, y_true, y_pred):
        return bce_dice_loss(y_true, y_pred, self.bce_weight, self.dice_weight, self.smooth, self.per_image)

    def get_config(self):
        return {**super().get_config(), "bce_weight": self.bce_weight, "dice_weight": self.dice_weight,
                "smooth": self.smooth, "per_image": self.per_image}


_LOSSES: dict[str, Callable[[], keras.losses.Loss]] = {
    "bce": BCELoss,
    "dice": DiceLoss,
    "bce_dice": BCEDiceLoss,
}


def get_loss(name: str) -> keras.losses.Loss:
    """A fresh loss object for ``'bce'``, ``'dice'`` or ``'bce_dice'``.

    Raises:
        ConfigError: an unknown name.
    """
    key = str(name).strip().lower().replace("-", "_").replace("+", "_")
    if key not in _LOSSES:
        raise ConfigError(f"unknown loss {name!r}; allowed: {', '.join(LOSS_NAMES)}")
    return _LOSSES[key]()
