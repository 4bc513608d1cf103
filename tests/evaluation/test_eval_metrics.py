"""lungseg.evaluation.metrics: hand-computed overlap metrics, conventions and analytic surface metrics."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lungseg.errors import ConfigError, DataValidationError
from lungseg.evaluation.metrics import (
    NSD_TOLERANCE_MM,
    confusion,
    dice,
    f1,
    hd95,
    iou,
    normalized_surface_dice,
    precision,
    recall,
    slice_metrics,
    summarize_slices,
    surface_distances,
    volume_metrics,
)

OVERLAP = {"dice": dice, "iou": iou, "precision": precision, "recall": recall, "f1": f1}


# ------------------------------------------------------------------------------------------------
# overlap metrics
# ------------------------------------------------------------------------------------------------
def _known_pair():
    gt = np.zeros((4, 4), np.uint8)
    gt[0, 0:3] = 1
    gt[1, 0:3] = 1  # 6 pixels
    pred = np.zeros((4, 4), bool)
    pred[1, 0:3] = True  # 3 of them
    pred[3, 3] = True  # 1 false positive
    return pred, gt


def test_confusion_and_overlap_metrics_hand_computed():
    pred, gt = _known_pair()
    assert confusion(pred, gt) == (3, 1, 3, 9)
    assert dice(pred, gt) == pytest.approx(6 / 10)
    assert iou(pred, gt) == pytest.approx(3 / 7)
    assert precision(pred, gt) == pytest.approx(3 / 4)
    assert recall(pred, gt) == pytest.approx(3 / 6)
    assert f1(pred, gt) == pytest.approx(2 * 0.75 * 0.5 / (0.75 + 0.5))


def test_metrics_accept_3d_and_label_maps_and_01_floats():
    gt = np.zeros((2, 3, 3), np.uint8)
    gt[0, :2, :2] = 2  # label value 2 still counts as foreground
    pred = gt.astype(np.float32) / 2  # 0/1 floats
    pred[1, 0, 0] = 1.0
    assert confusion(pred, gt) == (4, 1, 0, 13)
    assert dice(pred, gt) == pytest.approx(8 / 9)


def test_both_empty_is_perfect_agreement():
    z = np.zeros((5, 5), np.uint8)
    for name, fn in OVERLAP.items():
        assert fn(z, z) == 1.0, name
        assert fn(z, z, empty_value=0.5) == 0.5, name
    assert confusion(z, z) == (0, 0, 0, 25)


def test_one_empty_gives_zero():
    z = np.zeros((5, 5), np.uint8)
    m = z.copy()
    m[1:3, 1:3] = 1
    # empty prediction, non-empty truth: precision has a zero denominator only for pred -> 0
    for name, fn in OVERLAP.items():
        assert fn(z, m) == 0.0, name
        # non-empty prediction, empty truth: recall has a zero denominator only for gt -> 0
        assert fn(m, z) == 0.0, name


def test_bad_inputs_raise_lungseg_errors():
    with pytest.raises(DataValidationError, match="shape"):
        dice(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(DataValidationError, match="probabilities"):
        dice(np.full((3, 3), 0.7), np.zeros((3, 3)))
    with pytest.raises(DataValidationError, match="spacing"):
        hd95(np.ones((3, 3)), np.ones((3, 3)), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ConfigError):
        normalized_surface_dice(np.ones((3, 3)), np.ones((3, 3)), (1, 1), tolerance_mm=-1)
    with pytest.raises(DataValidationError, match="case 'c7'"):
        volume_metrics(np.ones((2, 2, 2)), np.ones((2, 2, 3)), (1, 1, 1), 1.0, case="c7")


# ------------------------------------------------------------------------------------------------
# per-slice metrics
# ------------------------------------------------------------------------------------------------
def test_slice_metrics_equals_per_slice_calls_and_summary():
    rng = np.random.default_rng(0)
    pred = rng.random((7, 9, 11)) < 0.3
    gt = rng.random((7, 9, 11)) < 0.3
    pred[2] = gt[2] = False  # both empty
    gt[4] = False  # empty gt, non-empty pred
    pred[5] = False  # empty pred, non-empty gt
    df = slice_metrics(pred, gt.astype(np.uint8))
    assert isinstance(df, pd.DataFrame) and len(df) == 7
    for i in range(7):
        for name, fn in OVERLAP.items():
            assert df.loc[i, name] == pytest.approx(fn(pred[i], gt[i])), (i, name)
        assert df.loc[i, "gt_pixels"] == gt[i].sum()
        assert df.loc[i, "pred_pixels"] == pred[i].sum()
    assert df["both_empty"].tolist() == [False, False, True, False, False, False, False]
    assert df.loc[2, "dice"] == 1.0 and df.loc[4, "dice"] == 0.0 and df.loc[5, "recall"] == 0.0

    s = summarize_slices(df)
    assert s["n_slices"] == 7 and s["n_both_empty"] == 1 and s["n_nonempty"] == 5
    nonempty = [i for i in range(7) if gt[i].any()]
    for name, fn in OVERLAP.items():
        assert s[name] == pytest.approx(np.mean([fn(pred[i], gt[i]) for i in range(7)]))
        assert s[f"{name}_nonempty"] == pytest.approx(np.mean([fn(pred[i], gt[i]) for i in nonempty]))
    assert s["dice_global"] == pytest.approx(dice(pred, gt))


def test_slice_metrics_channel_axis_and_hand_values():
    gt = np.zeros((2, 4, 4, 1), np.uint8)
    pred = np.zeros((2, 4, 4, 1), np.uint8)
    gt[0, :2, :3, 0] = 1
    pred[0, 1, :3, 0] = 1
    pred[0, 3, 3, 0] = 1
    df = slice_metrics(pred, gt)
    assert df.loc[0, "dice"] == pytest.approx(0.6)
    assert df.loc[0, "iou"] == pytest.approx(3 / 7)
    assert bool(df.loc[1, "both_empty"]) and df.loc[1, "iou"] == 1.0
    with pytest.raises(DataValidationError):
        slice_metrics(np.zeros((4, 4)), np.zeros((4, 4)))


# ------------------------------------------------------------------------------------------------
# surface metrics
# ------------------------------------------------------------------------------------------------
def _box(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_offset_boxes_anisotropic_hd95_and_nsd(axis):
    """Box 10x8x8 shifted by k=2 voxels along `axis` of spacing s, the other spacings >= 2 s.

    Counted by hand (A's surface: 352 voxels; by symmetry B's is the same):
      * 224 side voxels in the overlapping layers lie on B's surface: distance 0;
      * the 28 side voxels of the layer next to B's end: distance s;
      * the 64 voxels of the far end face, and the 36 interior voxels of the near end face: distance 2 s
        (no surface of B is closer, since the other spacings are >= 2 s).
    So HD95 = 2 s, and NSD = 224/352 for tol < s, 252/352 for s <= tol < 2 s, 1 for tol >= 2 s.
    """
    s = 0.5
    spacing = [2.0, 2.5, 3.0]
    spacing[axis] = s
    dims = [8, 8, 8]
    dims[axis] = 10
    shape = tuple(d + 8 for d in dims)
    a = _box(shape, (2, 2, 2), tuple(2 + d for d in dims))
    b = np.roll(a, 2, axis=axis)
    d_ab, d_ba = surface_distances(a, b, spacing)
    for d in (d_ab, d_ba):
        values, counts = np.unique(np.round(d, 9), return_counts=True)
        assert values.tolist() == [0.0, s, 2 * s]
        assert counts.tolist() == [224, 28, 100]
    assert hd95(a, b, spacing) == pytest.approx(2 * s)
    assert hd95(a, b, spacing, method="pooled") == pytest.approx(2 * s)
    assert normalized_surface_dice(a, b, spacing, 0.4 * s) == pytest.approx(224 / 352)
    assert normalized_surface_dice(a, b, spacing, 1.5 * s) == pytest.approx(252 / 352)
    assert normalized_surface_dice(a, b, spacing, 2 * s) == pytest.approx(1.0)  # d <= tol counts
    # isotropic spacing would give another answer: the spacing really is used per axis
    assert hd95(a, b, (1.0, 1.0, 1.0)) == pytest.approx(2.0)


def test_identical_masks_and_empty_conventions():
    a = _box((6, 7, 8), (1, 1, 1), (5, 6, 6))
    assert hd95(a, a, (2.5, 0.7, 0.7)) == 0.0
    assert normalized_surface_dice(a, a, (2.5, 0.7, 0.7), 0.0) == 1.0
    z = np.zeros_like(a)
    assert hd95(z, z, (1, 1, 1)) == 0.0
    assert normalized_surface_dice(z, z, (1, 1, 1), 1.0) == 1.0
    assert math.isinf(hd95(a, z, (1, 1, 1))) and math.isinf(hd95(z, a, (1, 1, 1)))
    assert normalized_surface_dice(a, z, (1, 1, 1), 5.0) == 0.0
    assert normalized_surface_dice(z, a, (1, 1, 1), 5.0) == 0.0
    d_pg, d_gp = surface_distances(z, a, (1, 1, 1))
    assert d_pg.size == 0 and d_gp.size > 0 and np.all(np.isinf(d_gp))


def test_mask_on_array_border_has_surface_there():
    # a full array: its surface is every border voxel (the outside counts as background)
    a = np.ones((4, 5, 6), bool)
    b = a.copy()
    b[:, :, -1] = False
    d_ab, d_ba = surface_distances(a, b, (1.0, 1.0, 2.0))
    assert d_ab.size == 4 * 5 * 6 - 2 * 3 * 4
    assert d_ab.max() == pytest.approx(2.0)  # the x = 5 face is one x-voxel (2 mm) from b's x = 4 face
    assert hd95(a, b, (1.0, 1.0, 2.0)) == pytest.approx(2.0)


def test_spheres_hd95_is_radius_difference():
    spacing = (1.0, 0.75, 0.6)
    shape = (30, 40, 50)
    zz, yy, xx = np.indices(shape).astype(float)
    c = np.array(shape) / 2
    r = np.sqrt(
        ((zz - c[0]) * spacing[0]) ** 2 + ((yy - c[1]) * spacing[1]) ** 2 + ((xx - c[2]) * spacing[2]) ** 2
    )
    small, large = r <= 7.0, r <= 10.0
    h = hd95(small, large, spacing)
    assert abs(h - 3.0) <= max(spacing)
    assert normalized_surface_dice(small, large, spacing, 3.0 + max(spacing)) == 1.0
    assert normalized_surface_dice(small, large, spacing, 1.0) < 0.05


def _naive_surface_distances(a, b, spacing):
    """Independent brute force: explicit 6-neighbour surface test and all-pairs distances."""

    def surf(m):
        p = np.pad(m, 1)
        inner = np.ones_like(m)
        for axis in range(m.ndim):
            for shift in (-1, 1):
                inner &= np.roll(p, shift, axis=axis)[1:-1, 1:-1, 1:-1]
        return m & ~inner

    pa = np.argwhere(surf(a)) * np.asarray(spacing)
    pb = np.argwhere(surf(b)) * np.asarray(spacing)
    dist = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return dist.min(1), dist.min(0)


def test_surface_distances_match_brute_force_on_random_shapes():
    rng = np.random.default_rng(3)
    spacing = (2.0, 0.9, 0.6)
    for _ in range(3):
        a = rng.random((7, 9, 10)) < 0.35
        b = rng.random((7, 9, 10)) < 0.35
        a[:, :2] = False  # make the crop do some work
        got = surface_distances(a, b, spacing)
        want = _naive_surface_distances(a, b, spacing)
        for g, w in zip(got, want):
            np.testing.assert_allclose(np.sort(g), np.sort(w), atol=1e-9)
        pooled = np.concatenate(want)
        assert hd95(a, b, spacing, method="pooled") == pytest.approx(np.percentile(pooled, 95))
        assert hd95(a, b, spacing) == pytest.approx(max(np.percentile(w, 95) for w in want))
        assert normalized_surface_dice(a, b, spacing, 1.0) == pytest.approx(
            ((want[0] <= 1.0).sum() + (want[1] <= 1.0).sum()) / pooled.size
        )


def test_volume_metrics_one_case():
    spacing = (2.5, 0.8, 0.8)
    gt = _box((12, 12, 12), (1, 2, 2), (11, 10, 10))  # 10 x 8 x 8 = 640 voxels
    pred = np.roll(gt, 1, axis=0).astype(np.uint8)  # shifted one z-slice (2.5 mm)
    m = volume_metrics(pred, gt, spacing, NSD_TOLERANCE_MM["lung"])
    voxel_ml = 2.5 * 0.8 * 0.8 / 1000
    assert m["gt_volume_ml"] == pytest.approx(640 * voxel_ml) == pytest.approx(1.024)
    assert m["pred_volume_ml"] == pytest.approx(1.024)
    assert m["volume_error_ml"] == pytest.approx(0.0)
    assert m["dice"] == pytest.approx(2 * 576 / 1280)
    assert m["iou"] == pytest.approx(576 / 704)
    assert m["precision"] == pytest.approx(576 / 640) and m["recall"] == pytest.approx(576 / 640)
    assert m["hd95"] == pytest.approx(2.5)
    # Within 1 mm: the 9 x 28 coinciding side voxels, plus the 20 voxels of the near end face's interior
    # that touch its edge ring: 0.8 mm in-plane from the other box's side face (the 4 x 4 centre is
    # >= 1.6 mm away and the far end face 2.5 mm). Same count on both sides.
    assert m["nsd"] == pytest.approx((252 + 20) / 352)
    assert volume_metrics(pred, gt, spacing, NSD_TOLERANCE_MM["infection"])["nsd"] == pytest.approx(1.0)
    assert NSD_TOLERANCE_MM == {"lung": 1.0, "infection": 3.0}
