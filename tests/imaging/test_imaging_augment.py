"""Augmentation keeps image and mask aligned and never blends labels."""

from __future__ import annotations

import numpy as np
import pytest

from lungseg.errors import ConfigError, DataValidationError
from lungseg.imaging import AugmentParams, augment_batch, random_augment


def _square_pair(h=64, w=64):
    img = np.zeros((h, w), np.float32)
    img[20:40, 24:44] = 1.0
    mask = np.zeros((h, w), np.uint8)
    mask[20:40, 24:44] = 1
    return img, mask


def test_image_and_mask_stay_aligned():
    rng = np.random.default_rng(0)
    params = AugmentParams(hflip=True, rotation_deg=30, scale_min=0.8, scale_max=1.2)
    img, mask = _square_pair()
    changed = 0
    for _ in range(20):
        a_img, a_mask = random_augment(img, mask, rng, params)
        assert a_img.shape == img.shape and a_img.dtype == np.float32
        assert a_mask.shape == mask.shape and a_mask.dtype == np.uint8
        bright = a_img > 0.99
        covered = a_mask == 1
        assert bright.any()
        # the mask covers every clearly bright pixel, and mostly nothing else
        assert covered[bright].all()
        inter = np.logical_and(a_img > 0.5, covered).sum()
        union = np.logical_or(a_img > 0.5, covered).sum()
        assert inter / union > 0.9
        changed += not np.array_equal(a_mask, mask)
    assert changed >= 15  # it really transforms


def test_rotation_leaks_no_intermediate_labels():
    rng = np.random.default_rng(1)
    mask = np.zeros((48, 48), np.uint8)
    mask[10:30, 8:20] = 1
    mask[12:36, 26:40] = 2
    mask[20:26, 14:32] = 3
    img = mask.astype(np.float32) / 3
    params = AugmentParams(rotation_deg=45)
    for _ in range(10):
        _, a_mask = random_augment(img, mask, rng, params)
        assert set(np.unique(a_mask)) <= {0, 1, 2, 3}
        assert {1, 2, 3} <= set(np.unique(a_mask))


def test_flip_only_is_exact_mirror_and_p_zero_is_identity():
    img, mask = _square_pair(32, 40)
    img[0, 0] = 0.5
    params = AugmentParams(hflip=True, rotation_deg=0, scale_min=1.0, scale_max=1.0)
    rng = np.random.default_rng(2)
    seen = set()
    for _ in range(12):
        a_img, a_mask = random_augment(img, mask, rng, params)
        if np.array_equal(a_img, img):
            seen.add("same")
            assert np.array_equal(a_mask, mask)
        else:
            seen.add("flip")
            np.testing.assert_allclose(a_img, img[:, ::-1], atol=1e-6)
            assert np.array_equal(a_mask, mask[:, ::-1])
    assert seen == {"same", "flip"}
    a_img, a_mask = random_augment(img, mask, rng, AugmentParams(p=0.0))
    assert np.array_equal(a_img, img) and np.array_equal(a_mask, mask)


def test_augment_batch_shapes_and_reproducible():
    img, mask = _square_pair(32, 32)
    images = np.stack([img] * 4)[..., None]
    masks = np.stack([mask] * 4)[..., None]
    params = AugmentParams()
    a1 = augment_batch(images, masks, np.random.default_rng(5), params)
    a2 = augment_batch(images, masks, np.random.default_rng(5), params)
    assert a1[0].shape == images.shape and a1[1].shape == masks.shape
    assert a1[0].dtype == np.float32 and a1[1].dtype == np.uint8
    assert np.array_equal(a1[0], a2[0]) and np.array_equal(a1[1], a2[1])
    # each pair gets its own draw
    assert not all(np.array_equal(a1[1][0], a1[1][k]) for k in range(1, 4))


def test_params_from_dict():
    p = AugmentParams.from_dict({"hflip": False, "rotation_deg": 10, "enabled": True})
    assert p == AugmentParams(hflip=False, rotation_deg=10.0)
    with pytest.raises(ConfigError):
        AugmentParams.from_dict({"scale_min": 1.2, "scale_max": 1.0})
    with pytest.raises(ConfigError):
        AugmentParams.from_dict({"rotation_deg": "lots"})


# ---------------------------------------------------------------- intensity augmentation (#25)
_NO_GEOMETRY = dict(hflip=False, rotation_deg=0.0, scale_min=1.0, scale_max=1.0)


def test_intensity_off_draws_nothing_so_the_geometry_is_unchanged():
    img = (np.random.default_rng(1).random((40, 40)) * 255).astype(np.uint8)
    mask = (img > 128).astype(np.uint8)
    plain = random_augment(img, mask, np.random.default_rng(7), AugmentParams())
    explicit = random_augment(
        img, mask, np.random.default_rng(7), AugmentParams(gamma=0.0, contrast=0.0, brightness=0.0, noise_std=0.0)
    )
    np.testing.assert_array_equal(plain[0], explicit[0])
    np.testing.assert_array_equal(plain[1], explicit[1])


