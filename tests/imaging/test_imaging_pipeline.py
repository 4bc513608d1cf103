"""prepare_slices / prepare_masks / restore_slices, PreprocessConfig, slice filters."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lungseg.errors import ConfigError, DataValidationError
from lungseg.imaging import (
    PreprocessConfig,
    ResizeRecord,
    informative_slices,
    prepare_masks,
    prepare_slices,
    restore_slices,
    select_infection_slices,
)


def _phantom(z=4, h=64, w=80, seed=0):
    """HU chest phantom (z, y, x): body ellipse, lungs (right = small columns -> 2, left -> 1)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    body = ((yy - h / 2) / (0.4 * h)) ** 2 + ((xx - w / 2) / (0.45 * w)) ** 2 < 1
    right = ((yy - h / 2) / (0.25 * h)) ** 2 + ((xx - 0.32 * w) / (0.11 * w)) ** 2 < 1
    left = ((yy - h / 2) / (0.25 * h)) ** 2 + ((xx - 0.68 * w) / (0.11 * w)) ** 2 < 1
    ct = np.full((z, h, w), -1000, np.int16)
    lung = np.zeros((z, h, w), np.uint8)
    ct[:, body] = 40
    ct[:, left | right] = -850
    lung[:, left] = 1
    lung[:, right] = 2
    ct[0] = -1000  # an empty slice (no body, no lung)
    lung[0] = 0
    ct += rng.integers(-15, 15, ct.shape).astype(np.int16)
    return ct, lung


def test_prepare_slices_body_mode_shapes_and_records():
    ct, lung = _phantom()
    cfg = PreprocessConfig(image_size=32)
    imgs, recs = prepare_slices(ct, "hu", cfg)
    assert imgs.shape == (4, 32, 32) and imgs.dtype == np.uint8
    assert len(recs) == 4 and all(isinstance(r, ResizeRecord) for r in recs)
    assert all(r.orig_shape == (64, 80) and r.size == 32 for r in recs)
    # body box: the ellipse rows ~[7, 57), cols ~[4, 76) grown by the 4 px margin
    b = recs[1].box
    assert abs(b.y0 - 3) <= 2 and abs(b.y1 - 61) <= 2 and abs(b.x0 - 0) <= 2 and abs(b.x1 - 80) <= 2
    # the empty slice falls back to the full image
    assert recs[0].box.as_tuple() == (0, 64, 0, 80)
    # same result from the same data given as 0-255
    from lungseg.imaging import window_to_uint8

    imgs_u8, recs_u8 = prepare_slices(window_to_uint8(ct, "hu"), "uint8", cfg)
    assert np.array_equal(imgs_u8, imgs) and recs_u8 == recs


def test_prepare_slices_lung_mask_mode():
    ct, lung = _phantom()
    cfg = PreprocessConfig(image_size=32, crop_mode="lung_mask", crop_margin=2)
    with pytest.raises(ConfigError):
        prepare_slices(ct, "hu", cfg)
    with pytest.raises(DataValidationError):
        prepare_slices(ct, "hu", cfg, lung_mask=lung[:, :10])
    imgs, recs = prepare_slices(ct, "hu", cfg, lung_mask=lung)
    rows = np.flatnonzero(lung[1].any(axis=1))
    cols = np.flatnonzero(lung[1].any(axis=0))
    assert recs[1].box.as_tuple() == (rows[0] - 2, rows[-1] + 3, cols[0] - 2, cols[-1] + 3)
    assert recs[0].box == prepare_slices(ct[:1], "hu", PreprocessConfig(image_size=32, crop_margin=2))[1][0].box
    masks = prepare_masks(lung, recs)
    assert masks.shape == (4, 32, 32) and masks.dtype == np.uint8
    assert set(np.unique(masks)) <= {0, 1, 2}
    # lungs are dark in the images where the mask says lung
    assert imgs[1][masks[1] > 0].mean() < imgs[1][masks[1] == 0].mean()


@pytest.mark.parametrize(("size", "min_dice"), [(48, 0.93), (160, 0.99)])
def test_restore_slices_round_trip(size, min_dice):
    ct, lung = _phantom()
    cfg = PreprocessConfig(image_size=size)
    _, recs = prepare_slices(ct, "hu", cfg)
    small = prepare_masks((lung > 0).astype(np.uint8), recs).astype(np.float32)
    back = restore_slices(small[..., None], recs)
    assert back.shape == ct.shape and back.dtype == np.float32
    dice = 2 * np.sum((back > 0.5) & (lung > 0)) / (np.sum(back > 0.5) + np.sum(lung > 0))
    assert dice > min_dice
    assert abs(int((back > 0.5).sum()) - int((lung > 0).sum())) < 0.03 * (lung > 0).sum()  # no bias
    with pytest.raises(DataValidationError):
        restore_slices(small[:2], recs)


