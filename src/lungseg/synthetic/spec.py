"""What is drawn about a synthetic case before its anatomy: grid, storage and infection target
(see :mod:`lungseg.synthetic.phantom`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

STANDARD_SLICE_SPACINGS = (0.625, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)


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
