"""The synthetic patient: drawn once per case (``_draw_anatomy``), then evaluated on the coarse
grid as signed distances and HU maps (see :mod:`lungseg.synthetic.phantom` for the coordinates).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from lungseg.synthetic.shapes import BIG, _capsule, _dome, _dome_reach, _ellipse, _gate, _rot_ellipse, _wobble
from lungseg.synthetic.spec import CaseSpec


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
