"""Crop boxes: the body (from the image alone) and the lungs (from a mask)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from lungseg.errors import DataValidationError
from lungseg.imaging.masks import bounding_box, fill_holes_2d, largest_components


@dataclass(frozen=True)
class Box:
    """A half-open rectangle ``[y0, y1) x [x0, x1)`` in pixel indices."""

    y0: int
    y1: int
    x0: int
    x1: int

    def __post_init__(self) -> None:
        if not (0 <= self.y0 < self.y1 and 0 <= self.x0 < self.x1):
            raise ValueError(f"invalid Box {self.as_tuple()}: need 0 <= y0 < y1 and 0 <= x0 < x1")

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    def as_tuple(self) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)``."""
        return (self.y0, self.y1, self.x0, self.x1)

    @classmethod
    def full(cls, shape: tuple[int, ...]) -> Box:
        """The box covering a whole image of shape ``(H, W)`` (or ``(..., H, W)``)."""
        return cls(0, int(shape[-2]), 0, int(shape[-1]))

    def expand(self, margin: int, shape: tuple[int, ...]) -> Box:
        """Grow by ``margin`` pixels on each side, clipped to an image of shape ``(..., H, W)``."""
        h, w = int(shape[-2]), int(shape[-1])
        m = int(margin)
        return Box(max(0, self.y0 - m), min(h, self.y1 + m), max(0, self.x0 - m), min(w, self.x1 + m))


def _check_2d(arr: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim != 2 or a.size == 0:
        raise DataValidationError(f"{name} expects a non-empty (H, W) slice, got shape {a.shape}")
    return a


_WORK_SIDE = 256
# Minimum grey-level gap between the mean foreground and mean background of a slice with a body.
_MIN_BODY_CONTRAST = 32.0


def _odd(n: int) -> int:
    return max(3, int(n) | 1)


def body_box(slice_u8: np.ndarray, threshold: int | None = None, margin: int = 4) -> Box:
    """Bounding box of the body in a windowed ``uint8`` slice, from the image alone (no masks).

    Foreground is ``slice > threshold`` (Otsu's threshold when ``threshold`` is None). Then

    1. an opening (ellipse, about 1 % of the image side) removes noise speckle, e.g. the grainy air
       inside a circular field of view, and thin structures such as the table;
    2. a closing (about 2 % of the side) re-joins a body outline broken by dark fat;
    3. holes are filled (the lungs become part of the body);
    4. the largest 8-connected component is the body (not the table, air or FOV padding).

    Its bounding box, grown by ``margin`` and clipped to the image, is returned. Falls back to the
    full image when nothing is found, or when the foreground is not brighter than the background by
    at least 32 grey levels on average (an air- or noise-only slice). Works the same on windowed
    and on CLAHE-enhanced slices. Slices of 512 px or more are analysed after an integer
    area-downscale to about 256 px (the box is rounded outwards: a few pixels generous at most).
    """
    img = _check_2d(slice_u8, "body_box")
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    img = np.ascontiguousarray(img)
    full = Box.full(img.shape)
    # Work at <= ~256 px: the box only needs a few pixels of precision, and this keeps it fast.
    f = max(1, min(img.shape) // _WORK_SIDE)
    work = img if f == 1 else cv2.resize(img, (img.shape[1] // f, img.shape[0] // f), interpolation=cv2.INTER_AREA)
    hist = np.bincount(work.reshape(-1), minlength=256).astype(np.float64)
    if threshold is None:
        if int(work.min()) == int(work.max()):
            return full
        t, fg = cv2.threshold(work, 0, 1, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    else:
        t, fg = cv2.threshold(work, int(threshold), 1, cv2.THRESH_BINARY)
    # No body (air/noise only): the two classes are not separated by a real contrast.
    t = int(t)
    n_bg, n_fg = hist[: t + 1].sum(), hist[t + 1 :].sum()
    if n_bg == 0 or n_fg == 0:
        return full
    levels = np.arange(256, dtype=np.float64)
    contrast = (hist[t + 1 :] @ levels[t + 1 :]) / n_fg - (hist[: t + 1] @ levels[: t + 1]) / n_bg
    if contrast < _MIN_BODY_CONTRAST:
        return full
    side = min(work.shape)
    if side >= 32:  # tiny images (tests, thumbnails) skip the morphology
        k_open, k_close = _odd(side // 100), _odd(side // 50)
        opened = cv2.morphologyEx(fg, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k_open,) * 2))
        if opened.any():
            fg = opened
        fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k_close,) * 2))
    fg = fill_holes_2d(fg)
    n, _, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n <= 1:
        return full
    i = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = (int(v) for v in stats[i, :4])
    if f > 1:  # back to full resolution, rounding outwards
        sy, sx = img.shape[0] / work.shape[0], img.shape[1] / work.shape[1]
        y0, x0 = int(np.floor(y * sy)), int(np.floor(x * sx))
        y1, x1 = min(img.shape[0], int(np.ceil((y + h) * sy))), min(img.shape[1], int(np.ceil((x + w) * sx)))
        return Box(y0, y1, x0, x1).expand(margin, img.shape)
    return Box(y, y + h, x, x + w).expand(margin, img.shape)


def lung_box(mask: np.ndarray, n_components: int = 2, margin: int = 4) -> Box | None:
    """Bounding box (in y, x) of the ``n_components`` largest connected components of a mask.

    ``mask`` is a ``(H, W)`` or ``(Z, H, W)`` binary or label mask (foreground is ``> 0``);
    components are 8-connected in 2D and 26-connected in 3D. The box is grown by ``margin`` and
    clipped to the image. Returns None when the mask is empty.
    """
    m = np.asarray(mask)
    if m.ndim not in (2, 3) or m.size == 0:
        raise DataValidationError(f"lung_box expects a non-empty (H, W) or (Z, H, W) mask, got shape {m.shape}")
    box = bounding_box(largest_components(m > 0, max(1, int(n_components)), connectivity=m.ndim))
    if box is None:
        return None
    return Box(box[-2].start, box[-2].stop, box[-1].start, box[-1].stop).expand(margin, m.shape)
