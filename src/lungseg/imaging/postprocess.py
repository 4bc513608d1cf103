"""3D post-processing of predicted lung masks: largest components, hole filling, left/right split.

The mask operations themselves live in :mod:`lungseg.imaging.masks`; this module composes them.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from lungseg.errors import ConfigError, DataValidationError
from lungseg.imaging.masks import (
    bounding_box,
    fill_holes_2d,
    label_components,
    largest_component_labels,
    largest_components,
)

LEFT, RIGHT = 1, 2


def _as_3d(mask: np.ndarray, name: str) -> tuple[np.ndarray, bool]:
    m = np.asarray(mask)
    if m.ndim == 2:
        return m[None], True
    if m.ndim != 3:
        raise DataValidationError(f"{name} expects a (Z, H, W) mask, got shape {m.shape}")
    return m, False


def keep_largest_components(
    mask3d: np.ndarray, n: int = 2, min_voxels: int = 0, connectivity: int = 1
) -> np.ndarray:
    """Keep the ``n`` largest 3D connected components of ``mask3d > 0`` that have ``>= min_voxels``.

    ``connectivity`` 1 = faces (6-neighbours), 3 = 26-neighbours. Returns ``uint8`` 0/1, same shape
    (a 2D mask is treated as one slice). :func:`lungseg.imaging.masks.largest_components` in 3D.
    """
    m, squeezed = _as_3d(mask3d, "keep_largest_components")
    out = largest_components(m > 0, max(0, int(n)), min_size=max(0, int(min_voxels)), connectivity=connectivity)
    return out[0] if squeezed else out


def fill_holes(mask3d: np.ndarray) -> np.ndarray:
    """Fill holes in each axial slice of ``mask3d > 0`` (2D hole filling per slice); ``uint8`` 0/1.

    :func:`lungseg.imaging.masks.fill_holes_2d` (a hole is background not 4-connected to the slice
    border, as ``scipy.ndimage.binary_fill_holes`` with its default 2D structure).
    """
    _as_3d(mask3d, "fill_holes")  # checks the shape
    return fill_holes_2d(np.asarray(mask3d) > 0)


def _midline_column(col_profile: np.ndarray) -> int:
    """Column of the minimum of the (smoothed) column-wise lung profile in the middle half of its extent.

    Columns ``<= c`` are the patient's right, ``> c`` the left.
    """
    cols = np.flatnonzero(col_profile)
    x0, x1 = int(cols[0]), int(cols[-1])
    width = x1 - x0 + 1
    if width < 4:
        return (x0 + x1) // 2
    smooth = ndimage.uniform_filter1d(col_profile.astype(np.float64), size=max(3, width // 25 | 1), mode="constant")
    lo, hi = x0 + width // 4, x1 - width // 4
    window = smooth[lo : hi + 1]
    rel = int(np.argmin(window))
    # A flat-bottomed valley (a real gap between the lungs): take the middle of the run of minima.
    is_min = window <= window[rel] + 1e-9
    before = np.flatnonzero(~is_min[:rel])
    after = np.flatnonzero(~is_min[rel:])
    start = int(before[-1]) + 1 if before.size else 0
    end = rel + int(after[0]) - 1 if after.size else window.size - 1
    return lo + (start + end) // 2


def split_left_right(lung3d: np.ndarray, *, min_ratio: float = 0.1) -> np.ndarray:
    """Binary lung ``(Z, H, W)`` -> labels ``1`` = left, ``2`` = right (``uint8``).

    Canonical arrays put the patient's left at the LARGER column index. If the two largest 3D
    components are both big (the smaller has at least ``min_ratio`` of the larger's voxels), the
    one with the larger mean column is the left lung; any other voxel goes to the side of the
    column half-way between the two lungs. Otherwise (the lungs touch, one component), the mask is
    split at the minimum of the column-wise lung profile in the middle half of the lung's extent.
    """
    m, squeezed = _as_3d(lung3d, "split_left_right")
    if not 0.0 <= float(min_ratio) <= 1.0:
        raise ConfigError(f"min_ratio must be in [0, 1] (a fraction of the larger lung), got {min_ratio!r}")
    fg = m > 0
    out = np.zeros(m.shape, dtype=np.uint8)
    box = bounding_box(fg)
    if box is None:
        return out[0] if squeezed else out
    out[box] = _split_block(fg[box], min_ratio)
    return out[0] if squeezed else out


def _split_block(fg: np.ndarray, min_ratio: float, labels: np.ndarray | None = None,
                 sizes: np.ndarray | None = None) -> np.ndarray:
    """:func:`split_left_right` on the foreground's bounding block; ``labels`` / ``sizes``, when given,
    are the foreground's components already (:func:`lungseg.imaging.masks.largest_component_labels`)."""
    if labels is None:
        labels, sizes = label_components(fg, 1)
    order = np.argsort(sizes, kind="stable")[::-1]
    a = int(order[0])
    b = int(order[1]) if np.count_nonzero(sizes) > 1 else 0
    cols = np.arange(fg.shape[2], dtype=np.float64)
    if b and sizes[b] >= min_ratio * sizes[a]:
        # mean column of each component, from its column-wise voxel profile inside its own bounding box
        objects = ndimage.find_objects(labels)
        means = []
        for lab in (a, b):
            sl = objects[lab - 1]
            profile = np.count_nonzero(labels[sl] == lab, axis=(0, 1))
            means.append(float(profile @ cols[sl[2]]) / sizes[lab])
        left, right = (a, b) if means[0] > means[1] else (b, a)
        split = (means[0] + means[1]) / 2.0
        lut = np.zeros(sizes.shape, dtype=np.uint8)
        lut[left], lut[right] = LEFT, RIGHT
        out = lut[labels]
        rest = fg & (out == 0)
        if rest.any():
            side = np.where(cols > split, LEFT, RIGHT).astype(np.uint8)
            idx = np.nonzero(rest)
            out[idx] = side[idx[2]]
        return out
    profile = np.count_nonzero(fg, axis=(0, 1))
    c = _midline_column(profile)
    side = np.where(np.arange(fg.shape[2]) > c, LEFT, RIGHT).astype(np.uint8)
    return np.where(fg, side[None, None, :], np.uint8(0)).astype(np.uint8)


def clean_lung_mask(binary3d: np.ndarray, *, min_ratio: float = 0.1, fill_holes: bool = True) -> np.ndarray:
    """Clean a predicted lung mask: keep the 2 largest 3D components (dropping the second if it is
    below ``min_ratio`` of the largest, i.e. a speck next to touching lungs), fill holes per slice
    (unless ``fill_holes`` is False: the dataset's lung masks leave vessels out, so a filled hole is
    often not lung), split into left (1) / right (2) (with the same ``min_ratio``, see
    :func:`split_left_right`). Returns ``uint8`` labels, same shape."""
    m, squeezed = _as_3d(binary3d, "clean_lung_mask")
    fg = m > 0
    out = np.zeros(m.shape, dtype=np.uint8)
    box = bounding_box(fg)
    if box is None:
        return out[0] if squeezed else out
    if fill_holes:
        kept = largest_components(fg[box], 2, min_ratio=min_ratio, connectivity=1)
        out[box] = split_left_right(fill_holes_2d(kept), min_ratio=min_ratio)
    else:  # the kept components are split as they are: their labels serve both steps (one labelling)
        labels, sizes = largest_component_labels(fg[box], 2, min_ratio=min_ratio, connectivity=1)
        out[box] = _split_block(labels > 0, min_ratio, labels, sizes)
    return out[0] if squeezed else out
