"""3D post-processing: largest components, hole filling, left/right split."""

from __future__ import annotations

import numpy as np
import pytest

from lungseg.errors import ConfigError
from lungseg.imaging import clean_lung_mask, fill_holes, keep_largest_components, split_left_right


def _two_lungs(shape=(6, 40, 60), touch=False):
    m = np.zeros(shape, np.uint8)
    m[1:5, 8:32, 6:26] = 1  # patient's right: small columns
    m[1:5, 8:32, 34:54] = 1  # patient's left: large columns
    if touch:
        m[2:4, 18:22, 26:34] = 1  # a bridge between them
    return m


def test_keep_largest_components_removes_specks():
    m = _two_lungs()
    m[0, 0, 0] = 1
    m[5, 35:37, 55:57] = 1
    out = keep_largest_components(m, n=2)
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 1}
    assert np.array_equal(out, _two_lungs())
    one = keep_largest_components(m, n=1)
    assert one.sum() == _two_lungs()[..., :30].sum()  # ties: one of the two equal lungs
    # min_voxels drops everything smaller
    assert keep_largest_components(m, n=5, min_voxels=10).sum() == _two_lungs().sum()
    assert keep_largest_components(np.zeros((2, 4, 4), np.uint8)).sum() == 0


def test_fill_holes_per_slice_including_first_and_last():
    m = np.zeros((3, 12, 12), np.uint8)
    m[:, 2:10, 2:10] = 1
    m[:, 5:7, 5:7] = 0  # a hole in every slice, also the first and the last
    m[1, 5, 2:5] = 0  # in slice 1 a channel joins the hole to the outside: not a hole there
    out = fill_holes(m)
    assert out.dtype == np.uint8
    assert out[0, 5:7, 5:7].all() and out[2, 5:7, 5:7].all()
    assert not out[1, 5:7, 5:7].any()  # open to the outside in-plane: stays open


def test_split_left_right_two_blobs():
    m = _two_lungs()
    lab = split_left_right(m)
    assert lab.dtype == np.uint8
    assert np.all(lab[1:5, 8:32, 34:54] == 1)  # larger columns -> left (1)
    assert np.all(lab[1:5, 8:32, 6:26] == 2)
    assert np.array_equal(lab > 0, m > 0)


def test_split_left_right_unequal_and_touching():
    m = _two_lungs(touch=True)
    m[1:5, 8:32, 50:54] = 0  # make the left lung smaller: split must not be the array centre by size
    lab = split_left_right(m)
    assert np.array_equal(lab > 0, m > 0)
    assert np.all(lab[:, :, 34:][m[:, :, 34:] > 0] == 1)
    assert np.all(lab[:, :, :26][m[:, :, :26] > 0] == 2)
    # every column belongs to one side only
    for c in range(m.shape[2]):
        assert len(set(np.unique(lab[..., c])) - {0}) <= 1


def test_clean_lung_mask():
    m = _two_lungs(touch=False)
    noisy = m.copy()
    noisy[3, 15, 15] = 0  # hole
    noisy[0, 38, 2] = 1  # speck
    lab = clean_lung_mask(noisy)
    assert set(np.unique(lab)) == {0, 1, 2}
    assert lab[0, 38, 2] == 0 and lab[3, 15, 15] == 2
    assert np.array_equal(lab > 0, m > 0)
    # 2D input is treated as one slice
    assert clean_lung_mask(m[2]).shape == m[2].shape
    # fill_holes=False: the speck still goes, the hole stays
    open_ = clean_lung_mask(noisy, fill_holes=False)
    assert open_[0, 38, 2] == 0 and open_[3, 15, 15] == 0
    assert np.array_equal(open_ > 0, noisy * (lab > 0) > 0)


def test_clean_lung_mask_min_ratio():
    m = _two_lungs()
    m[1:5, 8:32, 34:54] = 0
    m[2:4, 10:20, 40:50] = 1  # the "left lung" is 2 * 10 * 10 = 200 voxels, 1/9.6 of the right (4*24*20)
    both = clean_lung_mask(m, min_ratio=0.1)  # 200 >= 0.1 * 1920: kept, and split as two lungs
    assert np.count_nonzero(both == 1) == 200 and np.count_nonzero(both == 2) == 1920
    one = clean_lung_mask(m, min_ratio=0.2)  # 200 < 384: dropped as a speck
    assert np.count_nonzero(one) == 1920 and not one[:, :, 34:].any()
    with pytest.raises(ConfigError, match="min_ratio"):
        clean_lung_mask(m, min_ratio=2.0)


def test_fill_holes_matches_scipy_per_slice():
    from scipy import ndimage

    rng = np.random.default_rng(4)
    m = (rng.random((5, 30, 30)) < 0.55).astype(np.uint8)
    expected = np.stack([ndimage.binary_fill_holes(s) for s in m]).astype(np.uint8)
    assert np.array_equal(fill_holes(m), expected)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("min_ratio", [0.0, 0.1, 0.6])
def test_clean_lung_mask_labels_once_and_gives_the_two_step_result(seed, min_ratio):
    """The clean-up reuses the components' labels for the left/right split (one labelling, #24 item 4):
    the same labels as keeping the largest components and then splitting them, on random blobs."""
    from scipy import ndimage

    from lungseg.imaging import clean_lung_mask, largest_components, split_left_right

    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.random((12, 48, 64)), 2.0)
    mask = noise > np.quantile(noise, 0.7 + 0.05 * (seed % 3))
    expected = split_left_right(largest_components(mask, 2, min_ratio=min_ratio), min_ratio=min_ratio)
    got = clean_lung_mask(mask, min_ratio=min_ratio, fill_holes=False)
    np.testing.assert_array_equal(got, expected)
    assert ndimage.label(mask)[1] >= 2 and set(np.unique(got)) == {0, 1, 2}  # several blobs, both sides