def test_config_round_trip_and_validation():
    cfg = PreprocessConfig.from_dict(
        {"task": "infection", "architecture": "unet", "image_size": 224, "crop_mode": "lung_mask",
         "window": [-1250, 250], "clahe_clip_limit": 2.0, "clahe_tile_grid": 8, "crop_margin": 4,
         "threshold": 0.5}
    )
    assert cfg.crop_mode == "lung_mask" and cfg.window == (-1250.0, 250.0)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert PreprocessConfig.from_dict(d) == cfg
    for bad in ({"crop_mode": "lungs"}, {"image_size": 0}, {"image_size": "big"}, {"image_size": 22.5},
                {"window": [250, -1250]}, {"clahe_tile_grid": 0}):
        with pytest.raises(ConfigError):
            PreprocessConfig.from_dict(bad)


def test_informative_slices():
    m = np.zeros((4, 20, 20), np.uint8)
    m[1, :2, :2] = 1  # 4 / 400 = 1 %
    m[2, :1, :1] = 2  # 0.25 %
    m[3, :10, :10] = 1
    assert informative_slices(m, 0.005).tolist() == [False, True, False, True]
    assert informative_slices(m, 0.0).tolist() == [False, True, True, True]


def test_select_infection_slices_fixed_rng():
    informative = np.array([False, True, True, True, True, True, True, True, True, True])
    infection = np.zeros((10, 4, 4), np.uint8)
    infection[[0, 2, 5], 1, 1] = 1  # slice 0 is not informative: never selected
    sel = select_infection_slices(informative, infection, 0.5, np.random.default_rng(0))
    assert sel.dtype == bool and sel.shape == (10,)
    assert sel[2] and sel[5] and not sel[0]
    negatives = [1, 3, 4, 6, 7, 8, 9]
    assert sel[negatives].sum() == round(0.5 * 7)
    again = select_infection_slices(informative, infection, 0.5, np.random.default_rng(0))
    assert np.array_equal(sel, again)
    assert select_infection_slices(informative, infection, 0.0, np.random.default_rng(0)).sum() == 2
    assert select_infection_slices(informative, infection, 1.0, np.random.default_rng(0)).sum() == 9
    with pytest.raises(ConfigError):
        select_infection_slices(informative, infection, 1.5, np.random.default_rng(0))


def test_two_stage_api_equals_prepare_slices():
    from lungseg.imaging import crop_and_resize, enhance, records_to_array

    ct, lung = _phantom(seed=3)
    for cfg in (PreprocessConfig(image_size=40), PreprocessConfig(image_size=40, crop_mode="lung_mask")):
        enhanced = enhance(ct, "hu", cfg)
        assert enhanced.dtype == np.uint8 and enhanced.shape == ct.shape
        a_imgs, a_recs = crop_and_resize(enhanced, cfg, lung_mask=lung)
        b_imgs, b_recs = prepare_slices(ct, "hu", cfg, lung_mask=lung)
        assert np.array_equal(a_imgs, b_imgs) and a_recs == b_recs
        # records in their stored (Z, 11) form work too
        probs = np.ones((4, 40, 40), np.float32)
        assert np.array_equal(restore_slices(probs, records_to_array(a_recs)), restore_slices(probs, a_recs))
    # CLAHE off: enhance is the windowing alone
    no_clahe = PreprocessConfig(image_size=40, clahe_clip_limit=0)
    from lungseg.imaging import window_to_uint8

    assert np.array_equal(enhance(ct, "hu", no_clahe), window_to_uint8(ct, "hu"))


@pytest.mark.parametrize("crop_mode", ["body", "lung_mask"])
@pytest.mark.parametrize("threshold", [0.5, 1e-6, 0.0])
def test_restore_masks_is_restore_slices_thresholded_exactly(crop_mode, threshold):
    """The inference path thresholds inside each crop box only; it must equal the full restore then
    the threshold, voxel for voxel (also for a threshold of 0, where the outside of the box is True)."""
    from lungseg.imaging import restore_masks

    ct, lung = _phantom(z=5, seed=3)
    cfg = PreprocessConfig(image_size=32, crop_mode=crop_mode)
    images, records = prepare_slices(ct, "hu", cfg, lung_mask=lung if crop_mode == "lung_mask" else None)
    probs = np.random.default_rng(1).random(images.shape, dtype=np.float32)
    expected = restore_slices(probs, records) >= threshold
    got = restore_masks(probs, records, threshold)
    assert got.dtype == bool and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(restore_masks(probs[..., None], records, threshold), expected)
