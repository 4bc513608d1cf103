"""Crop boxes and the crop/pad/resize round trip."""

from __future__ import annotations

import numpy as np
import pytest

from lungseg.errors import DataValidationError
from lungseg.imaging import (
    Box,
    ResizeRecord,
    body_box,
    crop_pad_resize,
    lung_box,
    records_from_array,
    records_to_array,
    uncrop_unresize,
)


def test_box_properties():
    b = Box(2, 10, 3, 7)
    assert (b.height, b.width, b.as_tuple()) == (8, 4, (2, 10, 3, 7))
    with pytest.raises(ValueError):
        Box(5, 5, 0, 1)


def test_lung_box_two_blobs_ignores_third():
    m = np.zeros((64, 64), np.uint8)
    m[10:30, 5:20] = 1  # right lung
    m[12:40, 40:55] = 2  # left lung
    m[55:58, 28:31] = 1  # small speck, must be ignored
    assert lung_box(m, n_components=2, margin=0) == Box(10, 40, 5, 55)
    assert lung_box(m, n_components=2, margin=4) == Box(6, 44, 1, 59)
    assert lung_box(m, n_components=3, margin=0) == Box(10, 58, 5, 55)
    assert lung_box(np.zeros((8, 8), np.uint8)) is None


def test_lung_box_3d_and_margin_clipping():
    m = np.zeros((4, 32, 32), np.uint8)
    m[1, 0:10, 2:8] = 1
    m[2, 5:20, 20:32] = 1
    m[3, 30:31, 15:16] = 1  # speck
    assert lung_box(m, margin=3) == Box(0, 23, 0, 32)


def test_body_box_ignores_table_and_background():
    img = np.full((100, 120), 10, np.uint8)  # air
    img[15:75, 20:100] = 200  # body
    img[30:50, 35:60] = 60  # a dark lung inside the body
    img[85:90, 5:115] = 200  # table: separate, thinner
    assert body_box(img, margin=0) == Box(15, 75, 20, 100)
    assert body_box(img, threshold=100, margin=2) == Box(13, 77, 18, 102)


def _ellipse_extent(mask):
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return np.array([rows[0], rows[-1] + 1, cols[0], cols[-1] + 1])


@pytest.mark.parametrize("side", [256, 512])
def test_body_box_circular_fov_noisy_air_and_table(side):
    """Body inside a circular field of view whose air is grainy (as after CLAHE), black outside it,
    a table under the body, lungs dark inside: the box is the body's, within a few pixels."""
    rng = np.random.default_rng(0)
    s = side / 256
    yy, xx = np.mgrid[:side, :side]
    fov = (yy - side / 2) ** 2 + (xx - side / 2) ** 2 < (0.49 * side) ** 2
    body = ((yy - 0.45 * side) / (0.3 * side)) ** 2 + ((xx - side / 2) / (0.4 * side)) ** 2 < 1
    lungs = ((yy - 0.45 * side) / (0.18 * side)) ** 2 + ((np.abs(xx - side / 2) - 0.18 * side) / (0.12 * side)) ** 2 < 1
    img = np.where(fov, rng.normal(90, 35, fov.shape), 5)
    img[body] = rng.normal(200, 15, body.sum())
    img[lungs] = rng.normal(60, 20, lungs.sum())
    table = (yy >= int(0.80 * side)) & (yy < int(0.80 * side + 2 * s)) & fov  # thin bright line
    img[table] = 220
    img = np.clip(img, 0, 255).astype(np.uint8)
    box = body_box(img, margin=0)
    assert np.abs(np.array(box.as_tuple()) - _ellipse_extent(body)).max() <= 3 * s


def test_body_box_falls_back_to_full_image():
    assert body_box(np.zeros((20, 30), np.uint8)) == Box(0, 20, 0, 30)
    assert body_box(np.full((20, 30), 7, np.uint8)) == Box(0, 20, 0, 30)
    # air-only slice with noise: no body, whatever Otsu finds
    noise = np.clip(np.random.default_rng(0).normal(40, 6, (256, 256)), 0, 255).astype(np.uint8)
    assert body_box(noise) == Box(0, 256, 0, 256)


def test_crop_pad_resize_record_and_centring():
    img = np.zeros((50, 80), np.uint8)
    img[10:30, 20:60] = 255  # 20 x 40 box
    box = Box(10, 30, 20, 60)
    out, rec = crop_pad_resize(img, box, 20, interpolation="nearest")
    assert out.shape == (20, 20) and out.dtype == np.uint8
    assert rec.pad == (10, 10, 0, 0) and rec.orig_shape == (50, 80) and rec.size == 20
    # content centred vertically: rows 5..14 bright, the padding rows black
    assert out[5:15].min() == 255 and out[:5].max() == 0 and out[15:].max() == 0
    assert ResizeRecord.from_array(rec.to_array()) == rec
    assert rec.to_array().dtype == np.int32 and rec.to_array().shape == (11,)
    assert records_from_array(records_to_array([rec, rec])) == [rec, rec]


def _square_edges(mask):
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([rows[0], rows[-1], cols[0], cols[-1]])


@pytest.mark.parametrize("size", [32, 64, 100])
def test_resize_then_inverse_lands_within_one_pixel(size):
    img = np.zeros((70, 90), np.float32)
    img[20:45, 31:62] = 1.0
    box = Box(12, 58, 25, 80)
    small, rec = crop_pad_resize(img, box, size, interpolation="linear")
    back = uncrop_unresize(small, rec, interpolation="linear")
    assert back.shape == img.shape and back.dtype == np.float32
    assert np.abs(_square_edges(back >= 0.5) - np.array([20, 44, 31, 61])).max() <= 1
    # nothing outside the crop box
    assert back[:12].max() == 0 and back[:, 80:].max() == 0


def test_nearest_round_trip_of_labels_upscaling():
    m = np.zeros((40, 40), np.uint8)
    m[10:25, 12:30] = 2
    box = Box(5, 35, 5, 35)
    small, rec = crop_pad_resize(m, box, 64, interpolation="nearest")
    back = uncrop_unresize(small, rec, interpolation="nearest")
    assert np.abs(_square_edges(back == 2) - np.array([10, 24, 12, 29])).max() <= 1


def test_mask_resize_never_creates_new_labels():
    rng = np.random.default_rng(3)
    m = rng.choice(np.array([0, 1, 3], np.uint8), size=(60, 60))  # labels 0, 1, 3 (no 2)
    for size in (17, 45, 128):
        small, rec = crop_pad_resize(m, Box(3, 50, 7, 60), size, interpolation="nearest")
        assert set(np.unique(small)) <= {0, 1, 3}
        back = uncrop_unresize(small, rec, interpolation="nearest")
        assert set(np.unique(back)) <= {0, 1, 3}


def test_area_keeps_dtype_and_bad_inputs():
    img = np.full((30, 30), 100, np.uint8)
    out, _ = crop_pad_resize(img, Box(0, 30, 0, 30), 10)
    assert out.dtype == np.uint8 and np.all(out == 100)
    with pytest.raises(DataValidationError):
        crop_pad_resize(img, Box(0, 40, 0, 30), 10)
    with pytest.raises(DataValidationError):
        uncrop_unresize(np.zeros((9, 9), np.float32), ResizeRecord((30, 30), Box(0, 30, 0, 30), (0, 0, 0, 0), 10))