def test_gamma_keeps_the_order_of_intensities_and_never_touches_the_mask():
    ramp = np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (64, 1))
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 20:40] = 1
    params = AugmentParams(gamma=1.0, **_NO_GEOMETRY)
    changed = 0
    for seed in range(10):
        out, out_mask = random_augment(ramp, mask, np.random.default_rng(seed), params)
        assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0
        assert np.all(np.diff(out[0]) >= 0)                       # a gamma curve is monotonic
        assert out[0, 0] == 0.0 and out[0, -1] == 1.0             # and keeps 0 and 1
        np.testing.assert_array_equal(out_mask, mask)
        changed += not np.allclose(out, ramp, atol=1e-3)
    assert changed >= 8


def test_noise_has_the_requested_spread_and_2p5d_channels_share_the_curve():
    flat = np.full((128, 128), 0.5, np.float32)
    out, _ = random_augment(flat, np.zeros((128, 128), np.uint8), np.random.default_rng(0),
                            AugmentParams(noise_std=0.05, **_NO_GEOMETRY))
    assert abs(float(out.std()) - 0.05) < 0.005 and abs(float(out.mean()) - 0.5) < 0.005

    stack = np.repeat((np.random.default_rng(2).random((32, 32, 1)) * 255).astype(np.uint8), 3, axis=2)
    out3, _ = random_augment(stack, np.zeros((32, 32), np.uint8), np.random.default_rng(3),
                             AugmentParams(gamma=0.5, contrast=0.3, brightness=0.1, **_NO_GEOMETRY))
    assert out3.dtype == np.uint8 and out3.shape == stack.shape
    np.testing.assert_array_equal(out3[..., 0], out3[..., 1])
    np.testing.assert_array_equal(out3[..., 0], out3[..., 2])
    assert not np.array_equal(out3, stack)


