"""Crop, pad to a square, resize to the model size, and the exact inverse.

Geometry: the box ``[y0, y1) x [x0, x1)`` is cropped, zero-padded to a ``side x side`` square with
the content centred (``side = max(height, width)``), then resized to ``size x size``. Resizing uses
pixel-centre alignment (``src = (dst + 0.5) * side / size - 0.5``) for every interpolation, so the
forward and inverse mappings agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from lungseg.errors import ConfigError, DataValidationError
from lungseg.imaging.crop import Box

_CV2_INTERP = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}
INTERPOLATIONS = ("area", "linear", "nearest")
# dtypes cv2.resize handles natively for area/linear
_CV2_DTYPES = {np.dtype(t) for t in (np.uint8, np.uint16, np.int16, np.float32, np.float64)}


@dataclass(frozen=True)
class ResizeRecord:
    """Everything needed to map a resized slice back onto its original grid."""

    orig_shape: tuple[int, int]
    box: Box
    pad: tuple[int, int, int, int]  # top, bottom, left, right
    size: int

    @property
    def side(self) -> int:
        """Side of the padded square (before resizing)."""
        return self.box.height + self.pad[0] + self.pad[1]

    def to_array(self) -> np.ndarray:
        """11 int32 numbers: H, W, y0, y1, x0, x1, top, bottom, left, right, size."""
        return np.array([*self.orig_shape, *self.box.as_tuple(), *self.pad, self.size], dtype=np.int32)

    @classmethod
    def from_array(cls, a) -> ResizeRecord:
        v = [int(x) for x in np.asarray(a).reshape(-1)]
        if len(v) != 11:
            raise DataValidationError(f"a ResizeRecord array has 11 numbers, got {len(v)}")
        return cls(orig_shape=(v[0], v[1]), box=Box(*v[2:6]), pad=(v[6], v[7], v[8], v[9]), size=v[10])


def records_to_array(records: list[ResizeRecord]) -> np.ndarray:
    """Stack records into an ``(N, 11)`` int32 array (for npz storage)."""
    if not records:
        return np.zeros((0, 11), dtype=np.int32)
    return np.stack([r.to_array() for r in records])


def records_from_array(a: np.ndarray) -> list[ResizeRecord]:
    """Inverse of :func:`records_to_array`."""
    arr = np.asarray(a)
    if arr.ndim != 2 or arr.shape[1] != 11:
        raise DataValidationError(f"resize records must be an (N, 11) array, got shape {arr.shape}")
    return [ResizeRecord.from_array(row) for row in arr]


def _nearest_index(n_out: int, n_in: int) -> np.ndarray:
    """Source index of each output pixel for a centre-aligned nearest-neighbour resize."""
    idx = np.floor((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out)).astype(np.intp)
    return np.clip(idx, 0, n_in - 1)


def _resize(img: np.ndarray, out_h: int, out_w: int, interpolation: str) -> np.ndarray:
    """Resize a 2D array to ``(out_h, out_w)``, keeping its dtype."""
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    h, w = img.shape
    if (h, w) == (out_h, out_w):
        return img.copy()
    if interpolation == "nearest":
        # Pure index gather: works for every dtype and can never blend labels.
        return img[np.ix_(_nearest_index(out_h, h), _nearest_index(out_w, w))]
    flag = _CV2_INTERP[interpolation]
    if img.dtype in _CV2_DTYPES:
        return cv2.resize(np.ascontiguousarray(img), (out_w, out_h), interpolation=flag)
    out = cv2.resize(np.ascontiguousarray(img, dtype=np.float32), (out_w, out_h), interpolation=flag)
    if img.dtype == np.bool_:
        return out >= 0.5
    if np.issubdtype(img.dtype, np.integer):
        info = np.iinfo(img.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(img.dtype)
    return out.astype(img.dtype)


def _squeeze_2d(arr: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 2:
        raise DataValidationError(f"{name} expects a 2D (H, W) array, got shape {np.asarray(arr).shape}")
    return a


def crop_pad_resize(
    img: np.ndarray, box: Box, size: int, interpolation: str = "area"
) -> tuple[np.ndarray, ResizeRecord]:
    """``(H, W)`` -> ``(size, size)``: crop to ``box``, zero-pad to a centred square, resize.

    ``interpolation`` is ``'area'`` (images, downscaling), ``'linear'`` or ``'nearest'`` (masks
    MUST use ``'nearest'``: labels are never blended). The dtype is kept.
    """
    a = _squeeze_2d(img, "crop_pad_resize")
    size = int(size)
    if size < 1:
        raise ConfigError(f"size must be >= 1, got {size}")
    h_img, w_img = a.shape
    if box.y1 > h_img or box.x1 > w_img:
        raise DataValidationError(f"crop box {box.as_tuple()} does not fit in an image of shape {a.shape}")
    crop = a[box.y0 : box.y1, box.x0 : box.x1]
    h, w = crop.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    pad = (top, side - h - top, left, side - w - left)
    if h == w:
        square = crop
    else:
        square = np.zeros((side, side), dtype=a.dtype)
        square[top : top + h, left : left + w] = crop
    out = _resize(square, size, size, interpolation)
    record = ResizeRecord(orig_shape=(int(h_img), int(w_img)), box=box, pad=pad, size=size)
    return out, record


def uncrop_unresize(arr: np.ndarray, record: ResizeRecord, interpolation: str = "linear") -> np.ndarray:
    """Inverse of :func:`crop_pad_resize`: ``(size, size)`` -> ``record.orig_shape``.

    Resizes back to the padded square, removes the padding and pastes the box into a zero image of
    the original shape. Use ``'linear'`` for probability maps (then threshold) and ``'nearest'``
    for label masks. A ``(size, size, 1)`` input is accepted. The dtype is kept.
    """
    inside = unresize_box(arr, record, interpolation)
    box = record.box
    out = np.zeros(record.orig_shape, dtype=inside.dtype)
    out[box.y0 : box.y1, box.x0 : box.x1] = inside
    return out


def unresize_box(arr: np.ndarray, record: ResizeRecord, interpolation: str = "linear") -> np.ndarray:
    """The part of :func:`uncrop_unresize` inside ``record.box``: ``(box.height, box.width)``, the dtype
    kept (everything outside the box is zero in the full inverse)."""
    a = _squeeze_2d(arr, "uncrop_unresize")
    if a.shape != (record.size, record.size):
        raise DataValidationError(f"expected a ({record.size}, {record.size}) array for this record, got {a.shape}")
    side = record.side
    square = _resize(a, side, side, interpolation).astype(a.dtype, copy=False)
    top, _, left, _ = record.pad
    box = record.box
    return square[top : top + box.height, left : left + box.width]
