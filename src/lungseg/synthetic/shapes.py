"""Field helpers of the synthetic phantom: resizing, smooth noise, signed-distance shapes, diaphragm domes
(see :mod:`lungseg.synthetic.phantom` for the coordinates).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from scipy import ndimage

BIG = 1.0e4  # a distance meaning "absent"


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
    cshape = tuple(int(min(n, math.ceil(n / f) + 1)) for n, f in zip(shape, factor, strict=True))
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
