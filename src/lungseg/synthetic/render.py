"""Full-resolution slices of a synthetic case, from its coarse fields (see :mod:`lungseg.synthetic.phantom`).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from lungseg.synthetic.anatomy import _Anatomy
from lungseg.synthetic.shapes import _ramp
from lungseg.synthetic.spec import CaseSpec


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
