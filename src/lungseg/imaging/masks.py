"""Binary mask operations: bounding box, largest components, hole filling, small-object removal.

The one home of these operations: post-processing, the crop boxes, the classical baseline and the
surface metrics all call them. Foreground is any non-zero value. Every function that returns a mask
returns ``uint8`` 0/1 of the input's shape (a ``bool`` view is free: ``out.view(bool)``).

Connected components use ``scipy.ndimage`` with ``connectivity`` as in
:func:`scipy.ndimage.generate_binary_structure`: 1 = faces only (4-neighbours in 2D, 6 in 3D), up to
the array's rank = every neighbour (8 in 2D, 26 in 3D). Components are labelled inside the
foreground's bounding box only: the same components as in the whole array, found faster.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from lungseg.errors import ConfigError, DataValidationError

#: 2D face connectivity inside each axial slice of a (Z, H, W) array, no connection across slices.
IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)
IN_PLANE.setflags(write=False)


def _foreground(mask: np.ndarray, name: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 0:
        raise DataValidationError(f"{name} expects an array mask, got a scalar")
    return m if m.dtype == np.bool_ else m != 0


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Smallest block holding every non-zero element: one ``slice`` per axis, or None when empty.

    ``mask[bounding_box(mask)]`` keeps all of the foreground.
    """
    fg = _foreground(mask, "bounding_box")
    out = []
    for axis in range(fg.ndim):
        other = tuple(a for a in range(fg.ndim) if a != axis)
        idx = np.flatnonzero(fg.any(axis=other))
        if idx.size == 0:
            return None
        out.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(out)


def _structure(ndim: int, connectivity: int, structure: np.ndarray | None) -> np.ndarray:
    if structure is not None:
        s = np.asarray(structure, dtype=bool)
        if s.ndim != ndim:
            raise ConfigError(f"structure has {s.ndim} dimensions but the mask has {ndim}")
        return s
    if isinstance(connectivity, bool) or int(connectivity) != connectivity or not 1 <= connectivity <= ndim:
        raise ConfigError(f"connectivity must be an integer from 1 to {ndim} for a {ndim}D mask, got {connectivity!r}")
    return ndimage.generate_binary_structure(ndim, int(connectivity))


def label_components(
    mask: np.ndarray, connectivity: int = 1, structure: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Label the connected components of ``mask``: ``(labels, sizes)``.

    ``labels`` is int32 (0 = background, components numbered in raster order of their first
    element); ``sizes[i]`` is the element count of label ``i`` (``sizes[0]`` is 0).
    """
    fg = _foreground(mask, "label_components")
    labels, n = ndimage.label(fg, structure=_structure(fg.ndim, connectivity, structure))
    sizes = np.bincount(labels.reshape(-1), minlength=n + 1)
    sizes[0] = 0
    return labels, sizes


def largest_components(
    mask: np.ndarray,
    k: int | None = None,
    *,
    min_ratio: float = 0.0,
    min_size: int = 0,
    connectivity: int = 1,
    structure: np.ndarray | None = None,
) -> np.ndarray:
    """Keep the ``k`` largest connected components of ``mask`` (all of them when ``k`` is None).

    The largest component is kept when it has at least ``min_size`` elements; every other one when it
    also has at least ``min_ratio`` times the largest one's size (``min_ratio`` in [0, 1]; e.g. 0.1
    drops a speck next to two touching lungs). Ties in size go to the component that comes later in
    raster order. ``connectivity`` (or an explicit ``structure``) as in the module docstring.
    Returns ``uint8`` 0/1 of the same shape.
    """
    labels, _ = largest_component_labels(
        mask, k, min_ratio=min_ratio, min_size=min_size, connectivity=connectivity, structure=structure
    )
    return (labels > 0).astype(np.uint8)


def largest_component_labels(
    mask: np.ndarray,
    k: int | None = None,
    *,
    min_ratio: float = 0.0,
    min_size: int = 0,
    connectivity: int = 1,
    structure: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`largest_components` as labels, for a caller that needs the components too (the 3D lung
    clean-up splits them into left and right without labelling again): ``(labels, sizes)``, int32
    labels numbered as :func:`label_components` numbers them, 0 outside the kept components, and
    ``sizes[i]`` the size of kept label ``i`` (0 for a dropped one and for the background)."""
    fg = _foreground(mask, "largest_components")
    if not 0.0 <= float(min_ratio) <= 1.0:
        raise ConfigError(f"min_ratio must be in [0, 1] (a fraction of the largest component), got {min_ratio!r}")
    if k is not None and int(k) < 0:
        raise ConfigError(f"k (number of components to keep) must be >= 0 or None, got {k!r}")
    if int(min_size) < 0:
        raise ConfigError(f"min_size must be >= 0, got {min_size!r}")
    _structure(fg.ndim, connectivity, structure)
    out = np.zeros(fg.shape, dtype=np.int32)
    box = bounding_box(fg)
    if box is None or k == 0:
        return out, np.zeros(1, dtype=np.int64)
    labels, sizes = label_components(fg[box], connectivity, structure)
    order = np.argsort(sizes, kind="stable")[::-1]
    if k is not None:
        order = order[: int(k)]
    largest = sizes[order[0]]
    ok = (sizes[order] > 0) & (sizes[order] >= int(min_size)) & (sizes[order] >= float(min_ratio) * largest)
    keep = np.zeros(sizes.shape, dtype=bool)
    keep[order[ok]] = True
    lut = np.where(keep, np.arange(sizes.size), 0).astype(np.int32)
    out[box] = lut[labels]
    return out, np.where(keep, sizes, 0)


