"""Classical (no learning) lung and infection segmentation, the baseline the models are compared with.

Both functions work on canonical ``(z, y, x)`` volumes (see docs/architecture.md: ``z`` grows towards
the head, so the top of the chest is the last slice). Intensities are either Hounsfield units
(``source_kind="hu"``) or already windowed to 0-255 (``source_kind="uint8"``, window
:data:`lungseg.imaging.HU_WINDOW` by default). Thresholds are written in HU and mapped to the
volume's own intensity scale by :func:`hu_to_level`, so no float copy of the volume is made. The
mask operations (components, hole filling, bounding boxes) are those of :mod:`lungseg.imaging.masks`.

Lungs (:func:`baseline_lung`)
    1. *Air-like voxels*: intensity below -320 HU (level ~158 in the 0-255 window). For volumes
       whose intensities are not calibrated (``threshold_mode="otsu"``), Otsu's threshold of the
       voxels other than the outside air instead.
    2. *Outside air*: in every axial slice, the air-like 2D components (face connectivity) that touch
       the slice border are removed: the air around the body, under the table and the padding outside
       the scanner's field of view. (A lung cut by the field of view loses those slices.)
    3. *Airways*: the trachea and main bronchi are removed with a simple rule. Very dark voxels
       (below -950 HU after a 3x3 in-plane mean filter, which keeps normal lung parenchyma and noise
       out) are grouped into 3D components. A component is an airway when it reaches the top
       ``airway_top_fraction`` (25 %) of the slices that hold air-like voxels *and* its centre lies in
       the central ``airway_central_fraction`` (40 %) of the columns spanned by those voxels (the
       mediastinum). Such a component, grown back by 2 pixels in-plane over the air-like voxels (the
       mean filter shrinks the lumen; the airway wall stops the growth), is removed only where it is
       tube-like, i.e. where its cross-section is at most ``max_airway_area_mm2`` (1500 mm^2; 1 % of
       the slice without a spacing); a slice where it spreads over more than that (leakage into
       emphysematous lung) is left alone.
    4. *Two lungs*: the largest 3D component (face connectivity) is kept, and the second largest too
       when it holds at least ``min_second_fraction`` (10 %) of the largest one's voxels (when both
       lungs touch, the second largest is usually bowel gas, which is dropped). Leftovers of the
       airways (their partial-volume rim) become small components and are dropped here too.
    5. Holes (vessels, airway walls, nodules) are filled slice by slice; the airway voxels of step 3
       stay out.

Infection (:func:`baseline_infection`)
    Voxels inside the lung mask whose intensity lies in the -700..+50 HU band (ground-glass opacity
    and consolidation, the bands 3D Slicer's Lung CT Analyzer uses), then an in-plane binary opening
    (square of side ``2 * opening_radius + 1``) that removes thin vessels, noise and the
    partial-volume rim along the pleura, then removal of 3D components smaller than
    ``min_component_voxels``. The result is restricted to the lung mask.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from lungseg.errors import ConfigError, DataValidationError
from lungseg.imaging.intensity import HU_WINDOW, SOURCE_KINDS
from lungseg.imaging.masks import (
    IN_PLANE,
    bounding_box,
    clear_border_2d,
    fill_holes_2d,
    largest_components,
    remove_small_objects,
)

logger = logging.getLogger(__name__)

LUNG_THRESHOLD_HU = -320.0
AIRWAY_THRESHOLD_HU = -950.0
INFECTION_BAND_HU: tuple[float, float] = (-700.0, 50.0)
THRESHOLD_MODES = ("fixed", "otsu")


def hu_to_level(hu: float, source_kind: str, window: Sequence[float] = HU_WINDOW) -> float:
    """An intensity in HU expressed on the scale of a ``source_kind`` volume.

    ``"hu"``: unchanged. ``"uint8"``: the 0-255 level of ``hu`` in the linear ``window`` (not clipped,
    so a threshold below the window maps below 0 and matches nothing).
    """
    if source_kind == "hu":
        return float(hu)
    if source_kind == "uint8":
        lo, hi = float(window[0]), float(window[1])
        if not hi > lo:
            raise ConfigError(f"window {tuple(window)} must be (low, high) with low < high")
        return (float(hu) - lo) / (hi - lo) * 255.0
    raise ConfigError(f"unknown CT source kind {source_kind!r}; expected one of {SOURCE_KINDS}")


def otsu_level(
    ct: np.ndarray,
    source_kind: str,
    window: Sequence[float] = HU_WINDOW,
    mask: np.ndarray | None = None,
) -> float:
    """Otsu's threshold of a volume's intensity histogram (of the voxels in ``mask``, if given).

    The histogram has 256 bins over the window (0-255 for ``"uint8"``, ``window`` in HU for ``"hu"``;
    values outside are clipped into the end bins) and is taken on every second voxel along each axis.
    The returned level is on the volume's own scale: the upper edge of the last bin of the dark
    class, so ``ct < level`` is that class.
    """
    lo, hi = hu_to_level(window[0], source_kind, window), hu_to_level(window[1], source_kind, window)
    if source_kind == "uint8":
        lo, hi = -0.5, 255.5  # one integer level per bin
    sample = np.asarray(ct)[::2, ::2, ::2]
    if mask is not None:
        sample = sample[np.asarray(mask)[::2, ::2, ::2]]
    sample = np.clip(sample.astype(np.float32, copy=False), lo, hi)
    counts, edges = np.histogram(sample, bins=256, range=(lo, hi))
    p = counts / max(counts.sum(), 1)
    w0 = np.cumsum(p)
    mu = np.cumsum(p * np.arange(256))
    between = (mu[-1] * w0 - mu) ** 2 / np.where((w0 > 0) & (w0 < 1), w0 * (1 - w0), np.inf)
    return float(edges[int(np.argmax(between)) + 1])


def _otsu_inside_body(vol: np.ndarray, source_kind: str, window: Sequence[float]) -> float:
    """Otsu's level between lung and soft tissue: first the air around the body is found with Otsu's
    level of the whole volume (border-connected dark regions per slice), then Otsu's level is taken
    again on the voxels that are not that outside air."""
    first = otsu_level(vol, source_kind, window)
    dark = vol < first
    outside = dark & ~clear_border_2d(dark).view(bool)
    inside = ~outside
    if not inside.any():
        return first
    return otsu_level(vol, source_kind, window, mask=inside)


def _check_ct(ct: np.ndarray, source_kind: str, case: str | None) -> np.ndarray:
    arr = np.asarray(ct)
    if source_kind not in SOURCE_KINDS:
        raise ConfigError(f"unknown CT source kind {source_kind!r}; expected one of {SOURCE_KINDS}")
    if arr.ndim != 3:
        raise DataValidationError(f"expected a 3D (z, y, x) CT volume, got shape {arr.shape}", case=case)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataValidationError(f"CT volume has non-numeric dtype {arr.dtype}", case=case)
    return arr


def _airways(
    ct: np.ndarray,
    candidate: np.ndarray,
    airway_level: float,
    spacing: Sequence[float] | None,
    max_airway_area_mm2: float,
    top_fraction: float,
    central_fraction: float,
    min_voxels: int,
) -> np.ndarray:
    """The trachea / main-bronchi voxels of ``candidate`` (rule in the module docstring)."""
    airway = np.zeros_like(candidate)
    box = bounding_box(candidate)
    if box is None:
        return airway
    cand = candidate[box]
    smooth = ndimage.uniform_filter(ct[box].astype(np.float32), size=(1, 3, 3))
    very_dark = cand & (smooth < airway_level)
    labels, n = ndimage.label(very_dark)
    if n == 0:
        return airway
    nz = cand.shape[0]
    top_start = nz - max(1, int(np.ceil(top_fraction * nz)))
    in_top = np.unique(labels[top_start:])
    in_top = in_top[in_top > 0]
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    in_top = in_top[sizes[in_top] >= min_voxels]
    if in_top.size == 0:
        return airway
    centres = np.asarray(ndimage.center_of_mass(very_dark, labels, in_top), dtype=float).reshape(-1, 3)
    width = cand.shape[2]
    half = central_fraction / 2.0
    central = np.abs(centres[:, 2] / max(width - 1, 1) - 0.5) <= half
    selected = in_top[central]
    if selected.size == 0:
        return airway
    # the mean filter shrinks the lumen: grow the cores back by 2 pixels in-plane over the candidate
    # (the airway wall, brighter than the lung threshold, stops the growth; noisy lumen voxels do not)
    tube = ndimage.binary_dilation(np.isin(labels, selected), structure=IN_PLANE, iterations=2, mask=cand)
    if spacing is not None:
        pixel_mm2 = float(spacing[-2]) * float(spacing[-1])
        max_area_px = max_airway_area_mm2 / pixel_mm2
    else:
        max_area_px = 0.01 * ct.shape[1] * ct.shape[2]
    area = tube.sum(axis=(1, 2))
    tube &= (area <= max_area_px)[:, None, None]
    airway[box] = tube
    logger.debug("baseline_lung: removed %d airway voxels", int(tube.sum()))
    return airway


def baseline_lung(
    ct: np.ndarray,
    source_kind: str,
    spacing: Sequence[float] | None = None,
    *,
    window: Sequence[float] = HU_WINDOW,
    lung_threshold_hu: float = LUNG_THRESHOLD_HU,
    airway_threshold_hu: float = AIRWAY_THRESHOLD_HU,
    max_airway_area_mm2: float = 1500.0,
    airway_top_fraction: float = 0.25,
    airway_central_fraction: float = 0.4,
    min_airway_voxels: int = 10,
    min_second_fraction: float = 0.1,
    threshold_mode: str = "fixed",
    smoothing: int = 0,
    case: str | None = None,
) -> np.ndarray:
    """Classical lung mask of a canonical ``(z, y, x)`` CT volume: uint8 0/1 of the same shape.

    See the module docstring for the steps. ``spacing`` ``(sz, sy, sx)`` in mm, when given, sets the
    airway cross-section limit in mm^2. ``case`` names the case in errors and log lines.

    ``threshold_mode="fixed"`` (default) uses ``lung_threshold_hu`` and ``airway_threshold_hu``.
    ``"otsu"`` is for volumes whose intensities are not calibrated (e.g. slices min-max scaled and
    CLAHE-equalised one by one): the lung level is :func:`otsu_level` of the voxels that are not
    the air around the body (itself found with a first Otsu level of the whole volume), and the airway
    level sits at the same fraction of the way from the window's bottom to the lung level as
    ``airway_threshold_hu`` does to ``lung_threshold_hu`` (about 0.32). ``smoothing`` > 1 applies an
    in-plane mean filter of that size before the lung threshold (5 helps on CLAHE-textured
    lungs); the airway rule keeps its own 3x3 filter of the unsmoothed volume.
    """
    vol = _check_ct(ct, source_kind, case)
    if spacing is not None and len(spacing) != 3:
        raise DataValidationError(f"spacing {tuple(spacing)} must hold 3 values (sz, sy, sx)", case=case)
    if threshold_mode not in THRESHOLD_MODES:
        raise ConfigError(f"unknown threshold_mode {threshold_mode!r}; expected one of {THRESHOLD_MODES}")
    if not 0.0 <= float(min_second_fraction) <= 1.0:
        raise ConfigError(f"min_second_fraction must be in [0, 1], got {min_second_fraction!r}")
    thr_vol = vol
    if smoothing > 1:
        thr_vol = ndimage.uniform_filter(vol.astype(np.float32), size=(1, int(smoothing), int(smoothing)))
    bottom = hu_to_level(window[0], source_kind, window)
    lung_level = hu_to_level(lung_threshold_hu, source_kind, window)
    airway_level = hu_to_level(airway_threshold_hu, source_kind, window)
    if threshold_mode == "otsu":
        fraction = (airway_level - bottom) / (lung_level - bottom)
        lung_level = _otsu_inside_body(thr_vol, source_kind, window)
        airway_level = bottom + fraction * (lung_level - bottom)
        logger.debug("baseline_lung: Otsu lung level %.1f, airway level %.1f", lung_level, airway_level)
    dark = thr_vol < lung_level
    candidate = clear_border_2d(dark).view(bool)
    airway = _airways(
        vol,
        candidate,
        airway_level,
        spacing,
        max_airway_area_mm2,
        airway_top_fraction,
        airway_central_fraction,
        min_airway_voxels,
    )
    candidate &= ~airway
    lungs = largest_components(candidate, 2, min_ratio=min_second_fraction).view(bool)
    if not lungs.any():
        logger.warning("baseline_lung found no lung-like region%s", f" in case {case!r}" if case else "")
        return np.zeros(vol.shape, dtype=np.uint8)
    # fill per slice, then take the airways out again: a rim left around the trachea would refill it
    lungs = fill_holes_2d(lungs).view(bool) & ~airway
    return lungs.astype(np.uint8)


def baseline_infection(
    ct: np.ndarray,
    source_kind: str,
    lung_mask: np.ndarray,
    *,
    window: Sequence[float] = HU_WINDOW,
    band_hu: Sequence[float] = INFECTION_BAND_HU,
    opening_radius: int = 1,
    min_component_voxels: int = 64,
    case: str | None = None,
) -> np.ndarray:
    """Classical infection mask (uint8 0/1) inside ``lung_mask`` (any non-zero value is lung).

    See the module docstring for the rule. ``case`` names the case in errors.
    """
    vol = _check_ct(ct, source_kind, case)
    lung = np.asarray(lung_mask)
    if lung.shape != vol.shape:
        raise DataValidationError(
            f"lung mask shape {lung.shape} differs from the CT volume shape {vol.shape}", case=case
        )
    if opening_radius < 0 or min_component_voxels < 0:
        raise ConfigError("opening_radius and min_component_voxels must be >= 0")
    if len(band_hu) != 2 or not float(band_hu[0]) < float(band_hu[1]):
        raise ConfigError(f"band_hu {tuple(band_hu)} must be (low, high) in HU with low < high")
    lung = lung != 0
    out = np.zeros(vol.shape, dtype=np.uint8)
    box = bounding_box(lung)
    if box is None:
        return out
    lo = hu_to_level(band_hu[0], source_kind, window)
    hi = hu_to_level(band_hu[1], source_kind, window)
    sub = vol[box]
    inf = lung[box] & (sub >= lo) & (sub <= hi)
    if opening_radius > 0:
        side = 2 * int(opening_radius) + 1
        inf = ndimage.binary_opening(inf, structure=np.ones((1, side, side), dtype=bool))
    if min_component_voxels > 1:
        inf = remove_small_objects(inf, min_component_voxels).view(bool)
    inf &= lung[box]
    out[box] = inf
    return out
