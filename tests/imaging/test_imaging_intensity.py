"""Intensity: source-kind detection, HU windowing, CLAHE, float conversion, unwindowed heuristic."""

from __future__ import annotations

import numpy as np
import pytest

from lungseg.errors import ConfigError, DataValidationError
from lungseg.imaging import (
    HU_WINDOW,
    apply_clahe,
    detect_source_kind,
    looks_unwindowed,
    to_unit_float,
    window_to_uint8,
)


def test_detect_source_kind():
    assert detect_source_kind(np.zeros((2, 4, 4), np.uint8)) == "uint8"
    assert detect_source_kind(np.array([[0, 17, 255]], np.int16)) == "uint8"
    assert detect_source_kind(np.array([[0.0, 17.0, 255.0, np.nan]], np.float32)) == "uint8"
    assert detect_source_kind(np.array([[-1000, 40]], np.int16)) == "hu"
    assert detect_source_kind(np.array([[0, 256]], np.int32)) == "hu"
    assert detect_source_kind(np.array([[0.5, 100.0]], np.float32)) == "hu"  # not integer-valued
    assert detect_source_kind(np.full((2, 2), np.nan, np.float32)) == "hu"


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.float32, np.float64])
def test_window_known_values(dtype):
    hu = np.array([[-3000, -1250, -500, 250, 3000]], dtype=dtype)
    out = window_to_uint8(hu, "hu")
    assert out.dtype == np.uint8 and out.shape == hu.shape
    assert out.tolist() == [[0, 0, 128, 255, 255]]


def test_window_custom_window_and_nan():
    hu = np.array([-1000.0, 0.0, 1000.0, np.nan], np.float32)
    out = window_to_uint8(hu, "hu", window=(-1000, 1000))
    assert out.tolist() == [0, 128, 255, 0]


def test_window_lut_matches_float_path():
    rng = np.random.default_rng(0)
    hu = rng.integers(-2048, 3000, size=(3, 32, 32)).astype(np.int16)
    assert np.array_equal(window_to_uint8(hu, "hu"), window_to_uint8(hu.astype(np.float32), "hu"))
    # non-contiguous input
    assert np.array_equal(window_to_uint8(hu[:, ::2, ::3], "hu"), window_to_uint8(hu, "hu")[:, ::2, ::3])


def test_window_uint8_passthrough():
    u = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert window_to_uint8(u, "uint8") is u
    f = u.astype(np.float32)
    assert np.array_equal(window_to_uint8(f, "uint8"), u)
    assert np.array_equal(window_to_uint8(u.astype(np.int16), "uint8"), u)


def test_window_bad_arguments():
    with pytest.raises(ConfigError):
        window_to_uint8(np.zeros(3), "png")
    with pytest.raises(ConfigError):
        window_to_uint8(np.zeros(3, np.int16), "hu", window=(250, -1250))


def test_clahe_range_dtype_shape():
    rng = np.random.default_rng(1)
    img = rng.integers(60, 120, size=(3, 64, 64)).astype(np.uint8)
    out = apply_clahe(img)
    assert out.dtype == np.uint8 and out.shape == img.shape
    # contrast is stretched, never beyond the uint8 range
    assert out.std() > img.std()
    # 2D works and equals the per-slice result of 3D
    assert np.array_equal(apply_clahe(img[1]), out[1])
    with pytest.raises(DataValidationError):
        apply_clahe(img.astype(np.float32))


def test_to_unit_float():
    u = np.array([0, 51, 255], np.uint8)
    f = to_unit_float(u)
    assert f.dtype == np.float32
    np.testing.assert_allclose(f, [0.0, 0.2, 1.0], rtol=0, atol=1e-7)


def _lung_windowed_phantom(seed=0):
    rng = np.random.default_rng(seed)
    h = w = 96
    yy, xx = np.mgrid[:h, :w]
    body = ((yy - 48) / 40) ** 2 + ((xx - 48) / 44) ** 2 < 1
    lungs = (((yy - 45) / 25) ** 2 + ((np.abs(xx - 48) - 20) / 12) ** 2) < 1
    hu = np.full((4, h, w), -1000.0, np.float32)
    hu[:, body] = 40
    hu[:, lungs] = -850
    hu += rng.normal(0, 20, hu.shape).astype(np.float32)
    return hu


def test_looks_unwindowed():
    hu = _lung_windowed_phantom()
    windowed = window_to_uint8(hu, "hu", HU_WINDOW)
    assert not looks_unwindowed(windowed)
    # HU simply clipped to 0..255: lungs and air are black, soft tissue is dark grey
    clipped = np.clip(hu, 0, 255).round().astype(np.uint8)
    assert looks_unwindowed(clipped)
    # min-max of a wide raw range (-1024..3071): narrow used range
    minmax = np.clip((hu + 1024) / 4095 * 255, 0, 255).round().astype(np.uint8)
    assert looks_unwindowed(minmax)
    # mediastinal window (-160..240): lungs saturated at black
    assert looks_unwindowed(window_to_uint8(hu, "hu", (-160, 240)))
