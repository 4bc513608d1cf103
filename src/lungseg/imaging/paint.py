"""Extensive disease painted into real slices: the stress set of #25 and a lung-model augmentation.

The dev cases hold one case above 30 % involvement, so no out-of-fold figure sees how the models do
on extensive disease, and the kept-back patients showed that this is where the lung model fails (it
leaves consolidated lung out). :func:`paint_extensive_disease` paints dense consolidation and ground
glass into 30-70 % of each lung of a slice, in the image's own intensity scale:

- the region is a smooth random field (Gaussian-filtered noise) thresholded inside each lung so that
  it covers the drawn fraction of that lung, with soft edges;
- its densest part is blended toward the slice's soft-tissue level (consolidation), the rest toward
  a level between lung and soft tissue (ground glass), so vessels and airways still show through;
- a texture of filtered noise, scaled by the soft tissue's own spread, keeps it from looking flat.

The painted pixels are added to the infection mask; the lung mask is kept (consolidated lung is
still lung). Pure numpy and OpenCV; a seeded generator makes it reproducible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import cv2
import numpy as np

from lungseg.errors import ConfigError, DataValidationError


@dataclass(frozen=True)
class PaintParams:
    """``coverage``: the share of each lung painted, drawn uniformly per lung and case;
    ``consolidation``: the densest share of the painted region that becomes consolidation (the rest
    ground glass); ``smoothness``: the field's Gaussian sigma as a fraction of the slice width;
    ``bias``: how strongly the region prefers the lung's periphery and its posterior part."""

    coverage: tuple[float, float] = (0.3, 0.7)
    consolidation: float = 0.5
    smoothness: float = 0.04
    bias: float = 1.5

    def __post_init__(self) -> None:
        lo, hi = self.coverage
        if not 0.0 < lo <= hi < 1.0:
            raise ConfigError(f"paint coverage needs 0 < low <= high < 1, got {self.coverage}")
        if not 0.0 <= self.consolidation <= 1.0:
            raise ConfigError(f"paint consolidation must be in [0, 1], got {self.consolidation}")
        if self.bias < 0:
            raise ConfigError(f"paint bias must be >= 0, got {self.bias}")
        if not 0.0 < self.smoothness < 0.5:
            raise ConfigError(f"paint smoothness must be in (0, 0.5), got {self.smoothness}")


