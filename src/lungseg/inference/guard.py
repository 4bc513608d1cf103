"""Plausibility guard: is the input a chest CT, and is the segmentation anatomically plausible?

Run by :meth:`lungseg.inference.segment.Segmenter.segment` after the models and before any figure is
reported. The bounds are ``inference.guard`` in conf/base/parameters_inference.yml
(:class:`lungseg.limits.GuardParams`). Checks, in order, on the input seen through the lung window
(0-255, as the models see it):

1. HU data: most voxels lie in [-1100, 4000] HU (the rest may be padding outside the field of view);
2. the histogram fits a CT: some dark voxels (air, lung) and some soft tissue;
3. a body is found: the soft tissue with its holes filled covers a share of the field of view;
4. lungs are found (else ``no lungs found``);
5. the lungs do not cover most of the field of view;
6. the lungs lie mostly inside the body;
7. the lung volume is within physiological bounds for the voxel size: at most ``max_lung_ml``; at least
   ``min_lung_ml_per_mm`` per mm of the scan's length along z whatever that length (a short scan covers
   only part of the lungs, so its minimum is pro rata), and at least ``min_lung_ml`` when the scan is long
   enough (``min_extent_mm``) to hold whole lungs (:func:`min_lung_ml`).

The first failed check is the reason returned, in words (``implausible_input``); the CLI exits with
code 3, report.json carries it with no severity grade, and the web UI shows it instead of numbers.
"""

from __future__ import annotations

import cv2
import numpy as np

from lungseg.imaging import HU_WINDOW, fill_holes_2d, window_to_uint8
from lungseg.limits import GuardParams

#: Hounsfield units a CT voxel can hold (air -1000, dense bone and metal up to a few thousand).
HU_RANGE = (-1100.0, 4000.0)
NO_LUNGS = "no lungs found in this image; is it a chest CT?"
#: A scan with fewer slices, or shorter along z, cannot hold whole lungs: it gets no volumes in ml and
#: no severity grade (both are statements about whole lungs), like a single 2D slice.
MIN_SLICES_FOR_VOLUMES = 8
MIN_EXTENT_MM_FOR_VOLUMES = 30.0


def partial_scan(slices: int, slice_spacing_mm: float) -> str | None:
    """Why a scan of ``slices`` slices at ``slice_spacing_mm`` is too short for lung volumes and a
    severity grade, or None when it is long enough. A 2D image (one slice) is always too short."""
    extent = float(slices) * float(slice_spacing_mm)
    if slices == 1:
        return "a single slice: areas only, no volumes in ml and no severity grade"
    if slices < MIN_SLICES_FOR_VOLUMES or extent < MIN_EXTENT_MM_FOR_VOLUMES:
        return (f"a slab of {slices} slices ({extent:.1f} mm along z; whole lungs need at least "
                f"{MIN_SLICES_FOR_VOLUMES} slices and {MIN_EXTENT_MM_FOR_VOLUMES:.0f} mm): no volumes in ml "
                "and no severity grade")
    return None


def min_lung_ml(extent_mm: float, params: GuardParams) -> float:
    """The least lung volume in ml that a chest scan ``extent_mm`` long along z can hold: a floor per mm
    of the covered length, whatever that length, and the whole lungs' minimum once the scan could hold them."""
    floor = params.min_lung_ml_per_mm * float(extent_mm)
    return max(floor, params.min_lung_ml) if extent_mm >= params.min_extent_mm else floor


def _ml(value: float) -> str:
    """A volume in ml for a message: whole ml, or two significant digits under 10 ml (never "0 ml" for 0.004)."""
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"


_CHUNK = 32


