"""A synthetic chest CT: body, chest wall, ribs, spine, mediastinum, heart, lungs with vessels and
airways, diaphragm domes with liver and stomach below, and COVID-19-like infection.

How a case is built (all deterministic for a given seed and case index):

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
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from lungseg.synthetic.nifti import combined_labels, lps_affine, stored_affine
from lungseg.synthetic.profiles import resolve_profile

logger = logging.getLogger(__name__)

BIG = 1.0e4  # a distance meaning "absent"
HU_MIN, HU_MAX = -1024, 3071
STANDARD_SLICE_SPACINGS = (0.625, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)
FIELD_NAMES = ("body", "base", "bone", "air", "lung", "lung_hu", "v1", "v2", "inf")


# --------------------------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class CaseSpec:
    """What is drawn about a case before its anatomy: grid, storage and infection target."""

    index: int
    case_id: str
    size: int
    n_slices: int
    spacing: tuple[float, float, float]  # (sz, sy, sx) in mm
    source_kind: str  # "hu" | "uint8"
    orientation: str  # stored axis codes, e.g. "LPS", "RAS"
    infected: bool
    infection_target: float  # share of the lung area that is infected (0 when not infected)
    pad_value: int | None  # out-of-field value of HU cases
    noise_hu: float
    window: tuple[float, float]
    model_size: int
    model_slices: int


def case_id(index: int) -> str:
    """The id of case ``index``: ``synth_000``, ``synth_001``..."""
    return f"synth_{index:03d}"


def case_rng(seed: int, index: int) -> np.random.Generator:
    """The random generator of one case, seeded from ``(seed, index)``."""
    return np.random.default_rng([int(seed), int(index)])


def draw_case_spec(index: int, profile: Mapping[str, Any], rng: np.random.Generator) -> CaseSpec:
    """Draw grid, storage kind, orientation and infection target of case ``index``."""
    size = int(rng.choice(profile["sizes"]))
    if profile.get("slice_counts"):
        n_slices = int(profile["slice_counts"][index % len(profile["slice_counts"])])
    else:
        lo, hi = profile["slices"]
        n_slices = int(rng.integers(lo, hi + 1))
    sxy = round(float(rng.uniform(*profile["spacing_xy"])), 4)
    length = float(rng.uniform(*profile["scan_length_mm"]))
    zlo, zhi = profile["spacing_z"]
    candidates = [s for s in STANDARD_SLICE_SPACINGS if zlo <= s <= zhi] or [zlo]
    target = min(max(length / n_slices, zlo), zhi)
    sz = float(min(candidates, key=lambda s: abs(s - target)))
    kind = profile["source_kinds"][index % len(profile["source_kinds"])]
    infected = bool(profile["infected"][index % len(profile["infected"])])
    flo, fhi = profile["infection_fraction"]
    frac = float(math.exp(rng.uniform(math.log(flo), math.log(fhi))))
    pad = int(rng.choice(profile["fov_padding"]))
    noise = float(rng.uniform(*profile["noise_hu"]))
    return CaseSpec(
        index=index,
        case_id=case_id(index),
        size=size,
        n_slices=n_slices,
        spacing=(sz, sxy, sxy),
        source_kind=kind,
        orientation=profile["orientations"][index % len(profile["orientations"])],
        infected=infected,
        infection_target=frac if infected else 0.0,
        pad_value=pad if kind == "hu" else None,
        noise_hu=noise,
        window=(float(profile["window"][0]), float(profile["window"][1])),
        model_size=min(int(profile["model_size"]), size),
        model_slices=min(int(profile["model_slices"]), n_slices),
    )


@dataclass(frozen=True)
class _Anatomy:
    """The drawn patient.

    In-plane lengths are in units of the body half-width ``a`` unless named ``_mm``/``_px``; levels
    ``t_*`` are fractions of the scan from its first (inferior) slice; ``hu`` holds tissue HU values.
    """

    a_px: float
    a_mm: float
    cx: float
    cy: float
    q: float  # body AP half-depth / half-width
    p_body: float  # superellipse exponent of the body outline
    wobble: np.ndarray  # (k, amplitude, phase, z-drift) rows of the outline's Fourier wobble
    fat_mm: float
    muscle_mm: float
    rib_mm: float
    length_mm: float  # craniocaudal length the anatomy is drawn over (the scan's, kept in 200-420 mm)
    t_apex: float
    t_dome_r: float
    t_dome_l: float
    t_low: float
    k_dome_r: float
    k_dome_l: float
    t_car: float
    t_heart_top: float
    t_heart_wide: float
    t_arch: float
    heart_scale: float
    heart_dx: float
    heart_dy: float
    heart_angle: float
    peri_mm: float
    yv: float  # vertebral body centre
    rib_pitch_mm: float
    rib_drop_mm: float
    rib_phase: float
    rib_duty: float
    vert_pitch_mm: float
    vert_phase: float
    esophagus_air: bool
    stomach_gas: bool
    contrast: bool
    hu: dict[str, float] = field(default_factory=dict)
    vessel_sigma_mm: float = 6.0
    vessel_r_max_mm: float = 4.5
    vessel_r_min_mm: float = 0.7
    vessel_decay_mm: float = 45.0
    airway_reach_mm: float = 70.0
    inf_sigma_mm: float = 12.0
    inf_weights: tuple[float, float, float] = (0.8, 0.5, 0.3)  # peripheral, posterior, lower-zone bias
    cons_share: float = 0.2


def _draw_anatomy(spec: CaseSpec, rng: np.random.Generator) -> _Anatomy:
    n, sx = spec.size, spec.spacing[2]
    fill = rng.uniform(0.70, 0.86)
    a_px = fill * n / 2.0
    t_apex = rng.uniform(0.80, 0.89)
    t_low = rng.uniform(0.09, 0.16)
    t_dome_r = t_low + rng.uniform(0.16, 0.24)
    t_dome_l = t_dome_r - rng.uniform(0.015, 0.05)
    reach = _dome_reach()  # the lowest lung point (posterolateral recess) sits at t_low
    k_r = (t_dome_r - t_low) / reach
    k_l = (t_dome_l - t_low + rng.uniform(0.0, 0.02)) / reach
    span = t_apex - t_dome_r
    t_car = t_apex - rng.uniform(0.30, 0.40) * span
    t_heart_top = t_car - rng.uniform(0.04, 0.08)
    wobble = np.stack(
        [
            np.arange(2, 6, dtype=float),
            rng.normal(0.0, 0.012, 4),
            rng.uniform(0, 2 * np.pi, 4),
            rng.uniform(-1.5, 1.5, 4),
        ],
        axis=1,
    )
    contrast = bool(rng.random() < 0.3)
    blood = float(rng.uniform(150, 280)) if contrast else float(rng.uniform(35, 48))
    hu = {
        "fat": rng.uniform(-115, -85),
        "muscle": rng.uniform(38, 55),
        "skin": rng.uniform(20, 40),
        "liver": rng.uniform(50, 68) + (40 if contrast else 0),
        "spleen": rng.uniform(40, 55) + (50 if contrast else 0),
        "kidney": rng.uniform(25, 35) + (120 if contrast else 0),
        "stomach": rng.uniform(10, 30),
        "bowel": rng.uniform(20, 45),
        "mediastinum": rng.uniform(-95, -60),
        "myocardium": rng.uniform(40, 55) + (60 if contrast else 0),
        "blood": blood,
        "vessel": blood if contrast else rng.uniform(30, 45),
        "disc": rng.uniform(70, 95),
        "canal": rng.uniform(20, 35),
        "table": rng.uniform(100, 250),
        "cancellous": rng.uniform(250, 420),
        "cortical": rng.uniform(800, 1050),
        "lung": rng.uniform(-885, -835),
        "gravity": rng.uniform(20, 70),
        "ggo": rng.uniform(-650, -420),
        "consolidation": rng.uniform(-80, 40),
        "airway_wall": rng.uniform(-250, -50),
    }
    hu = {k: float(v) for k, v in hu.items()}
    return _Anatomy(
        a_px=a_px,
        a_mm=a_px * sx,
        cx=(n - 1) / 2.0 + rng.uniform(-0.025, 0.025) * n,
        cy=(n - 1) / 2.0 + rng.uniform(-0.01, 0.04) * n,
        q=rng.uniform(0.62, 0.74),
        p_body=rng.uniform(2.2, 2.8),
        wobble=wobble,
        fat_mm=rng.uniform(4, 20),
        muscle_mm=rng.uniform(6, 12),
        rib_mm=rng.uniform(8, 12),
        length_mm=float(np.clip(spec.n_slices * spec.spacing[0], 200.0, 420.0)),
        t_apex=t_apex,
        t_dome_r=t_dome_r,
        t_dome_l=t_dome_l,
        t_low=t_low,
        k_dome_r=k_r,
        k_dome_l=k_l,
        t_car=t_car,
        t_heart_top=t_heart_top,
        t_heart_wide=t_dome_l + rng.uniform(0.04, 0.08),
        t_arch=t_car + rng.uniform(0.03, 0.06),
        heart_scale=rng.uniform(0.9, 1.15),
        heart_dx=rng.uniform(-0.03, 0.05),
        heart_dy=rng.uniform(-0.03, 0.03),
        heart_angle=rng.uniform(-0.75, -0.45),
        peri_mm=rng.uniform(2.0, 6.0),
        yv=rng.uniform(0.33, 0.38),
        rib_pitch_mm=rng.uniform(24, 30),
        rib_drop_mm=rng.uniform(100, 140),
        rib_phase=rng.uniform(0, 1),
        rib_duty=rng.uniform(0.28, 0.38),
        vert_pitch_mm=rng.uniform(24, 30),
        vert_phase=rng.uniform(0, 1),
        esophagus_air=bool(rng.random() < 0.5),
        stomach_gas=bool(rng.random() < 0.5),
        contrast=contrast,
        hu=hu,
        vessel_sigma_mm=rng.uniform(5.0, 7.0),
        vessel_r_max_mm=rng.uniform(3.5, 5.5),
        vessel_r_min_mm=rng.uniform(0.6, 0.9),
        vessel_decay_mm=rng.uniform(35, 60),
        airway_reach_mm=rng.uniform(55, 85),
        inf_sigma_mm=rng.uniform(8, 15),
        inf_weights=(rng.uniform(0.5, 1.1), rng.uniform(0.3, 0.8), rng.uniform(0.1, 0.5)),
        cons_share=rng.uniform(0.0, 0.45),
    )


# ------------------------------------------------------------------------------------ field helpers
def _resize_linear(arr: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Linear resize of a (z, y, x) array, pixel-centre aligned like ``cv2.INTER_LINEAR``."""
    nz_in, nz_out = arr.shape[0], shape[0]
    if nz_in != nz_out:
        pos = np.clip((np.arange(nz_out) + 0.5) * (nz_in / nz_out) - 0.5, 0, nz_in - 1)
        i0 = np.floor(pos).astype(np.intp)
        i1 = np.minimum(i0 + 1, nz_in - 1)
        w = (pos - i0).astype(np.float32)[:, None, None]
        arr = arr[i0] * (1 - w) + arr[i1] * w
    arr = arr.astype(np.float32, copy=False)
    if arr.shape[1:] == tuple(shape[1:]):
        return arr
    out = np.empty(shape, np.float32)
    for k in range(shape[0]):
        out[k] = cv2.resize(arr[k], (shape[2], shape[1]), interpolation=cv2.INTER_LINEAR)
    return out


def smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], sigma_vox) -> np.ndarray:
    """Gaussian-filtered white noise of ``shape``, zero mean and unit standard deviation.

    Broad fields are filtered on a coarser grid (about 1.5 coarse voxels per sigma) and upsampled
    linearly, which keeps the cost independent of sigma.
    """
    sigma = np.maximum(np.asarray(sigma_vox, dtype=float), 1e-3)
    factor = np.maximum(1.0, sigma / 1.5)
    cshape = tuple(int(min(n, math.ceil(n / f) + 1)) for n, f in zip(shape, factor))
    noise = rng.standard_normal(cshape, dtype=np.float32)
    csigma = sigma * np.asarray(cshape) / np.asarray(shape)
    field_ = ndimage.gaussian_filter(noise, csigma, mode="wrap", truncate=3.0)
    field_ -= field_.mean()
    field_ /= field_.std() + 1e-6
    if cshape != tuple(shape):
        field_ = _resize_linear(field_, shape)
    return field_


def _ellipse(dx, dy, rx, ry):
    """Signed distance along rays from the centre to an ellipse; negative inside.

    Exact on the boundary and along every ray, cheap, and well behaved far away.
    """
    r = np.sqrt(dx * dx + dy * dy) + 1e-6
    rho = np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2) + 1e-6
    return r * (1.0 - 1.0 / rho)


