"""lungseg.evaluation.baseline on a synthetic chest phantom built here (known lungs, trachea, lesion)."""

from __future__ import annotations

import numpy as np
import pytest

from lungseg.errors import ConfigError, DataValidationError
from lungseg.evaluation.baseline import baseline_infection, baseline_lung, hu_to_level, otsu_level
from lungseg.evaluation.metrics import dice

SPACING = (2.5, 0.8, 0.8)


def chest_phantom(shape=(24, 64, 64), noise=20.0, seed=0):
    """Canonical (z, y, x) phantom: air -1000 HU outside, body ellipse +40 HU, two lung ellipsoids
    -850 HU (right lung at small column index) with two +40 HU vessels, and a -1000 HU trachea from the
    top slice (largest z = superior) down to a carina whose bronchi reach both lungs, so that without
    airway removal the two lungs are one component.

    Returns (ct int16 HU, lungs uint8 0/1, airway bool).
    """
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape).astype(float)
    body = ((yy - 32) / 22) ** 2 + ((xx - 32) / 28) ** 2 <= 1
    right = ((yy - 33) / 14) ** 2 + ((xx - 19) / 9) ** 2 + ((zz - 10) / 8.5) ** 2 <= 1
    left = ((yy - 33) / 14) ** 2 + ((xx - 45) / 9) ** 2 + ((zz - 10) / 8.5) ** 2 <= 1
    lungs = right | left
    ct = np.full(shape, -1000.0)
    ct[body] = 40.0
    ct[lungs] = -850.0
    vessels = lungs & ((((yy - 30) ** 2 + (xx - 17) ** 2) <= 1) | (((yy - 37) ** 2 + (xx - 47) ** 2) <= 1))
    ct[vessels] = 40.0
    trachea = (((yy - 26) ** 2 + (xx - 32) ** 2) <= 2.5**2) & (zz >= 13)
    bronchi = (np.abs(yy - 26) <= 1) & (np.abs(xx - 32) <= 14) & (zz >= 13) & (zz <= 14) & ~lungs
    airway = trachea | bronchi
    ct[airway] = -1000.0
    ct += rng.normal(0.0, noise, shape)
    return ct.astype(np.int16), lungs.astype(np.uint8), airway


def to_uint8(ct_hu: np.ndarray) -> np.ndarray:
    return np.clip((ct_hu.astype(float) + 1250) / 1500 * 255, 0, 255).round().astype(np.uint8)


def test_hu_to_level():
    assert hu_to_level(-320, "hu") == -320
    assert hu_to_level(-320, "uint8") == pytest.approx(158.1)
    assert hu_to_level(250, "uint8") == pytest.approx(255)
    with pytest.raises(ConfigError, match="source kind"):
        hu_to_level(0, "mri")


@pytest.mark.parametrize("kind", ["hu", "uint8"])
def test_baseline_lung_recovers_phantom_lungs(kind):
    ct, lungs, airway = chest_phantom()
    # the bronchi connect both lungs to the trachea: a plain threshold would give a single component
    assert np.all(ct[airway] < -320)
    vol = ct if kind == "hu" else to_uint8(ct)
    mask = baseline_lung(vol, kind, SPACING)
    assert mask.dtype == np.uint8 and mask.shape == ct.shape and set(np.unique(mask)) <= {0, 1}
    assert dice(mask, lungs) > 0.97
    assert not mask[airway].any()  # trachea and main bronchi removed
    body_air = ct < -990
    assert not mask[body_air & ~lungs.astype(bool)].any()  # no outside air, no airway
    vessels = lungs.astype(bool) & (ct > -300)
    vessels[:5] = vessels[16:] = False  # near the apex and base a vessel may lie on the lung's edge
    assert vessels.sum() > 50 and mask[vessels].all()  # holes (vessels inside the lungs) filled
    # the airway rule is what removes them: with it disabled, trachea and bronchi stay in the mask
    no_rule = baseline_lung(vol, kind, SPACING, min_airway_voxels=10**9)
    assert no_rule[airway].mean() > 0.9
    # both lungs found, on their own side of the mediastinum
    assert mask[:, :, :32].sum() > 0.9 * lungs[:, :, :32].sum()
    assert mask[:, :, 32:].sum() > 0.9 * lungs[:, :, 32:].sum()