def _body(u8: np.ndarray, tissue_level: float) -> np.ndarray:
    """Body mask of (z, y, x) uint8 slices: soft tissue, closed over small gaps, holes filled."""
    tissue = (u8 >= tissue_level).astype(np.uint8)
    side = min(u8.shape[1:])
    k = max(3, (side // 50) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    for z in range(tissue.shape[0]):
        if tissue[z].any():
            tissue[z] = cv2.morphologyEx(tissue[z], cv2.MORPH_CLOSE, kernel)
    return fill_holes_2d(tissue).astype(bool)


def measure(ct: np.ndarray, source_kind: str, lung_labels: np.ndarray, params: GuardParams) -> dict:
    """The figures the guard checks (fractions in [0, 1]), slice chunk by slice chunk (bounded memory)."""
    n = int(ct.size)
    stride = 2 if min(ct.shape[1:]) >= 256 else 1  # in-plane subsampling of large slices
    counts = dict(in_range=0, dark=0, tissue=0, body=0, fov=0, lung=0, lung_in_body=0)
    lung_slices = lung_labels.reshape(lung_labels.shape[0], -1).any(axis=1)
    for a in range(0, ct.shape[0], _CHUNK):
        block = ct[a : a + _CHUNK, ::stride, ::stride]
        if source_kind == "hu":
            counts["in_range"] += int(np.count_nonzero((block >= HU_RANGE[0]) & (block <= HU_RANGE[1])))
        u8 = window_to_uint8(block, source_kind, HU_WINDOW)
        counts["dark"] += int(np.count_nonzero(u8 < params.dark_level))
        counts["tissue"] += int(np.count_nonzero(u8 >= params.tissue_level))
        body = _body(u8, params.tissue_level)
        counts["body"] += int(np.count_nonzero(body))
        lungs = lung_labels[a : a + _CHUNK, ::stride, ::stride] > 0
        counts["lung"] += int(np.count_nonzero(lungs))
        counts["lung_in_body"] += int(np.count_nonzero(lungs & body))
        counts["fov"] += int(np.count_nonzero(lung_slices[a : a + _CHUNK])) * u8.shape[1] * u8.shape[2]
    sampled = max(1, -(-ct.shape[1] // stride) * -(-ct.shape[2] // stride) * ct.shape[0])
    return {
        "hu_in_range": counts["in_range"] / sampled if source_kind == "hu" else None,
        "dark": counts["dark"] / sampled,
        "tissue": counts["tissue"] / sampled,
        "body": counts["body"] / sampled,
        "lung_of_fov": counts["lung"] / counts["fov"] if counts["fov"] else 0.0,
        "lung_in_body": counts["lung_in_body"] / counts["lung"] if counts["lung"] else 0.0,
        "voxels": n,
    }


def check_plausibility(
    ct: np.ndarray, source_kind: str, lung_labels: np.ndarray, spacing, params: GuardParams
) -> tuple[str | None, dict]:
    """``(why, figures)``: ``why`` is None for a plausible chest CT and segmentation, else the first
    failed check in words (:data:`NO_LUNGS` when no lung was found). ``figures`` are the measured
    values (see :func:`measure`) plus ``lung_ml``, ``extent_mm`` and ``min_lung_ml`` (:func:`min_lung_ml`)."""
    figures = measure(ct, source_kind, lung_labels, params)
    voxel_ml = float(np.prod([float(s) for s in spacing])) / 1000.0
    lung_ml = float(np.count_nonzero(lung_labels)) * voxel_ml
    extent = float(ct.shape[0]) * float(spacing[0])
    figures.update(lung_ml=lung_ml, extent_mm=extent, min_lung_ml=min_lung_ml(extent, params))
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    if not params.enabled:
        return None, figures
    if figures["hu_in_range"] is not None and figures["hu_in_range"] < params.min_hu_range_fraction:
        return (
            f"not CT intensities: only {pct(figures['hu_in_range'])} of the voxels lie in "
            f"{HU_RANGE[0]:g}..{HU_RANGE[1]:g} HU"
        ), figures
    if figures["dark"] < params.min_dark_fraction:
        return (
            f"the intensities do not look like a CT: only {pct(figures['dark'])} of the image is dark "
            f"(air or lung; at least {pct(params.min_dark_fraction)} expected)"
        ), figures
    if figures["tissue"] < params.min_tissue_fraction or figures["body"] < params.min_body_fraction:
        return (
            f"no body found: soft tissue covers {pct(figures['tissue'])} of the image and the body "
            f"{pct(figures['body'])} (at least {pct(params.min_body_fraction)} expected)"
        ), figures
    if not lung_labels.any():
        return NO_LUNGS, figures
    if figures["lung_of_fov"] > params.max_lung_fov_fraction:
        return (
            f"the lungs cover {pct(figures['lung_of_fov'])} of the field of view on their slices "
            f"(at most {pct(params.max_lung_fov_fraction)} is plausible)"
        ), figures
    if figures["lung_in_body"] < params.min_lung_inside_body:
        return (
            f"only {pct(figures['lung_in_body'])} of the lungs lie inside the body "
            f"(at least {pct(params.min_lung_inside_body)} expected)"
        ), figures
    if lung_ml > params.max_lung_ml:
        return (
            f"a lung volume of {lung_ml:,.0f} ml, above the physiological maximum of "
            f"{params.max_lung_ml:,.0f} ml (is the voxel size right?)"
        ), figures
    minimum = figures["min_lung_ml"]
    if lung_ml < minimum:
        per_mm = "" if minimum > params.min_lung_ml_per_mm * extent else f", {params.min_lung_ml_per_mm:g} ml per mm"
        return (
            f"a lung volume of {_ml(lung_ml)} ml in a scan {extent:.0f} mm long, below the physiological "
            f"minimum of {_ml(minimum)} ml{per_mm} (is the voxel size right?)"
        ), figures
    return None, figures