def _rot_ellipse(dx, dy, rx, ry, angle: float):
    c, s = math.cos(angle), math.sin(angle)
    return _ellipse(c * dx + s * dy, -s * dx + c * dy, rx, ry)


def _capsule(xh, yh, p0, p1, radius: float):
    """Signed distance to a segment of the given radius."""
    (x0, y0), (x1, y1) = p0, p1
    vx, vy = x1 - x0, y1 - y0
    h = np.clip(((xh - x0) * vx + (yh - y0) * vy) / (vx * vx + vy * vy), 0.0, 1.0)
    return np.sqrt((xh - x0 - h * vx) ** 2 + (yh - y0 - h * vy) ** 2) - radius


def _gate(make, present):
    """``make()`` where ``present`` (a boolean per slice), else absent; ``make`` is only called when
    some slice has the structure."""
    present = np.asarray(present)
    if not present.any():
        return np.float32(BIG)
    return np.where(present, make(), np.float32(BIG))


def _ramp(x):
    """``clip(x, 0, 1)``: the partial-volume weight of a signed distance, as ``_ramp(0.5 - d)``."""
    return np.clip(x, 0.0, 1.0)


# ------------------------------------------------------------------------------------- the anatomy
#: Each diaphragm dome is a paraboloid over (|x|, y): peak position and weights of its two axes.
DOME_CENTRE = (0.38, -0.1)
DOME_WEIGHTS = (1.6, 1.3)
#: Where the lowest lung point (the posterolateral costophrenic recess) sits.
LUNG_RECESS = (0.85, 0.55)