def _levels(image: np.ndarray, lung: np.ndarray) -> tuple[float, float, float]:
    """The slice's lung level, soft-tissue level and soft-tissue spread, from its own pixels."""
    lung_level = float(np.median(image[lung]))
    top = float(np.percentile(image, 99.0))
    outside = image[~lung]
    tissue = outside[outside > lung_level + 0.3 * (top - lung_level)]
    if tissue.size < 16:  # a slice that is almost all lung: the brightest non-lung pixels
        tissue = np.sort(outside)[-max(16, outside.size // 10):] if outside.size else np.array([top])
    return lung_level, float(np.median(tissue)), float(np.std(tissue)) + 1e-6


def _field(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(shape).astype(np.float32)
    field = cv2.GaussianBlur(noise, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)
    return (field - field.mean()) / (field.std() + 1e-6)


def paint_slice(image: np.ndarray, lung_labels: np.ndarray, infection: np.ndarray, rng: np.random.Generator,
                fractions: dict[int, float], params: PaintParams) -> tuple[np.ndarray, np.ndarray]:
    """Paint one ``(H, W)`` slice: each lung label ``k`` in ``fractions`` gets ``fractions[k]`` of its
    pixels painted. Returns the painted image (same dtype, within the slice's own range) and the
    infection mask with the painted pixels added."""
    img = np.asarray(image)
    labels = np.asarray(lung_labels)
    lung = labels > 0
    out_inf = (np.asarray(infection) > 0).astype(np.uint8)
    if lung.sum() < 16 or (~lung).sum() < 16:
        return img.copy(), out_inf
    x = img.astype(np.float32)
    lung_level, tissue_level, tissue_spread = _levels(x, lung)
    ggo_level = lung_level + 0.55 * (tissue_level - lung_level)
    sigma = max(1.0, params.smoothness * img.shape[1])
    field = _field(img.shape, sigma, rng)
    texture = _field(img.shape, 1.0, rng) * np.float32(0.35 * tissue_spread)
    weight = np.zeros(img.shape, np.float32)
    target = np.zeros(img.shape, np.float32)
    posterior = np.linspace(-1.0, 1.0, img.shape[0], dtype=np.float32)[:, None]  # anterior up (canonical)
    for k, fraction in fractions.items():
        region = labels == k
        if region.sum() < 8:
            continue
        # COVID-19 pneumonia is peripheral and posterior first: bias the field toward both
        depth = cv2.distanceTransform(region.astype(np.uint8), cv2.DIST_L2, 3)
        periphery = 1.0 - depth / (float(depth.max()) + 1e-6)
        field_k = field + params.bias * (0.6 * periphery + 0.4 * posterior)
        values = field_k[region]
        cut = float(np.quantile(values, 1.0 - fraction))
        dense_cut = float(np.quantile(values, 1.0 - fraction * params.consolidation))
        soft = 1.0 / (1.0 + np.exp(-(field_k - cut) * 12.0))               # soft lesion edges
        painted = region & (field_k >= cut)
        out_inf[painted] = 1
        weight[region] = np.maximum(weight[region], soft[region])
        dense = np.clip((field_k - dense_cut) * 4.0, 0.0, 1.0)              # GGO -> consolidation inside
        target[region] = (ggo_level + dense * (tissue_level - ggo_level))[region]
    blend = np.clip(weight, 0.0, 1.0) * 0.95
    # only brighten: vessels denser than the target keep their value (they show through ground glass)
    painted_img = np.where(x < target, x + blend * (target - x), x) + blend * texture
    lo, hi = float(x.min()), float(x.max())
    painted_img = np.clip(painted_img, lo, hi)
    if np.issubdtype(img.dtype, np.integer):
        painted_img = np.rint(painted_img)
    return painted_img.astype(img.dtype), out_inf


def paint_extensive_disease(ct: np.ndarray, lung_labels: np.ndarray, infection: np.ndarray,
                            rng: np.random.Generator, params: PaintParams | None = None,
                            source: str = "the volume") -> tuple[np.ndarray, np.ndarray]:
    """Paint a ``(Z, H, W)`` case: each lung label (1, 2, or 1 for merged lungs) gets one coverage
    fraction drawn from ``params.coverage`` for the whole case; every slice is painted to it.

    Returns the painted CT (same dtype) and the new infection mask (``uint8`` 0/1). The lung labels are
    not changed. ``source`` names the case in errors."""
    params = params or PaintParams()
    ct = np.asarray(ct)
    labels = np.asarray(lung_labels)
    if ct.ndim != 3 or labels.shape != ct.shape or np.shape(infection) != ct.shape:
        raise DataValidationError(
            f"{source}: painting needs CT, lung and infection volumes of one (Z, H, W) shape, got "
            f"{ct.shape}, {labels.shape} and {np.shape(infection)}")
    ks = [int(k) for k in np.unique(labels) if k > 0]
    fractions = {k: float(rng.uniform(*params.coverage)) for k in ks}
    out_ct = np.empty_like(ct)
    out_inf = np.empty(ct.shape, np.uint8)
    for z in range(ct.shape[0]):
        out_ct[z], out_inf[z] = paint_slice(ct[z], labels[z], infection[z], rng, fractions, params)
    return out_ct, out_inf


def paint_from_dict(d: dict[str, Any] | None) -> tuple[Callable[..., tuple[np.ndarray, np.ndarray]], int]:
    """``(paint, seed)`` from a parameters mapping ``{coverage: [lo, hi], consolidation, smoothness,
    bias, seed}``: ``paint(ct, lung, infection, rng, source=...)`` is :func:`paint_extensive_disease`
    with those options. Unknown keys and bad values raise :class:`ConfigError` naming them."""
    d = dict(d or {})
    names = {"coverage", "consolidation", "smoothness", "bias", "seed"}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"evaluation.stress: unknown keys {unknown}; known: {sorted(names)}")
    try:
        seed = int(d.pop("seed", 0))
        if "coverage" in d:
            lo, hi = d["coverage"]
            d["coverage"] = (float(lo), float(hi))
        params = PaintParams(**{k: (v if k == "coverage" else float(v)) for k, v in d.items()})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"evaluation.stress: bad value in {d!r}: {exc}") from exc
    return partial(paint_extensive_disease, params=params), seed
