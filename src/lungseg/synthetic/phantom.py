"""A synthetic chest CT: body, chest wall, ribs, spine, mediastinum, heart, lungs with vessels and
airways, diaphragm domes with liver and stomach below, and COVID-19-like infection.

How a case is built (all deterministic for a given seed and case index):

The code is split by step: :mod:`~lungseg.synthetic.spec` (draws), :mod:`~lungseg.synthetic.anatomy`
and :mod:`~lungseg.synthetic.shapes` (the patient and its shapes), this module (coarse fields, the case)
and :mod:`~lungseg.synthetic.render` (full-resolution slices).

1. **Draws.** :func:`draw_case_spec` picks the grid (size, slices, spacing), the storage (HU or
   uint8, axis codes) and the infection target from a ``numpy`` Generator seeded with
   ``(seed, index)``; :func:`_draw_anatomy` then draws the patient (body shape, organ positions,
   tissue HU, diaphragm, rib pattern...).
2. **Coarse fields.** On a coarse grid (``model_size`` pixels, at most ``model_slices`` slices) the
   anatomy becomes nine smooth fields: signed distances (in full-resolution pixels, negative inside)
   of the body, bone, air and lungs, two HU maps (soft tissue, lung parenchyma), two random fields
   whose common zero set is the vessel tree, and the infection score. Gaussian-filtered noise gives
   texture, vessels and infection blobs. The infection threshold is set here so that the infected
   share of the lungs hits the case's target.
3. **Full-resolution slices.** Each output slice interpolates the fields (in z, then ``cv2.resize``
   in-plane), thresholds the distances (so edges stay sharp and labels are smooth), draws vessels
   and airways, blends the tissues with one-pixel partial-volume edges, adds correlated noise and
   stores HU ``int16`` (with padding outside a circular field of view) or windowed ``uint8``.

Coordinates: canonical ``(z, y, x)`` in LPS: row 0 is anterior, column 0 is the patient's right, so
the left lung has the larger column index; slice 0 is the most inferior. In the anatomy code
``xh``/``yh`` are in units of the body half-width ``a`` (``xh > 0`` is the patient's left, ``yh > 0``
posterior) and ``t`` in ``[0, 1]`` runs from the first (inferior) to the last (superior) slice.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from lungseg.synthetic.anatomy import _Anatomy, _central_anatomy, _draw_anatomy, _global_anatomy
from lungseg.synthetic.nifti import combined_labels, lps_affine, stored_affine
from lungseg.synthetic.profiles import resolve_profile
from lungseg.synthetic.render import SliceRenderer
from lungseg.synthetic.shapes import smooth_field
from lungseg.synthetic.spec import STANDARD_SLICE_SPACINGS, CaseSpec, case_id, case_rng, draw_case_spec

__all__ = ["FIELD_NAMES", "STANDARD_SLICE_SPACINGS", "CaseSpec", "SyntheticCase", "case_id", "case_rng",
           "draw_case_spec", "generate_case"]

logger = logging.getLogger(__name__)

HU_MIN, HU_MAX = -1024, 3071
FIELD_NAMES = ("body", "base", "bone", "air", "lung", "lung_hu", "v1", "v2", "inf")
#: The central window (units of a) that holds the spine, sternum, heart, great vessels and airways.
CENTRAL_X = 0.72
CENTRAL_Y = (-0.86, 0.92)
#: Voxels of the coarse grid processed at once (small enough to stay in cache).
CHUNK_VOXELS = 1_000_000


def _coarse_fields(an: _Anatomy, spec: CaseSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """All coarse fields (nz_m, M, M) of a case (see :data:`FIELD_NAMES`)."""
    n, m, nz = spec.size, spec.model_size, spec.model_slices
    shape = (nz, m, m)
    dx_mm = spec.spacing[2] * n / m
    dz_mm = an.length_mm / nz

    def sig(mm: float, z_stretch: float = 1.0) -> tuple[float, float, float]:
        return (mm * z_stretch / dz_mm, mm / dx_mm, mm / dx_mm)

    rnd = {
        "coarse": smooth_field(rng, shape, sig(18.0)),
        "fine": smooth_field(rng, shape, sig(3.0)),
    }
    wobble = smooth_field(rng, shape, sig(30.0))
    # Stretched along z, so that most vessels cross the axial slices (dots and short segments).
    v1 = smooth_field(rng, shape, sig(an.vessel_sigma_mm, 2.5))
    v2 = smooth_field(rng, shape, sig(an.vessel_sigma_mm, 2.5))
    inf = 0.8 * smooth_field(rng, shape, sig(an.inf_sigma_mm)) + 0.35 * smooth_field(rng, shape, sig(4.0))

    pos = (np.arange(m, dtype=np.float32) + 0.5) * (n / m) - 0.5
    xs = (pos - an.cx) / an.a_px
    ys = (pos - an.cy) / an.a_px
    cols = np.flatnonzero(np.abs(xs) <= CENTRAL_X)
    rows = np.flatnonzero((ys >= CENTRAL_Y[0]) & (ys <= CENTRAL_Y[1]))
    win = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    xh, yh = xs.reshape(1, 1, m), ys.reshape(1, m, 1)
    t_all = ((np.arange(nz, dtype=np.float32) + 0.5) / nz).reshape(nz, 1, 1)
    out = {name: np.empty(shape, np.float32) for name in ("body", "base", "bone", "air", "lung")}
    chunk = max(1, int(CHUNK_VOXELS // (m * m)))
    for z0 in range(0, nz, chunk):
        zs = slice(z0, min(nz, z0 + chunk))
        t = t_all[zs]
        r_chunk = {k: v[zs] for k, v in rnd.items()}
        g = _global_anatomy(an, t, xh, yh, r_chunk)
        for name in out:
            out[name][zs] = g[name]
        gw = {k: np.broadcast_to(v, out["base"][zs].shape)[(slice(None),) + win] for k, v in g.items()}
        r_win = {k: v[(slice(None),) + win] for k, v in r_chunk.items()}
        c = _central_anatomy(an, t, xh[..., win[1]], yh[:, win[0], :], r_win, gw)
        for name, arr in c.items():
            out[name][(zs,) + win] = arr
    out["lung"] += np.float32(0.012) * wobble
    for name in ("body", "bone", "air", "lung"):  # distances in full-resolution pixels
        out[name] *= np.float32(an.a_px)

    hu = an.hu
    out["lung_hu"] = (hu["lung"] + hu["gravity"] * np.clip((yh + 0.5) / 1.1, 0, 1)
                      + 18.0 * rnd["coarse"] + 10.0 * rnd["fine"]).astype(np.float32)
    del rnd, wobble

    # Infection score: smooth blobs favouring the periphery, the posterior and the lower zones.
    w_per, w_post, w_low = an.inf_weights
    depth_mm = np.maximum(-out["lung"], 0) * spec.spacing[2]
    low = np.clip((an.t_car - t_all) / (an.t_car - an.t_low), 0, 1)
    inf += w_per * np.exp(-depth_mm / 18.0) + w_post * np.clip(yh + 0.3, 0, 1) + w_low * low
    out["v1"], out["v2"], out["inf"] = v1, v2, inf.astype(np.float32, copy=False)
    return out


def _infection_thresholds(fields: Mapping[str, np.ndarray], spec: CaseSpec, an: _Anatomy) -> tuple[float, float]:
    """Score thresholds of infection and consolidation that hit the case's infected share."""
    if not spec.infected or spec.infection_target <= 0:
        return math.inf, math.inf
    scores = fields["inf"][fields["lung"] < 0]
    if scores.size == 0:
        return math.inf, math.inf
    thr = float(np.quantile(scores, 1.0 - spec.infection_target))
    infected = scores[scores > thr]
    thr_c = float(np.quantile(infected, 1.0 - an.cons_share)) if infected.size and an.cons_share > 0.01 else math.inf
    return thr, thr_c