def _dome_reach() -> float:
    dx, dy = LUNG_RECESS[0] - DOME_CENTRE[0], LUNG_RECESS[1] - DOME_CENTRE[1]
    return DOME_WEIGHTS[0] * dx * dx + DOME_WEIGHTS[1] * dy * dy


def _dome(xh, yh, t, t_peak: float, k: float):
    """Signed in-plane distance to a diaphragm dome at level ``t``: positive below the dome."""
    ddx = np.abs(xh) - DOME_CENTRE[0]
    ddy = yh - DOME_CENTRE[1]
    zd = t_peak - k * (DOME_WEIGHTS[0] * ddx * ddx + DOME_WEIGHTS[1] * ddy * ddy)
    grad = 2.0 * k * np.sqrt((DOME_WEIGHTS[0] * ddx) ** 2 + (DOME_WEIGHTS[1] * ddy) ** 2)
    return (zd - t) / np.maximum(grad, 2.0 * k * 0.08)


#: The central window (units of a) that holds the spine, sternum, heart, great vessels and airways.
CENTRAL_X = 0.72
CENTRAL_Y = (-0.86, 0.92)
#: Voxels of the coarse grid processed at once (small enough to stay in cache).
CHUNK_VOXELS = 1_000_000


def _wobble(rows: np.ndarray, t: np.ndarray, cos1: np.ndarray, sin1: np.ndarray) -> np.ndarray:
    """Sum of ``amp * cos(k * theta + phase + drift * 2 pi t)`` over the rows (k, amp, phase, drift),
    as one matrix product of per-slice coefficients and angular harmonics."""
    harmonics, coeffs = [], []
    cos_k, sin_k, order = cos1, sin1, 1
    tt = t.reshape(-1).astype(np.float64)
    for k, amp, phase, drift in rows:
        while order < int(k):
            cos_k, sin_k, order = cos_k * cos1 - sin_k * sin1, sin_k * cos1 + cos_k * sin1, order + 1
        ph = phase + drift * 2 * np.pi * tt
        harmonics += [cos_k, sin_k]
        coeffs += [amp * np.cos(ph), -amp * np.sin(ph)]
    h = np.stack([np.broadcast_to(x, cos1.shape).reshape(-1) for x in harmonics]).astype(np.float32)
    c = np.stack(coeffs, axis=1).astype(np.float32)  # (nz, 2 * rows)
    return (c @ h).reshape((len(tt),) + cos1.shape[1:])