@pytest.mark.parametrize("bad", [{"gamma": -0.1}, {"contrast": 1.5}, {"noise_std": -1}, {"brightness": 2}])
def test_bad_intensity_options_are_refused_by_name(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        AugmentParams.from_dict(bad)


def _two_lungs():
    """A 64-px slice: two dark lungs (with a little texture) in soft tissue, and their mask."""
    rng0 = np.random.default_rng(0)
    img = np.full((64, 64), 170, np.uint8)
    lung = np.zeros((64, 64), np.uint8)
    lung[10:54, 8:28] = 1
    lung[10:54, 36:56] = 1
    img[lung > 0] = 40 + rng0.integers(0, 10, int(lung.sum()))
    return img, lung


def test_paint_brightens_the_lungs_keeps_the_mask_and_draws_nothing_when_off():
    img, lung = _two_lungs()
    painted, out_mask = random_augment(img, lung, np.random.default_rng(1), AugmentParams(paint=1.0, **_NO_GEOMETRY))
    np.testing.assert_array_equal(out_mask, lung)                       # consolidated lung is still lung
    brighter = painted[lung > 0].astype(int) - img[lung > 0] > 30
    assert 0.25 <= brighter.mean() <= 0.75
    np.testing.assert_array_equal(painted[lung == 0], img[lung == 0])
    a = random_augment(img, lung, np.random.default_rng(4), AugmentParams())
    b = random_augment(img, lung, np.random.default_rng(4), AugmentParams(paint=0.0))
    np.testing.assert_array_equal(a[0], b[0])
    stack = np.stack([img] * 3, axis=-1)
    painted3, _ = random_augment(stack, lung, np.random.default_rng(1), AugmentParams(paint=1.0, **_NO_GEOMETRY))
    np.testing.assert_array_equal(painted3[..., 1], painted)            # 2.5D: every channel the same region


def test_paint_in_a_region_adds_the_painted_pixels_to_the_mask():
    """The infection model's paint: inside the lungs given as ``region``, the painted pixels join the
    infection mask; what was infection stays infection; the lung model's draws are unchanged."""
    img, lung = _two_lungs()
    infection = np.zeros_like(lung)
    infection[40:50, 10:20] = 1
    params = AugmentParams(paint=1.0, **_NO_GEOMETRY)
    painted, out_mask = random_augment(img, infection, np.random.default_rng(1), params, region=lung)
    lung_painted, _ = random_augment(img, lung, np.random.default_rng(1), params)
    np.testing.assert_array_equal(painted, lung_painted)                # the same draw as the lung model's paint
    assert out_mask.dtype == infection.dtype
    assert np.all(out_mask >= infection) and not np.any(out_mask[lung == 0])
    share = out_mask[lung > 0].mean()
    assert 0.3 <= share <= 0.75                                         # 30-70 % of the lungs, and the old lesion
    brighter = (painted.astype(int) - img) > 30
    assert brighter[out_mask > infection].mean() > 0.8                  # the new infection is what was painted
    stack = np.stack([img] * 3, axis=-1)
    p3, m3 = random_augment(stack, infection, np.random.default_rng(1), params, region=lung)
    np.testing.assert_array_equal(p3[..., 1], painted)
    np.testing.assert_array_equal(m3, out_mask)
    off, off_mask = random_augment(img, infection, np.random.default_rng(1), AugmentParams(**_NO_GEOMETRY), region=lung)
    np.testing.assert_array_equal(off_mask, infection)
    np.testing.assert_array_equal(off, img)
    with pytest.raises(DataValidationError, match="paint region has shape"):
        random_augment(img, infection, np.random.default_rng(1), params, region=lung[:32])


def test_elastic_deforms_image_and_mask_alike_within_alpha_and_draws_nothing_when_off():
    img, mask = _square_pair()
    params = AugmentParams(elastic=1.0, elastic_alpha=4.0, elastic_sigma=6.0, **_NO_GEOMETRY)
    changed = 0
    for seed in range(10):
        out, out_mask = random_augment(img, mask, np.random.default_rng(seed), params)
        assert out.dtype == np.float32 and out_mask.dtype == np.uint8 and set(np.unique(out_mask)) <= {0, 1}
        assert (out_mask[out > 0.99] == 1).all()  # the mask moved with the image
        inter, union = np.logical_and(out > 0.5, out_mask == 1).sum(), np.logical_or(out > 0.5, out_mask == 1).sum()
        assert inter / union > 0.9
        # no pixel moved more than alpha: the square's outline stays within 4 px of where it was
        ys, xs = np.nonzero(out_mask)
        assert ys.min() >= 20 - 5 and ys.max() <= 39 + 5 and xs.min() >= 24 - 5 and xs.max() <= 43 + 5
        changed += not np.array_equal(out_mask, mask)
    assert changed >= 8
    # a 2.5D stack: every channel gets the same field
    stack = np.repeat(img[..., None], 3, axis=2)
    out3, m3 = random_augment(stack, mask, np.random.default_rng(4), params)
    np.testing.assert_array_equal(out3[..., 0], out3[..., 2])
    # off (the default): nothing drawn, the geometry of before
    plain = random_augment(img, mask, np.random.default_rng(7), AugmentParams())
    off = random_augment(img, mask, np.random.default_rng(7), AugmentParams(elastic=0.0, elastic_alpha=9.0))
    np.testing.assert_array_equal(plain[0], off[0])
    np.testing.assert_array_equal(plain[1], off[1])


@pytest.mark.parametrize("bad", [{"elastic": 1.5}, {"elastic_alpha": -1}, {"elastic_sigma": 0}])
def test_bad_elastic_options_are_refused_by_name(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        AugmentParams.from_dict(bad)


def test_clahe_equalises_again_with_a_random_clip_keeps_the_mask_and_draws_nothing_when_off():
    """Issue #25's item 2: a share of the slices is equalised (again), a clip limit drawn from [1, max]."""
    rng0 = np.random.default_rng(0)
    img = (0.4 + 0.1 * rng0.random((64, 64))).astype(np.float32)    # a flat, low-contrast slice
    img[16:48, 16:48] += 0.05
    mask = (img > 0.47).astype(np.uint8)
    params = AugmentParams(clahe=1.0, clahe_clip_max=4.0, **_NO_GEOMETRY)
    out, out_mask = random_augment(img, mask, np.random.default_rng(1), params)
    assert out.dtype == np.float32 and out.shape == img.shape and 0.0 <= out.min() and out.max() <= 1.0
    np.testing.assert_array_equal(out_mask, mask)                      # the image only
    assert out.std() > 2 * img.std()                                     # equalised: the local contrast rises
    spreads = [random_augment(img, mask, np.random.default_rng(s), params)[0].std() for s in range(8)]
    assert max(spreads) - min(spreads) > 0.01                            # the clip limit is drawn per slice
    u8 = np.rint(img * 255).astype(np.uint8)
    out8, _ = random_augment(u8, mask, np.random.default_rng(1), params)
    assert out8.dtype == np.uint8 and np.abs(out8.astype(int) - np.rint(out * 255)).max() <= 1
    stack = np.stack([img] * 3, axis=-1)
    out3, _ = random_augment(stack, mask, np.random.default_rng(1), params)
    for c in range(3):                                                   # 2.5D: every channel the same clip
        np.testing.assert_allclose(out3[..., c], out, atol=1e-6)
    some = AugmentParams(clahe=0.5, **_NO_GEOMETRY)
    half = [np.array_equal(random_augment(img, mask, np.random.default_rng(s), some)[0], img) for s in range(40)]
    assert 10 <= sum(half) <= 30                                         # the other share stays as it came
    plain = random_augment(img, mask, np.random.default_rng(7), AugmentParams())
    off = random_augment(img, mask, np.random.default_rng(7), AugmentParams(clahe=0.0, clahe_clip_max=9.0))
    np.testing.assert_array_equal(plain[0], off[0])                      # off: nothing drawn, the geometry of before
    np.testing.assert_array_equal(plain[1], off[1])


@pytest.mark.parametrize("bad", [{"clahe": 1.5}, {"clahe": -0.1}, {"clahe_clip_max": 0.5}])
def test_bad_clahe_options_are_refused_by_name(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        AugmentParams.from_dict(bad)
