"""The extensive-disease painting (#25's stress set): coverage per lung, masks, intensity scale."""

from __future__ import annotations

import numpy as np
import pytest

from lungseg.errors import ConfigError, DataValidationError
from lungseg.imaging.paint import PaintParams, paint_extensive_disease, paint_from_dict


def _chest(z=4, size=96, dtype=np.uint8):
    """A dark pair of lungs (labels 1, 2) in a bright body, with a small lesion in lung 1."""
    yy, xx = np.mgrid[:size, :size]
    rng = np.random.default_rng(0)
    body = ((yy - size / 2) ** 2 / (0.45 * size) ** 2 + (xx - size / 2) ** 2 / (0.48 * size) ** 2) < 1
    left = ((yy - size / 2) ** 2 / (0.3 * size) ** 2 + (xx - 0.3 * size) ** 2 / (0.13 * size) ** 2) < 1
    right = ((yy - size / 2) ** 2 / (0.3 * size) ** 2 + (xx - 0.7 * size) ** 2 / (0.13 * size) ** 2) < 1
    img = np.where(body, 170.0, 10.0) + rng.normal(0, 8, (size, size))
    img[left | right] = 45 + rng.normal(0, 6, (left | right).sum())
    lung = np.zeros((size, size), np.uint8)
    lung[left], lung[right] = 1, 2
    inf = np.zeros((size, size), np.uint8)
    inf[int(0.5 * size):int(0.55 * size), int(0.28 * size):int(0.32 * size)] = 1
    img = np.clip(img, 0, 255).astype(dtype)
    return np.stack([img] * z), np.stack([lung] * z), np.stack([inf] * z)


def test_each_lung_is_painted_to_its_drawn_share_and_the_lungs_are_kept():
    ct, lung, inf = _chest()
    params = PaintParams(coverage=(0.3, 0.7))
    out_ct, out_inf = paint_extensive_disease(ct, lung, inf, np.random.default_rng(3), params)
    assert out_ct.shape == ct.shape and out_ct.dtype == ct.dtype and out_inf.dtype == np.uint8
    assert not np.any(out_inf[lung == 0])                            # paint never leaves the lungs
    assert np.all(out_inf[inf > 0] == 1)                             # the true lesion is kept
    for k in (1, 2):
        share = out_inf[lung == k].mean()
        assert 0.3 <= share <= 0.72
        # painted lung is denser than the lung it replaced, but no brighter than the slice's own range
        painted = (out_inf == 1) & (lung == k) & (inf == 0)
        assert out_ct[painted].astype(float).mean() > ct[painted].astype(float).mean() + 40
    assert out_ct.max() <= ct.max() and out_ct.min() >= ct.min()
    np.testing.assert_array_equal(out_ct[lung == 0], ct[lung == 0])  # nothing outside the lungs changes


def test_painting_is_reproducible_and_works_on_hu():
    ct, lung, inf = _chest(dtype=np.int16)
    hu = (ct.astype(np.int16) * 4 - 1000).astype(np.int16)
    a = paint_extensive_disease(hu, lung, inf, np.random.default_rng(5))
    b = paint_extensive_disease(hu, lung, inf, np.random.default_rng(5))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[0].dtype == np.int16 and a[0][a[1] == 1].mean() > hu[a[1] == 1].mean() + 150


def test_bad_inputs_and_options_are_refused_by_name():
    ct, lung, inf = _chest()
    with pytest.raises(DataValidationError, match="case_7"):
        paint_extensive_disease(ct, lung[:2], inf, np.random.default_rng(0), source="case_7")
    with pytest.raises(ConfigError, match="coverage"):
        PaintParams(coverage=(0.8, 0.2))
    with pytest.raises(ConfigError, match="unknown keys"):
        paint_from_dict({"coverge": [0.3, 0.7]})
    paint, seed = paint_from_dict({"coverage": [0.4, 0.5], "seed": 9})
    assert seed == 9
    _, out_inf = paint(ct, lung, inf, np.random.default_rng(0))
    assert 0.38 <= out_inf[lung > 0].mean() <= 0.52