def _global_anatomy(an: _Anatomy, t, xh, yh, rnd) -> dict[str, np.ndarray]:
    """Body, chest wall, ribs, diaphragm, abdomen and lungs (before the mediastinum is carved out)."""
    a_mm, hu = an.a_mm, an.hu
    mm = 1.0 / a_mm  # one millimetre in units of a
    z_mm = t * an.length_mm
    axh = np.abs(xh)
    f_coarse, f_fine = rnd["coarse"], rnd["fine"]

    # ---- body outline (superellipse with a slowly turning Fourier wobble) and the table
    rx_b = 1.0 - 0.05 * (1 - t) ** 2
    ry_b = an.q * (1.0 + 0.05 * (1 - t))
    r = np.sqrt(xh * xh + yh * yh) + 1e-6
    cos1, sin1 = xh / r, yh / r
    wob = _wobble(an.wobble, t, cos1, sin1)
    p = an.p_body
    rho = (np.abs(xh / rx_b) ** p + np.abs(yh / ry_b) ** p) ** (1.0 / p)
    body = r - r * (1 + wob) / (rho + 1e-6)
    y_table = an.q * 1.05 + 0.04 + 0.12 * xh * xh
    table = np.maximum(np.abs(yh - y_table) - 4 * mm, axh - 1.05)
    depth_mm = -body * a_mm  # depth below the skin

    # ---- chest wall and cavity (the body shrunk by fat, muscle and the rib layer)
    sin_post = np.clip(sin1, 0, 1)
    fat_local = an.fat_mm * (1 + 0.3 * f_coarse) * (0.85 + 0.3 * np.abs(cos1))
    wall_mm = fat_local + an.muscle_mm + an.rib_mm + 2.0 + 18.0 * sin_post ** 4
    cavity = body + wall_mm * mm

    # ---- ribs: oblique stripes on the chest wall, bone from the spine to the costal cartilage
    ang = np.arctan2(axh, yh)  # 0 at the posterior midline, pi anteriorly
    phase = (z_mm + an.rib_drop_mm * ang / np.pi) / an.rib_pitch_mm + an.rib_phase
    stripe = (np.abs(phase - np.round(phase)) - an.rib_duty / 2) * (r * np.pi * an.rib_pitch_mm / an.rib_drop_mm)
    rib_half = an.rib_mm * mm / 2
    ring = np.abs(cavity - (1.5 * mm + rib_half)) - rib_half * 0.75
    rib = np.sqrt(np.maximum(ring, 0) ** 2 + np.maximum(stripe, 0) ** 2) + np.minimum(np.maximum(ring, stripe), 0)
    rib = np.where((ang > 0.15) & (ang < np.pi - 0.5), rib, np.float32(BIG))
    rib = _gate(lambda: rib, (t > an.t_low - 0.15) & (t < an.t_apex + 0.05))

    # ---- diaphragm domes and the abdomen under them
    left = xh > 0
    dome = np.where(left, _dome(xh, yh, t, an.t_dome_l, an.k_dome_l), _dome(xh, yh, t, an.t_dome_r, an.k_dome_r))
    in_cav = cavity < 0
    abd = in_cav & (dome > 0)
    liver_edge = 0.2 - 0.45 * np.clip((an.t_dome_r - 0.08 - t) / 0.25, 0, 1)  # left lobe high, right lobe low
    stomach = _gate(lambda: _ellipse(xh - 0.36, yh + 0.12, 0.28, 0.22), t > an.t_dome_l - 0.22)
    # Gas in the fundus: under the dome and its muscle, above an air-fluid level.
    gas = _gate(lambda: np.maximum(np.maximum(stomach, yh - (-0.2 + 0.04 * f_coarse)),
                                   np.maximum(8 * mm - dome, cavity)),
                (t > an.t_dome_l - 0.12) & an.stomach_gas)
    spleen = _ellipse(xh - 0.52, yh - 0.3, 0.16, 0.2)
    kidney = _gate(lambda: _ellipse(axh - 0.34, yh - 0.36, 0.09, 0.13), (t < an.t_low - 0.02) & (t > an.t_low - 0.3))

    # ---- lungs: the cavity beside a midline band, above the domes, shrinking to the apex
    band = 0.05 + 0.05 * np.exp(-(((yh - an.yv + 0.1) / 0.2) ** 2))
    # Apical domes: about spherical caps, posterior, widening over the top 45% of the lung height.
    pa = np.clip((an.t_apex - t) / (0.45 * (an.t_apex - an.t_dome_r)), 0, 1) ** 0.6
    apex = _gate(lambda: _ellipse(axh - 0.47, yh - 0.08, np.maximum(0.5 * pa, 1e-3), np.maximum(0.68 * pa, 1e-3)),
                 pa > 0.02)
    lung = np.maximum(np.maximum(cavity + 1.5 * mm, band - axh), np.maximum(apex, dome))

    # ---- soft-tissue HU map; bone, air and lungs are drawn on top of it when slices are rendered
    tex = 6.0 * f_fine + 4.0 * f_coarse
    base = np.where(depth_mm < fat_local + 2.0, hu["fat"], hu["muscle"]) + tex
    base = np.where(depth_mm < 2.0, hu["skin"], base)
    base = np.where(in_cav, hu["mediastinum"] + 25.0 * np.clip(f_coarse, -1, 2) + tex, base)
    neck = t > an.t_apex + 0.02  # above the lungs: muscle rather than mediastinal fat
    if neck.any():
        base = np.where(in_cav & neck, hu["muscle"] - 40 * (f_coarse > 0.8) + tex, base)
    base = np.where(abd, np.where(f_fine > 0.2, hu["bowel"], hu["fat"] + 30) + tex, base)
    base = np.where(abd & (spleen < 0), hu["spleen"] + tex, base)
    base = np.where(abd & (stomach < 0), hu["stomach"] + tex, base)
    base = np.where(abd & (xh < liver_edge - 0.15 * yh), hu["liver"] + tex, base)
    base = np.where(kidney < 0, hu["kidney"] + tex, base)
    base = np.where((body > 0) & (table < 0), hu["table"], base)
    shape = base.shape
    return {
        "body": np.minimum(body, table),
        "base": base,
        "bone": np.broadcast_to(rib, shape),
        "air": np.broadcast_to(gas, shape),
        "lung": lung,
        "cavity": cavity,
        "dome": dome,
    }


