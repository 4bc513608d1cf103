"""SliceSequence: the training input pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from lungseg.errors import ConfigError, DataValidationError
from lungseg.models import SliceSequence


def _data(n=10, s=32, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, s, s), dtype=np.uint8)
    masks = np.zeros((n, s, s), np.uint8)
    masks[:, 8:20, 10:24] = 1
    images[:, 0, 0] = np.arange(n)  # slice id in a corner, to follow slices through batches
    return images, masks


def test_batches_shapes_dtypes_and_range():
    images, masks = _data()
    seq = SliceSequence(images, masks, batch_size=4, augment=None, shuffle=False, seed=0)
    assert len(seq) == 3
    x, y = seq[0]
    assert x.shape == (4, 32, 32, 1) and y.shape == (4, 32, 32, 1)
    assert x.dtype == np.float32 and y.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_allclose(x[..., 0], images[:4] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y[..., 0], masks[:4])
    assert seq[2][0].shape == (2, 32, 32, 1)  # last, partial batch
    with pytest.raises(IndexError):
        seq[3]


def _ids(seq):
    return np.concatenate([np.rint(seq[i][0][:, 0, 0, 0] * 255).astype(int) for i in range(len(seq))])


def test_shuffle_is_a_permutation_deterministic_per_seed_and_changes_each_epoch():
    images, masks = _data()
    a = SliceSequence(images, masks, 4, None, shuffle=True, seed=7)
    b = SliceSequence(images, masks, 4, None, shuffle=True, seed=7)
    c = SliceSequence(images, masks, 4, None, shuffle=True, seed=8)
    order_a0 = _ids(a)
    assert sorted(order_a0) == list(range(10))
    np.testing.assert_array_equal(order_a0, _ids(b))
    assert not np.array_equal(order_a0, _ids(c))
    a.on_epoch_end()
    order_a1 = _ids(a)
    assert sorted(order_a1) == list(range(10)) and not np.array_equal(order_a0, order_a1)
    b.set_epoch(1)  # what fit does on a resume
    np.testing.assert_array_equal(order_a1, _ids(b))


def test_oversampling_draws_slices_by_lesion_extent_deterministically():
    from lungseg.models.data import extent_weights

    images, masks = _data(n=6)
    masks[:] = 0
    masks[1, :4, :8] = 1            # 32 px
    masks[2, :8, :8] = 1            # 64 px: twice slice 1's extent
    w = extent_weights(masks, 2.0)  # mean extent of the lesion slices: 48 px
    np.testing.assert_allclose(w, [1, 1 + 2 * 32 / 48, 1 + 2 * 64 / 48, 1, 1, 1])
    assert extent_weights(masks, 0) is None and extent_weights(np.zeros_like(masks), 2.0) is None
    with pytest.raises(ConfigError, match="oversampling strength must be >= 0"):
        extent_weights(masks, -1)

    a = SliceSequence(images, masks, 3, None, shuffle=True, seed=3, sample_weights=[0, 1, 3, 0, 0, 0])
    b = SliceSequence(images, masks, 3, None, shuffle=True, seed=3, sample_weights=[0, 1, 3, 0, 0, 0])
    order = _ids(a)
    assert len(order) == 6 and set(order) <= {1, 2}  # an epoch is still N slices, drawn by weight
    np.testing.assert_array_equal(order, _ids(b))
    many = SliceSequence(np.repeat(images, 50, axis=0), np.repeat(masks, 50, axis=0), 100, None, shuffle=True,
                         seed=0, sample_weights=np.repeat(w, 50))
    drawn = np.bincount(many._order // 50, minlength=6)  # which original slice each draw is
    assert drawn[2] > drawn[1] > drawn[0]  # the most extensive lesion most often, an empty slice least
    with pytest.raises(DataValidationError, match="sample_weights must be 6 finite non-negative"):
        SliceSequence(images, masks, 3, None, shuffle=True, seed=0, sample_weights=[1, 2])
    with pytest.raises(DataValidationError, match="not all zero"):
        SliceSequence(images, masks, 3, None, shuffle=True, seed=0, sample_weights=np.zeros(6))


def test_augmentation_deterministic_keeps_binary_masks_and_never_stores():
    images, masks = _data()
    original = images.copy(), masks.copy()
    params = {"hflip": True, "rotation_deg": 25, "scale_min": 0.8, "scale_max": 1.2, "p": 1.0}
    a = SliceSequence(images, masks, 5, params, shuffle=True, seed=3)
    b = SliceSequence(images, masks, 5, params, shuffle=True, seed=3)
    xa, ya = a[1]
    xb, yb = b[1]
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
    assert set(np.unique(ya)) <= {0.0, 1.0}
    assert ya.sum() > 0 and 0.0 <= xa.min() and xa.max() <= 1.0
    plain = SliceSequence(images, masks, 5, None, shuffle=True, seed=3)
    assert not np.array_equal(plain[1][1], ya)  # the masks really were transformed
    a.on_epoch_end()
    assert not np.array_equal(a[1][1], ya)  # fresh draws each epoch
    np.testing.assert_array_equal(images, original[0])
    np.testing.assert_array_equal(masks, original[1])
    off = SliceSequence(images, masks, 5, {"enabled": False}, shuffle=False, seed=3)
    assert off.augment is None


def test_bad_inputs_are_refused_with_a_clear_error():
    images, masks = _data()
    with pytest.raises(DataValidationError, match="uint8"):
        SliceSequence(images.astype(np.float32), masks, 4, None, False, 0)
    with pytest.raises(DataValidationError, match="masks shape"):
        SliceSequence(images, masks[:5], 4, None, False, 0)
    with pytest.raises(DataValidationError, match="binary"):
        SliceSequence(images, masks * 2, 4, None, False, 0)
    with pytest.raises(ConfigError, match="batch_size"):
        SliceSequence(images, masks, 0, None, False, 0)
    with pytest.raises(ConfigError, match="scale_min"):
        SliceSequence(images, masks, 4, {"scale_min": 1.5, "scale_max": 1.0}, False, 0)
    with pytest.raises(DataValidationError, match="paint_regions shape"):
        SliceSequence(images, masks, 4, {"paint": 1.0}, False, 0, paint_regions=masks[:5])