def remove_small_objects(
    mask: np.ndarray, min_size: int, *, connectivity: int = 1, structure: np.ndarray | None = None
) -> np.ndarray:
    """Drop the connected components with fewer than ``min_size`` elements; ``uint8`` 0/1."""
    return largest_components(mask, None, min_size=min_size, connectivity=connectivity, structure=structure)


def fill_holes_2d(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of a ``(H, W)`` mask, or of each axial slice of a ``(Z, H, W)`` one; ``uint8`` 0/1.

    A hole is background that is not 4-connected, inside its slice, to the slice border (as
    :func:`scipy.ndimage.binary_fill_holes` with its default 2D structure, slice by slice). One
    OpenCV flood fill per non-empty slice.
    """
    fg = _foreground(mask, "fill_holes_2d")
    if fg.ndim not in (2, 3):
        raise DataValidationError(f"fill_holes_2d expects a (H, W) or (Z, H, W) mask, got shape {fg.shape}")
    out = fg.astype(np.uint8)
    vol = out[None] if out.ndim == 2 else out
    h, w = vol.shape[1:]
    canvas = np.zeros((h + 2, w + 2), np.uint8)
    for z in np.flatnonzero(vol.reshape(vol.shape[0], -1).any(axis=1)):
        canvas[:] = 0
        canvas[1:-1, 1:-1] = vol[z]
        cv2.floodFill(canvas, None, (0, 0), 2, flags=4)
        vol[z] = canvas[1:-1, 1:-1] != 2
    return out


def fill_holes_3d(mask: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """Fill the holes of a mask in 3D (any rank): background not connected to the array's border
    through background (``connectivity`` of the background, 1 = faces); ``uint8`` 0/1."""
    fg = _foreground(mask, "fill_holes_3d")
    structure = _structure(fg.ndim, connectivity, None)
    return ndimage.binary_fill_holes(fg, structure=structure).view(np.uint8)


def clear_border_2d(mask: np.ndarray) -> np.ndarray:
    """Drop, in each axial slice of a ``(Z, H, W)`` mask, the 2D components (face connectivity) that
    touch the slice's border; ``uint8`` 0/1."""
    fg = _foreground(mask, "clear_border_2d")
    if fg.ndim != 3:
        raise DataValidationError(f"clear_border_2d expects a (Z, H, W) mask, got shape {fg.shape}")
    labels, n = ndimage.label(fg, structure=IN_PLANE)
    if n == 0:
        return fg.astype(np.uint8)
    border = np.zeros(n + 1, dtype=bool)
    for edge in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        border[np.unique(edge)] = True
    keep = ~border
    keep[0] = False
    return keep[labels].view(np.uint8)
