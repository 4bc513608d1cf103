"""lungseg.imaging.masks: bounding box, largest components, hole filling, small-object removal.

Every expectation below is counted by hand on the small arrays drawn in the test.
"""

from __future__ import annotations

import numpy as np
import pytest

from lungseg.errors import ConfigError, DataValidationError
from lungseg.imaging import (
    bounding_box,
    clear_border_2d,
    fill_holes_2d,
    fill_holes_3d,
    label_components,
    largest_components,
    remove_small_objects,
)


def _blobs() -> np.ndarray:
    """A 7 x 9 image with three 4-connected blobs of 6, 4 and 1 pixels::

        . . . . . . . . .
        . A A A . . . . .
        . A A A . . B B .
        . . . . . . B B .
        . . . . . . . . .
        . . . C . . . . .
        . . . . . . . . .
    """
    m = np.zeros((7, 9), np.uint8)
    m[1:3, 1:4] = 1  # A: 6
    m[2:4, 6:8] = 1  # B: 4
    m[5, 3] = 1  # C: 1
    return m


def test_bounding_box_2d_3d_empty_and_label_values():
    assert bounding_box(_blobs()) == (slice(1, 6), slice(1, 8))
    v = np.zeros((4, 5, 6), np.int16)
    v[2, 1, 4] = 7
    v[3, 3, 2] = -1  # any non-zero value is foreground
    assert bounding_box(v) == (slice(2, 4), slice(1, 4), slice(2, 5))
    assert bounding_box(np.zeros((3, 3), bool)) is None
    assert bounding_box(np.ones(5, bool)) == (slice(0, 5),)
    with pytest.raises(DataValidationError, match="scalar"):
        bounding_box(np.uint8(1))


def test_label_components_sizes_and_connectivity():
    labels, sizes = label_components(_blobs())
    assert labels.shape == (7, 9)
    assert sizes.tolist() == [0, 6, 4, 1]  # raster order: A, B, C
    diag = np.eye(3, dtype=np.uint8)
    assert label_components(diag, connectivity=1)[1].tolist() == [0, 1, 1, 1]
    assert label_components(diag, connectivity=2)[1].tolist() == [0, 3]
    with pytest.raises(ConfigError, match="connectivity"):
        label_components(diag, connectivity=3)


def test_largest_components_k_and_min_size():
    m = _blobs()
    one = largest_components(m, 1)
    assert one.dtype == np.uint8
    assert one.sum() == 6 and one[1:3, 1:4].all()
    two = largest_components(m, 2)
    assert two.sum() == 10 and two[5, 3] == 0
    assert np.array_equal(largest_components(m), m)  # k None: all components
    assert largest_components(m, 3, min_size=4).sum() == 10  # C (1 px) is too small
    assert largest_components(m, 0).sum() == 0
    assert largest_components(np.zeros((4, 4)), 2).sum() == 0


def test_largest_components_min_ratio_is_relative_to_the_largest():
    m = _blobs()
    # B holds 4/6 = 0.667 of A; C holds 1/6 = 0.167.
    assert largest_components(m, 3, min_ratio=0.6).sum() == 10
    assert largest_components(m, 3, min_ratio=0.7).sum() == 6
    assert largest_components(m, 3, min_ratio=1 / 6).sum() == 11  # exactly at the ratio: kept
    assert largest_components(m, 1, min_ratio=1.0).sum() == 6  # the largest is always kept
    with pytest.raises(ConfigError, match="min_ratio"):
        largest_components(m, 2, min_ratio=1.5)
    with pytest.raises(ConfigError, match="k "):
        largest_components(m, -1)


def test_largest_components_3d_connectivity_and_ties():
    v = np.zeros((3, 4, 4), np.uint8)
    v[0, 0, 0] = v[1, 1, 1] = v[2, 2, 2] = 1  # touching only by corners
    v[0, 3, 3] = 1
    # faces: four 1-voxel components; corners (26-neighbours): the diagonal is one of 3 voxels
    assert largest_components(v, 1, connectivity=1).sum() == 1
    assert largest_components(v, 1, connectivity=3).sum() == 3
    # ties go to the component that comes later in raster order: (0, 3, 3) before (1, 1, 1), ...
    tie = largest_components(v, 1, connectivity=1)
    assert tie[2, 2, 2] == 1
    structure = np.zeros((3, 3, 3), bool)
    structure[1, 1, 1] = structure[0, 0, 0] = structure[2, 2, 2] = True
    assert largest_components(v, 1, structure=structure).sum() == 3


def test_remove_small_objects():
    m = _blobs()
    assert remove_small_objects(m, 4).sum() == 10
    assert remove_small_objects(m, 5).sum() == 6
    assert np.array_equal(remove_small_objects(m, 0), m)
    assert remove_small_objects(m, 7).sum() == 0


def test_fill_holes_2d_per_slice_and_4_connectivity():
    ring = np.zeros((7, 7), np.uint8)
    ring[1:6, 1:6] = 1
    ring[2:5, 2:5] = 0  # a 3 x 3 hole
    filled = fill_holes_2d(ring)
    assert filled.dtype == np.uint8 and filled.sum() == 25
    # a hole that touches the outside only diagonally is still a hole (background is 4-connected)
    corner = ring.copy()
    corner[1, 1] = 0
    assert fill_holes_2d(corner).sum() == 24
    # per slice: a stack of a ring and an open ring (a gap in its wall)
    open_ring = ring.copy()
    open_ring[3, 1] = 0
    vol = np.stack([ring, open_ring])
    out = fill_holes_2d(vol)
    assert out[0].sum() == 25 and out[1].sum() == open_ring.sum() == 15
    with pytest.raises(DataValidationError, match=r"\(H, W\)"):
        fill_holes_2d(np.zeros(5))


def test_fill_holes_3d_needs_a_closed_shell():
    shell = np.zeros((5, 5, 5), np.uint8)
    shell[1:4, 1:4, 1:4] = 1
    shell[2, 2, 2] = 0  # an enclosed cavity
    assert fill_holes_3d(shell).sum() == 27
    # a 2D hole in every slice of a tube open at both ends is not a 3D hole
    tube = np.zeros((3, 5, 5), np.uint8)
    tube[:, 1:4, 1:4] = 1
    tube[:, 2, 2] = 0
    assert fill_holes_3d(tube).sum() == 24
    assert fill_holes_2d(tube).sum() == 27


def test_clear_border_2d_drops_components_touching_the_slice_edge():
    v = np.zeros((2, 6, 6), np.uint8)
    v[0, 0:2, 0:2] = 1  # touches the border of slice 0
    v[0, 3:5, 3:5] = 1  # inside
    v[1, 2:4, 2:4] = 1  # inside
    v[1, 5, 1:3] = 1  # touches the bottom edge of slice 1
    out = clear_border_2d(v)
    assert out.dtype == np.uint8
    assert out[0].sum() == 4 and out[0, 3:5, 3:5].all()
    assert out[1].sum() == 4 and out[1, 2:4, 2:4].all()
    with pytest.raises(DataValidationError, match=r"\(Z, H, W\)"):
        clear_border_2d(v[0])