# ------------------------------------------------------------------------------------ the case
@dataclass
class SyntheticCase:
    """One generated case, in canonical (z, y, x) LPS order.

    Attributes:
        case_id: ``synth_XXX``.
        index: the case index.
        ct: CT as stored: ``int16`` HU (``pad_value`` outside the circular field of view) when
            ``source_kind == "hu"``, else ``uint8`` 0-255 windowed to ``window``.
        lung: ``uint8`` 0 background, 1 left lung, 2 right lung (infected lung included).
        infection: ``uint8`` 0/1.
        spacing: (sz, sy, sx) in mm.
        source_kind: ``"hu"`` or ``"uint8"``.
        orientation: axis codes the files are stored in (``"LPS"``, ``"RAS"``...).
        affine: affine of the stored files (after reorientation to ``orientation``).
        pad_value: out-of-field value of HU cases, ``None`` for uint8.
    """

    case_id: str
    index: int
    ct: np.ndarray
    lung: np.ndarray
    infection: np.ndarray
    spacing: tuple[float, float, float]
    source_kind: str
    orientation: str
    affine: np.ndarray
    pad_value: int | None
    spec: CaseSpec | None = None

    @property
    def labels(self) -> np.ndarray:
        """Combined map: 1 left lung, 2 right lung, 3 infection (infection overrides)."""
        return combined_labels(self.lung, self.infection)

    @property
    def canonical_affine(self) -> np.ndarray:
        """The LPS affine of the canonical array transposed to (x, y, z)."""
        return lps_affine(self.spacing, self.ct.shape)