def test_otsu_level_splits_two_modes():
    vol = np.zeros((4, 8, 8), np.uint8)
    vol[:, :, :4] = 40
    vol[:, :, 4:] = 200
    level = otsu_level(vol, "uint8")
    assert 40 < level <= 200 and np.array_equal(vol < level, vol == 40)
    hu = np.where(vol == 40, -900, 30).astype(np.int16)
    assert -900 < otsu_level(hu, "hu") <= 30


def test_baseline_lung_otsu_mode_on_uncalibrated_intensities():
    """Lungs mapped above the fixed 0-255 threshold (as per-slice CLAHE data can be): Otsu still works."""
    ct, lungs, airway = chest_phantom()
    # a monotone but uncalibrated mapping: air ~10, lung ~175 (above the fixed level 158), tissue ~240
    vol = np.interp(ct, [-1100, -1000, -850, 40, 200], [0, 10, 175, 240, 255]).round().astype(np.uint8)
    assert np.median(vol[lungs > 0]) > hu_to_level(-320, "uint8")
    assert dice(baseline_lung(vol, "uint8", SPACING), lungs) < 0.5
    mask = baseline_lung(vol, "uint8", SPACING, threshold_mode="otsu", smoothing=3)
    assert dice(mask, lungs) > 0.95
    assert not mask[airway].any()
    with pytest.raises(ConfigError, match="threshold_mode"):
        baseline_lung(vol, "uint8", threshold_mode="kmeans")


def test_baseline_lung_without_lungs_is_empty_and_bad_input_raises():
    ct = np.full((4, 16, 16), -1000, np.int16)
    ct[:, 3:13, 3:13] = 40  # a body with no lung
    assert baseline_lung(ct, "hu").sum() == 0
    with pytest.raises(DataValidationError, match="3D"):
        baseline_lung(ct[0], "hu", case="c1")
    with pytest.raises(ConfigError):
        baseline_lung(ct, "houndsfield")


def test_baseline_infection_finds_lesion_inside_lung_only():
    ct, lungs, _ = chest_phantom(noise=30.0, seed=1)
    zz, yy, xx = np.indices(ct.shape)
    lesion = (((zz - 10) / 2.5) ** 2 + ((yy - 29) / 4) ** 2 + ((xx - 44) / 4) ** 2 <= 1) & (lungs > 0)
    outside = ((zz - 10) / 2.5) ** 2 + ((yy - 48) / 3) ** 2 + ((xx - 32) / 3) ** 2 <= 1  # in the body
    assert not (outside & (lungs > 0)).any() and lesion.sum() > 100
    ct[lesion] = -500
    ct[outside] = -500
    for kind, vol in (("hu", ct), ("uint8", to_uint8(ct))):
        inf = baseline_infection(vol, kind, lungs)
        assert inf.dtype == np.uint8 and inf.shape == ct.shape
        assert dice(inf, lesion) > 0.9, kind
        assert not inf[lungs == 0].any(), kind  # nothing outside the lung (body +40 HU is in the band)
        assert not inf[outside].any(), kind
        assert not inf[lungs.astype(bool) & ~lesion].any(), kind  # the vessels are removed by the opening


def test_baseline_infection_empty_lung_and_errors():
    ct, lungs, _ = chest_phantom(shape=(6, 64, 64))
    assert baseline_infection(ct, "hu", np.zeros_like(lungs)).sum() == 0
    assert baseline_infection(ct, "hu", lungs).sum() == 0  # healthy lungs: no infection
    with pytest.raises(DataValidationError, match="case 'c2'.*shape"):
        baseline_infection(ct, "hu", lungs[:-1], case="c2")
    with pytest.raises(ConfigError, match="band_hu"):
        baseline_infection(ct, "hu", lungs, band_hu=(50, -700))
    with pytest.raises(ConfigError, match="min_second_fraction"):
        baseline_lung(ct, "hu", min_second_fraction=1.5)