def _central_anatomy(an: _Anatomy, t, xh, yh, rnd, g: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Spine, sternum, mediastinum, heart, great vessels, airways and oesophagus inside the central
    window, merged with the window's part of the global fields ``g``."""
    a_mm, hu = an.a_mm, an.hu
    mm = 1.0 / a_mm
    z_mm = t * an.length_mm
    axh = np.abs(xh)
    tex = 6.0 * rnd["fine"] + 4.0 * rnd["coarse"]
    cavity, base = g["cavity"], g["base"].copy()

    # ---- spine: vertebral bodies between discs, canal, posterior arch and processes
    yv = an.yv + 0.03 * np.sin(np.pi * t)
    r_vb = 0.095 * (1 + 0.15 * (1 - t))
    spine_zone = _ellipse(xh, yh - (yv + 0.06), 0.17, 0.22)
    vphase = z_mm / an.vert_pitch_mm + an.vert_phase
    disc = (vphase - np.floor(vphase)) < 0.2
    vb_shape = _ellipse(xh, yh - yv, r_vb * 1.05, r_vb)
    vb = np.where(disc, np.float32(BIG), vb_shape)
    canal_y = yv + r_vb + 0.045
    d_canal = np.sqrt(xh * xh + (yh - canal_y) ** 2)
    arch = np.maximum(np.abs(d_canal - 0.058) - 0.016, (canal_y - 0.01) - yh)
    spinous = _ellipse(xh, yh - (canal_y + 0.1), 0.02, 0.06)
    transverse = _ellipse(axh - 0.09, yh - (canal_y - 0.005), 0.065, 0.02)
    arch_phase = vphase + 0.3
    arch_present = (arch_phase - np.floor(arch_phase)) > 0.25
    posterior = np.where(arch_present, np.minimum(np.minimum(arch, spinous), transverse), np.float32(BIG))
    ry_b = an.q * (1.0 + 0.05 * (1 - t))
    y_st = -ry_b + (an.fat_mm + 7.0) * mm
    sternum = _gate(lambda: np.maximum(_ellipse(xh, yh - y_st, 0.08, 0.03), g["body"] + 3 * mm),
                    (t > an.t_dome_l - 0.04) & (t < an.t_apex - 0.03))
    bone = np.minimum(np.minimum(g["bone"], vb), np.minimum(posterior, sternum))
    cav_spine = np.maximum(cavity, -spine_zone)

    # ---- heart (larger towards the base, resting on the left dome) and pericardial fat
    h = np.clip((an.t_heart_top - t) / (an.t_heart_top - an.t_heart_wide), 0, 1) ** 0.5
    hr = np.maximum(h * an.heart_scale, 1e-3)

    def make_heart():
        sdf = _rot_ellipse(xh - (0.1 + an.heart_dx), yh - (-0.1 + an.heart_dy), 0.37 * hr, 0.27 * hr, an.heart_angle)
        return np.maximum(sdf, _dome(xh, yh, t, an.t_dome_l - 0.02, an.k_dome_l))

    heart = _gate(make_heart, (t < an.t_heart_top) & (h > 0.05))

    # ---- great vessels
    desc_c = (0.115, an.yv - 0.07)
    s_abd = np.clip((an.t_dome_l - 0.02 - t) / 0.08, 0, 1)  # the aorta moves to the midline below the diaphragm
    aorta_desc = _gate(lambda: _ellipse(xh - (desc_c[0] - s_abd * 0.095), yh - (desc_c[1] - s_abd * (r_vb - 0.02)),
                                        0.065, 0.065),
                       t < an.t_arch)
    asc_c = (-0.03, -0.12)
    aorta_asc = _gate(lambda: _ellipse(xh - asc_c[0], yh - asc_c[1], 0.08, 0.08),
                      (t > an.t_heart_top - 0.03) & (t < an.t_arch))
    arch_sdf = _gate(lambda: _capsule(xh, yh, asc_c, desc_c, 0.065), np.abs(t - an.t_arch) < 0.012)
    trunk = _gate(lambda: _ellipse(xh - 0.07, yh + 0.14, 0.075, 0.075),
                  (t > an.t_heart_top - 0.02) & (t < an.t_car - 0.01))
    rpa = _gate(lambda: _capsule(xh, yh, (0.05, -0.1), (-0.24, 0.03), 0.045), np.abs(t - (an.t_car - 0.03)) < 0.015)
    lpa = _gate(lambda: _capsule(xh, yh, (0.07, -0.12), (0.24, 0.05), 0.045), np.abs(t - (an.t_car - 0.01)) < 0.015)
    svc = _gate(lambda: _ellipse(xh + 0.11, yh + 0.08, 0.05, 0.05),
                (t > an.t_heart_top - 0.02) & (t < an.t_apex + 0.05))
    vessels = np.minimum(np.minimum(np.minimum(aorta_desc, aorta_asc), np.minimum(arch_sdf, trunk)),
                         np.minimum(np.minimum(rpa, lpa), svc))

    # ---- trachea, main bronchi down to the hila, oesophagus
    y_trach = 0.07 - 0.25 * (t - an.t_car)
    trachea = _gate(lambda: _ellipse(xh, yh - y_trach, 0.058, 0.052), t >= an.t_car)
    sb = np.clip((an.t_car - t) / 0.1, 0, 1)
    bronchi = _gate(lambda: _ellipse(axh - (0.04 + 0.2 * sb ** 0.8), yh - (y_trach + 0.02),
                                     0.04 - 0.012 * sb, 0.036 - 0.01 * sb),
                    (t < an.t_car) & (t > an.t_car - 0.1))
    airway = np.minimum(trachea, bronchi)
    eso_x, eso_y = 0.045, yv - r_vb - 0.045
    esophagus = _gate(lambda: _ellipse(xh - eso_x, yh - eso_y, 0.035, 0.03), t > an.t_dome_l - 0.06)
    eso_air = _gate(lambda: _ellipse(xh - eso_x, yh - eso_y, 0.01, 0.007), (t > an.t_dome_l) & an.esophagus_air)
    mediastinal = np.minimum(np.minimum(heart - an.peri_mm * mm, vessels), np.minimum(airway - 2.0 * mm, esophagus))

    # ---- lungs keep clear of the spine and the mediastinum
    lung = np.maximum(np.maximum(g["lung"], cav_spine + 1.5 * mm), -mediastinal + 1.0 * mm)

    # ---- soft tissue
    base = np.where((cavity < 0) & (spine_zone < 0), hu["muscle"] + tex, base)  # paraspinal muscle
    base = np.where(heart < an.peri_mm * mm, hu["fat"] + tex, base)  # epicardial fat
    myo = hu["myocardium"] + tex
    base = np.where(heart < 0, np.where(heart > -8.0 * mm, myo, hu["blood"] + 0.5 * tex), base)
    base = np.where(vessels < 0, hu["blood"] + 0.5 * tex, base)
    base = np.where(esophagus < 0, hu["muscle"] + tex, base)
    base = np.where(airway < 2.0 * mm, hu["muscle"] + tex, base)  # airway walls
    base = np.where(vb_shape < 0, hu["disc"] + tex, base)
    base = np.where(d_canal < 0.045, hu["canal"] + tex, base)
    return {
        "base": base,
        "bone": bone,
        "air": np.minimum(g["air"], np.minimum(airway, eso_air)),
        "lung": lung,
    }


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


# ------------------------------------------------------------------------------- full-res slices
class SliceRenderer:
    """Turns the coarse fields into full-resolution slices (HU float32 and labels)."""

    N_NOISE = 4  # noise slices drawn per case; each slice uses one, shifted and flipped at random

    def __init__(self, spec: CaseSpec, an: _Anatomy, fields: dict[str, np.ndarray], thr: float, thr_c: float,
                 rng: np.random.Generator) -> None:
        self.spec, self.an, self.fields, self.thr, self.thr_c = spec, an, fields, thr, thr_c
        n = spec.size
        pos = np.arange(n, dtype=np.float32)
        xh = (pos - an.cx) / an.a_px
        yh = (pos - an.cy) / an.a_px
        hilum_d2 = ((np.abs(xh)[None, :] - 0.22) ** 2 + (yh[:, None] - 0.05) ** 2) * an.a_mm ** 2
        self.hilum_d2 = hilum_d2.astype(np.float32)  # squared in-plane distance to the hila, mm^2
        self.t_hilum = an.t_car - 0.05
        self.left_cols = np.arange(n) > an.cx
        self.scale = spec.model_size / n
        sigma = 0.6
        k = cv2.getGaussianKernel(5, sigma)
        gain = float(spec.noise_hu / np.sqrt((k ** 2).sum() ** 2))
        self.noise = [cv2.GaussianBlur(rng.standard_normal((n, n), dtype=np.float32), (5, 5), sigma) * np.float32(gain)
                      for _ in range(self.N_NOISE)]

    def _slice(self, name: str, j0: int, j1: int, w: float) -> np.ndarray:
        f = self.fields[name]
        return f[j0] if w <= 1e-6 else f[j0] * np.float32(1 - w) + f[j1] * np.float32(w)

    def _full(self, coarse: np.ndarray) -> np.ndarray:
        n = self.spec.size
        if coarse.shape[0] == n:
            return coarse.copy()
        return cv2.resize(coarse, (n, n), interpolation=cv2.INTER_LINEAR)

    def _box(self, coarse: np.ndarray, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """The full-resolution values of rows r0:r1, columns c0:c1 (same as resizing, then cropping)."""
        s = self.scale
        mat = np.float32([[s, 0, (c0 + 0.5) * s - 0.5], [0, s, (r0 + 0.5) * s - 0.5]])
        return cv2.warpAffine(coarse, mat, (c1 - c0, r1 - r0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REPLICATE)

    def render(self, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Slice ``k``: (HU float32, lung labels 0/1/2, infection 0/1)."""
        spec, hu = self.spec, self.an.hu
        n, nz = spec.size, spec.model_slices
        sx = spec.spacing[2]
        p = (k + 0.5) * nz / spec.n_slices - 0.5
        j0 = int(np.clip(np.floor(p), 0, nz - 1))
        j1 = min(j0 + 1, nz - 1)
        w = float(np.clip(p - j0, 0.0, 1.0))

        def full(name: str) -> np.ndarray:
            return self._full(self._slice(name, j0, j1, w))

        # Air outside the body, soft tissue inside, then bone and air-filled organs on top.
        img = full("base")
        img += 1000.0
        img *= _ramp(0.5 - full("body"))
        img -= 1000.0
        bone = full("bone")
        depth_mm = np.maximum(-bone, 0) * sx
        bone_hu = hu["cancellous"] + (hu["cortical"] - hu["cancellous"]) * _ramp(1.0 - depth_mm / 2.0)
        img += _ramp(0.5 - bone) * (bone_hu - img)
        air = full("air")
        img += _ramp(0.5 - air) * (-1000.0 - img)

        lung_sdf = full("lung")
        lung = np.zeros((n, n), np.uint8)
        infection = np.zeros((n, n), np.uint8)
        near = lung_sdf < 0.5
        rows = np.flatnonzero(near.any(axis=1))
        if rows.size:
            cols = np.flatnonzero(near.any(axis=0))
            r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            box = (slice(r0, r1), slice(c0, c1))
            ls = lung_sdf[box]
            par, score = self._parenchyma(k, lambda name: self._box(self._slice(name, j0, j1, w), r0, r1, c0, c1), box)
            sub = img[box]
            sub += _ramp(0.5 - ls) * (par - sub)
            inside = ls < 0
            lung[box] = np.where(inside, np.where(self.left_cols[c0:c1], np.uint8(1), np.uint8(2)), np.uint8(0))
            if score is not None:
                infection[box] = inside & (score > self.thr)

        noise = self.noise[int(rng.integers(self.N_NOISE))]
        shift = rng.integers(0, n, size=2)
        noise = np.roll(noise, (int(shift[0]), int(shift[1])), axis=(0, 1))
        img += noise if rng.random() < 0.5 else noise[:, ::-1]
        return img, lung, infection

    def _parenchyma(self, k: int, get, box) -> tuple[np.ndarray, np.ndarray | None]:
        """Lung HU inside ``box`` (texture, infection, vessels, airways) and the infection score."""
        spec, an, hu = self.spec, self.an, self.an.hu
        sx = spec.spacing[2]
        par = get("lung_hu")
        s = None
        if math.isfinite(self.thr):
            s = get("inf")
            ramp = max(0.04, 2.0 * sx / an.inf_sigma_mm)
            wi = _ramp(0.5 + (s - self.thr) / ramp)
            lesion = hu["ggo"] + 60.0 * (s - self.thr) + 0.5 * (par - hu["lung"])
            if math.isfinite(self.thr_c):
                lesion += _ramp(0.5 + (s - self.thr_c) / ramp) * (hu["consolidation"] - lesion)
            par += wi * (lesion - par)
        # Vessels: the common zero set of two smooth fields; thick near the hila, thin outside.
        t = (k + 0.5) / spec.n_slices
        dz = (t - self.t_hilum) * an.length_mm
        dist = np.sqrt(self.hilum_d2[box] + np.float32(dz * dz))
        r_v = an.vessel_r_min_mm + (an.vessel_r_max_mm - an.vessel_r_min_mm) * np.exp(-dist / an.vessel_decay_mm)
        v1, v2 = get("v1"), get("v2")
        scale = an.vessel_sigma_mm * 1.2  # mm per unit of the field, near its zero set
        g = np.sqrt(v1 * v1 + v2 * v2) * scale  # about the distance to the vessel's centre line, mm
        par += _ramp((r_v - g) / sx + 0.5) * (hu["vessel"] - par)
        # Bronchi run beside the vessels near the hila: a lumen with a thin wall.
        vis = _ramp((an.airway_reach_mm - dist) / 10.0) * (r_v > 1.3)
        if vis.any():
            d = np.sqrt((v1 * scale - 2.0 * r_v) ** 2 + (v2 * scale) ** 2) - 0.85 * r_v  # mm outside the lumen
            wall = np.maximum(0.6, 0.3 * r_v)
            par += _ramp(0.5 - (np.abs(d - wall / 2) - wall / 2) / sx) * vis * (hu["airway_wall"] - par)
            par += _ramp(0.5 - d / sx) * vis * (-990.0 - par)
        return par, s

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