def generate_case(index: int, profile_params: str | Mapping[str, Any] = "tiny", seed: int = 0,
                  *, progress: bool | None = None) -> SyntheticCase:
    """Generate case ``index`` of a profile (a name or a profile dict), deterministically for ``seed``.

    Args:
        index: case index (its id is ``synth_{index:03d}``).
        profile_params: ``"tiny"``, ``"demo"``, ``"full"`` or a profile dict (see
            :mod:`lungseg.synthetic.profiles`).
        seed: non-negative seed; the case's generator is seeded with ``(seed, index)``.
        progress: show a progress bar over slices (default: only for large volumes).
    """
    start = time.perf_counter()
    profile = resolve_profile(profile_params)
    rng = case_rng(seed, index)
    spec = draw_case_spec(index, profile, rng)
    an = _draw_anatomy(spec, rng)
    fields = _coarse_fields(an, spec, rng)
    thr, thr_c = _infection_thresholds(fields, spec, an)
    renderer = SliceRenderer(spec, an, fields, thr, thr_c, rng)

    n, nsl = spec.size, spec.n_slices
    ct = np.empty((nsl, n, n), np.int16 if spec.source_kind == "hu" else np.uint8)
    lung = np.empty((nsl, n, n), np.uint8)
    infection = np.empty((nsl, n, n), np.uint8)
    yy, xx = np.ogrid[:n, :n]
    c = (n - 1) / 2.0
    outside_fov = ((yy - c) ** 2 + (xx - c) ** 2) > (n / 2.0) ** 2
    lo, hi = spec.window
    big = progress if progress is not None else nsl * n * n > 20_000_000
    for k in tqdm(range(nsl), desc=f"{spec.case_id} slices", unit="slice", leave=False, disable=not big,
                  mininterval=2.0):
        img, lung[k], infection[k] = renderer.render(k, rng)
        if spec.source_kind == "hu":
            np.clip(np.rint(img, out=img), HU_MIN, HU_MAX, out=img)
            np.copyto(img, np.float32(spec.pad_value), where=outside_fov)
        else:
            img -= np.float32(lo)
            img *= np.float32(255.0 / (hi - lo))
            np.clip(np.rint(img, out=img), 0, 255, out=img)
        ct[k] = img  # exact: the values are integers within the dtype's range
    del fields, renderer
    case = SyntheticCase(
        case_id=spec.case_id,
        index=index,
        ct=ct,
        lung=lung,
        infection=infection,
        spacing=spec.spacing,
        source_kind=spec.source_kind,
        orientation=spec.orientation,
        affine=stored_affine(spec.spacing, ct.shape, spec.orientation),
        pad_value=spec.pad_value,
        spec=spec,
    )
    logger.debug("Generated %s %s in %.2f s", spec.case_id, ct.shape, time.perf_counter() - start)
    return case
