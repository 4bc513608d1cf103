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

LOSS_NAMES = ("bce", "dice", "bce_dice", "bce_tversky", "focal_dice", "structure")


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
def tversky_loss(y_true, y_pred, alpha: float = 0.3, beta: float = 0.7, smooth: float = 1.0):
    """Tversky loss ``1 - (TP + s) / (TP + alpha FP + beta FN + s)`` over the whole batch.

    ``beta > alpha`` weighs a missed lesion pixel above a false alarm (recall over precision);
    ``alpha = beta = 0.5`` is the soft Dice loss. Salehi et al. 2017.
    """
    y_true, y_pred = _prepare(y_true, y_pred)
    tp = ops.sum(y_true * y_pred)
    fp = ops.sum((1.0 - y_true) * y_pred)
    fn = ops.sum(y_true * (1.0 - y_pred))
    return 1.0 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


@_register
def focal_loss(y_true, y_pred, gamma: float = 2.0, alpha: float = 0.25):
    """Binary focal loss ``-alpha_t (1 - p_t)^gamma log(p_t)``, mean over pixels (Lin et al. 2017)."""
    y_true, y_pred = _prepare(y_true, y_pred)
    eps = keras.config.epsilon()
    p = ops.clip(y_pred, eps, 1.0 - eps)
    p_t = y_true * p + (1.0 - y_true) * (1.0 - p)
    alpha_t = y_true * alpha + (1.0 - y_true) * (1.0 - alpha)
    return ops.mean(-alpha_t * ops.power(1.0 - p_t, gamma) * ops.log(p_t))


def _odd_kernel(size: int, fraction: float) -> int:
    k = max(3, int(round(size * fraction)))
    return k if k % 2 else k + 1


#: Inf-Net's 31-pixel window at its 352-pixel input, as a share of the image width.
STRUCTURE_WINDOW = 31 / 352


@_register
def structure_loss(y_true, y_pred, window: float = STRUCTURE_WINDOW, edge_weight: float = 5.0):
    """Inf-Net's boundary-weighted BCE + IoU (Fan et al. 2020), per image, then the batch mean.

    Each pixel weighs ``1 + edge_weight * |avgpool(mask) - mask|``, so pixels near a lesion's edge count
    up to 6 times; the pooling window is ``window`` of the image width (31 px at Inf-Net's 352 px).
    """
    y_true, y_pred = _prepare(y_true, y_pred)
    k = _odd_kernel(int(y_true.shape[1]), window)
    weight = 1.0 + edge_weight * ops.abs(ops.average_pool(y_true, k, strides=1, padding="same") - y_true)
    eps = keras.config.epsilon()
    p = ops.clip(y_pred, eps, 1.0 - eps)
    pixel_bce = -(y_true * ops.log(p) + (1.0 - y_true) * ops.log(1.0 - p))
    axes = tuple(range(1, len(y_pred.shape)))
    wbce = ops.sum(weight * pixel_bce, axis=axes) / ops.sum(weight, axis=axes)
    inter = ops.sum(weight * y_true * y_pred, axis=axes)
    union = ops.sum(weight * (y_true + y_pred), axis=axes)
    wiou = 1.0 - (inter + 1.0) / (union - inter + 1.0)
    return ops.mean(wbce + wiou)


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


@_register
class BCETverskyLoss(keras.losses.Loss):
    """``bce + tversky_loss`` (alpha 0.3 on false positives, beta 0.7 on false negatives)."""

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, smooth: float = 1.0, name: str = "bce_tversky",
                 reduction: str = "sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.alpha, self.beta, self.smooth = float(alpha), float(beta), float(smooth)

    def call(self, y_true, y_pred):
        return bce(y_true, y_pred) + tversky_loss(y_true, y_pred, self.alpha, self.beta, self.smooth)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta, "smooth": self.smooth}


@_register
class FocalDiceLoss(keras.losses.Loss):
    """``focal_weight * focal_loss + dice_loss``; the focal term is scaled up because it is small."""

    def __init__(self, gamma: float = 2.0, alpha: float = 0.25, focal_weight: float = 10.0, smooth: float = 1.0,
                 name: str = "focal_dice", reduction: str = "sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.gamma, self.alpha = float(gamma), float(alpha)
        self.focal_weight, self.smooth = float(focal_weight), float(smooth)

    def call(self, y_true, y_pred):
        return (self.focal_weight * focal_loss(y_true, y_pred, self.gamma, self.alpha)
                + dice_loss(y_true, y_pred, self.smooth))

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma, "alpha": self.alpha,
                "focal_weight": self.focal_weight, "smooth": self.smooth}


@_register
class StructureLoss(keras.losses.Loss):
    """:func:`structure_loss` (Inf-Net's weighted BCE + weighted IoU) as a Keras loss."""

    def __init__(self, window: float = STRUCTURE_WINDOW, edge_weight: float = 5.0, name: str = "structure",
                 reduction: str = "sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.window, self.edge_weight = float(window), float(edge_weight)

    def call(self, y_true, y_pred):
        return structure_loss(y_true, y_pred, self.window, self.edge_weight)

    def get_config(self):
        return {**super().get_config(), "window": self.window, "edge_weight": self.edge_weight}


_LOSSES: dict[str, Callable[[], keras.losses.Loss]] = {
    "bce": BCELoss,
    "dice": DiceLoss,
    "bce_dice": BCEDiceLoss,
    "bce_tversky": BCETverskyLoss,
    "focal_dice": FocalDiceLoss,
    "structure": StructureLoss,
}


def get_loss(name: str) -> keras.losses.Loss:
    """A fresh loss object for a name in :data:`LOSS_NAMES`.

    Raises:
        ConfigError: an unknown name.
    """
    key = str(name).strip().lower().replace("-", "_").replace("+", "_")
    if key not in _LOSSES:
        raise ConfigError(f"unknown loss {name!r}; allowed: {', '.join(LOSS_NAMES)}")
    return _LOSSES[key]()
