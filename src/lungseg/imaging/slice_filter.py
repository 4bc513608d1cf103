"""Which slices of a volume are used for training."""

from __future__ import annotations

import numpy as np

from lungseg.errors import ConfigError, DataValidationError


def _per_slice_any(arr: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim == 1:
        return a.astype(bool)
    if a.ndim != 3:
        raise DataValidationError(f"{name} must be (Z,) per-slice flags or a (Z, H, W) mask, got shape {a.shape}")
    return a.reshape(a.shape[0], -1).any(axis=1)


def informative_slices(lung_mask: np.ndarray, min_lung_fraction: float = 0.005) -> np.ndarray:
    """``bool (Z,)``: slices whose lung area (``mask > 0``) is at least ``min_lung_fraction`` of the slice.

    A slice with no lung at all is never informative, whatever the fraction.
    """
    m = np.asarray(lung_mask)
    if m.ndim != 3:
        raise DataValidationError(f"informative_slices expects a (Z, H, W) mask, got shape {m.shape}")
    if not 0.0 <= float(min_lung_fraction) <= 1.0:
        raise ConfigError(f"min_lung_fraction must be in [0, 1], got {min_lung_fraction}")
    z = m.shape[0]
    if z == 0:
        return np.zeros(0, dtype=bool)
    counts = np.count_nonzero(m.reshape(z, -1), axis=1)
    n_pixels = m.shape[1] * m.shape[2]
    return (counts > 0) & (counts >= float(min_lung_fraction) * n_pixels)


def select_infection_slices(
    informative: np.ndarray,
    infection: np.ndarray,
    negative_fraction: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """``bool (Z,)``: every informative slice with infection, plus a random ``negative_fraction``
    (0..1, rounded to a whole number of slices) of the informative infection-free slices.

    ``infection`` is a ``(Z, H, W)`` mask (infection is ``> 0``) or ``(Z,)`` per-slice flags.
    """
    info = np.asarray(informative).astype(bool)
    if info.ndim != 1:
        raise DataValidationError(f"informative must be a (Z,) boolean vector, got shape {info.shape}")
    has_inf = _per_slice_any(np.asarray(infection) > 0, "infection")
    if has_inf.shape != info.shape:
        raise DataValidationError(
            f"informative has {info.shape[0]} slices but the infection mask has {has_inf.shape[0]}"
        )
    fraction = float(negative_fraction)
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"negative_fraction must be in [0, 1], got {negative_fraction}")
    selected = info & has_inf
    negatives = np.flatnonzero(info & ~has_inf)
    n_keep = int(round(fraction * negatives.size))
    if n_keep > 0:
        selected[rng.choice(negatives, size=n_keep, replace=False)] = True
    return selected
