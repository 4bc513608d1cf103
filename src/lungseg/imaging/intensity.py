"""Intensity handling: source-kind detection, HU windowing, CLAHE and the float conversion.

Two kinds of CT arrive: ``"hu"`` (raw Hounsfield units, any int/float dtype) and ``"uint8"``
(already windowed to 0-255). Everything downstream works on ``uint8`` 0-255 images; the model
input is ``to_unit_float`` of those.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from lungseg.errors import ConfigError, DataValidationError

logger = logging.getLogger(__name__)

HU_WINDOW: tuple[float, float] = (-1250.0, 250.0)
SOURCE_KINDS = ("hu", "uint8")

# Number of leading-axis slices converted at once (bounds the float32 temporary to ~16 slices).
_CHUNK = 16


def detect_source_kind(volume: np.ndarray) -> str:
    """Return ``"uint8"`` if the data is already 0-255, else ``"hu"``.

    ``"uint8"`` when the dtype is ``uint8``, or when every finite value lies in [0, 255] and is an
    integer. Non-finite values (NaN, inf) are ignored. An array with no finite value is ``"hu"``.
    """
    arr = np.asarray(volume)
    if arr.dtype == np.uint8 or arr.dtype == np.bool_:
        return "uint8"
    if arr.size == 0:
        return "hu"
    if np.issubdtype(arr.dtype, np.integer):
        return "uint8" if (int(arr.min()) >= 0 and int(arr.max()) <= 255) else "hu"
    if not np.issubdtype(arr.dtype, np.floating):
        raise DataValidationError(f"unsupported CT dtype {arr.dtype}; expected an integer or float array")
    # Float data: scan in chunks so no full-volume temporaries are made.
    flat = arr.reshape(-1)
    step = 1 << 22
    seen_finite = False
    for start in range(0, flat.size, step):
        chunk = flat[start : start + step]
        finite = chunk[np.isfinite(chunk)]
        if finite.size == 0:
            continue
        seen_finite = True
        if finite.min() < 0 or finite.max() > 255:
            return "hu"
        if not np.array_equal(finite, np.round(finite)):
            return "hu"
    return "uint8" if seen_finite else "hu"


def _check_window(window) -> tuple[float, float]:
    try:
        lo, hi = (float(w) for w in window)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"window must be two numbers (low, high) in HU, got {window!r}") from exc
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise ConfigError(f"window must satisfy low < high (finite HU values), got {window!r}")
    return lo, hi


def _hu_lut(dtype: np.dtype, lo: float, hi: float) -> np.ndarray:
    """Lookup table for every value of a 1- or 2-byte integer dtype, indexed by the unsigned view."""
    n = 1 << (8 * dtype.itemsize)
    unsigned = np.dtype(f"u{dtype.itemsize}")
    values = np.arange(n, dtype=np.int64).astype(unsigned).view(dtype).astype(np.float32)
    return _scale_to_u8(values, lo, hi)


def _scale_to_u8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """float32 ``values`` (modified in place) -> uint8 via clip to [lo, hi] and a linear map."""
    scale = np.float32(255.0 / (hi - lo))
    np.subtract(values, np.float32(lo), out=values)
    np.multiply(values, scale, out=values)
    np.clip(values, 0.0, 255.0, out=values)
    np.nan_to_num(values, copy=False, nan=0.0)
    np.rint(values, out=values)
    return values.astype(np.uint8)


def window_to_uint8(arr: np.ndarray, source_kind: str, window=HU_WINDOW) -> np.ndarray:
    """Map a CT array of any shape to ``uint8`` 0-255.

    ``"hu"``: clip to ``window`` (low, high) and map linearly to 0..255, rounded; NaN becomes 0.
    ``"uint8"``: values are already 0-255 and pass through unchanged (a ``uint8`` input is returned
    as is, without a copy; other dtypes are rounded, clipped to 0..255 and cast).

    1- and 2-byte integer inputs (the usual ``int16`` CT) go through a lookup table; other dtypes
    are converted in float32 by chunks of slices, never with full-volume float64 temporaries.
    """
    a = np.asarray(arr)
    if source_kind not in SOURCE_KINDS:
        raise ConfigError(f"source_kind must be one of {SOURCE_KINDS}, got {source_kind!r}")
    if source_kind == "uint8":
        if a.dtype == np.uint8:
            return a
        if a.dtype == np.bool_:
            return a.astype(np.uint8)
        if np.issubdtype(a.dtype, np.integer):
            return np.clip(a, 0, 255).astype(np.uint8)
        out = np.empty(a.shape, dtype=np.uint8)
        flat_in, flat_out = a.reshape(-1), out.reshape(-1)
        step = 1 << 22
        for s in range(0, flat_in.size, step):
            chunk = np.nan_to_num(flat_in[s : s + step].astype(np.float32), nan=0.0)
            np.rint(chunk, out=chunk)
            np.clip(chunk, 0, 255, out=chunk)
            flat_out[s : s + step] = chunk
        return out

    lo, hi = _check_window(window)
    if a.dtype.kind in "iub" and a.dtype.itemsize <= 2:
        if a.dtype == np.bool_:
            a = a.astype(np.uint8)
        lut = _hu_lut(a.dtype, lo, hi)
        unsigned = np.dtype(f"u{a.dtype.itemsize}")
        return lut[a.view(unsigned)]
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise DataValidationError(f"unsupported CT dtype {a.dtype}; expected an integer or float array")
    out = np.empty(a.shape, dtype=np.uint8)
    if a.ndim == 0:
        return _scale_to_u8(np.asarray(a, dtype=np.float32).reshape(1), lo, hi).reshape(())
    for s in range(0, a.shape[0], _CHUNK):
        out[s : s + _CHUNK] = _scale_to_u8(a[s : s + _CHUNK].astype(np.float32), lo, hi)
    return out


def apply_clahe(img_u8: np.ndarray, clip_limit: float = 2.0, tile_grid: int = 8) -> np.ndarray:
    """CLAHE on a ``(H, W)`` or ``(N, H, W)`` ``uint8`` image, slice by slice; same shape, ``uint8``.

    One ``cv2.CLAHE`` object is created and applied to every slice.
    """
    img = np.asarray(img_u8)
    if img.dtype != np.uint8:
        raise DataValidationError(f"apply_clahe expects a uint8 image, got dtype {img.dtype}")
    if img.ndim not in (2, 3):
        raise DataValidationError(f"apply_clahe expects (H, W) or (N, H, W), got shape {img.shape}")
    if clip_limit <= 0 or int(tile_grid) < 1:
        raise ConfigError(f"CLAHE needs clip_limit > 0 and tile_grid >= 1, got {clip_limit}, {tile_grid}")
    clahe = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(int(tile_grid), int(tile_grid)))
    if img.ndim == 2:
        return clahe.apply(np.ascontiguousarray(img))
    out = np.empty_like(img)
    for k in range(img.shape[0]):
        out[k] = clahe.apply(np.ascontiguousarray(img[k]))
    return out


def to_unit_float(img_u8: np.ndarray) -> np.ndarray:
    """``uint8`` 0-255 -> ``float32`` in [0, 1] (``x / 255``), any shape."""
    return np.divide(np.asarray(img_u8), np.float32(255.0), dtype=np.float32)


def _histogram_u8(volume_u8: np.ndarray, max_samples: int = 2_000_000) -> np.ndarray:
    flat = np.asarray(volume_u8).reshape(-1)
    step = max(1, flat.size // max_samples)
    return np.bincount(flat[::step], minlength=256).astype(np.float64)


def looks_unwindowed(volume_u8: np.ndarray) -> bool:
    """Heuristic: does this 0-255 CT look like it was never put through a lung window?

    Meant for a warning only. A lung-windowed chest CT uses most of the 0-255 range, with a dark
    lung/air mode and a bright soft-tissue mode. It returns True when

    - the used range is narrow (1st-99th percentile spread < 64 grey levels), as after a min-max
      scaling of raw 12-bit data; or
    - almost nothing is bright (< 3 % of voxels >= 128): soft tissue is not bright, as when HU
      were clipped to 0-255; or
    - the dark end is a saturated wall (> 30 % of voxels at the minimum value and < 1 % in the 32
      levels just above it): the lungs were clipped to black, as with a mediastinal window.
    """
    hist = _histogram_u8(volume_u8)
    total = hist.sum()
    if total == 0:
        return False
    cdf = np.cumsum(hist) / total
    p1 = int(np.searchsorted(cdf, 0.01))
    p99 = int(np.searchsorted(cdf, 0.99))
    if p99 - p1 < 64:
        return True
    frac = hist / total
    if frac[128:].sum() < 0.03:
        return True
    vmin = int(np.flatnonzero(hist)[0])
    if frac[vmin] > 0.30 and frac[vmin + 1 : vmin + 33].sum() < 0.01:
        return True
    return False
