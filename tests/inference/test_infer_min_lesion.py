"""Infection regions under a volume dropped (``infection_min_lesion_mm3``, #25 item 9): the Segmenter's option,
as ``lungseg predict --min-lesion``, the inference parameters and the combined cross-validation read it."""

from __future__ import annotations

import numpy as np
import pytest
from rule_models import band_model
from test_infer_context import LESION_BAND, LESION_HU, LUNG_BAND, SPACING, chest, config

from lungseg.errors import ConfigError
from lungseg.inference.loaded_model import LoadedModel
from lungseg.inference.segment import Segmenter, drop_small_lesions
from lungseg.inference.settings import InferenceSettings
from lungseg.limits import load_guard
from lungseg.volume import from_canonical_array


def test_regions_under_the_volume_are_dropped_by_their_size_in_mm3():
    found = np.zeros((4, 20, 20), bool)
    found[1, 2:4, 2:4] = True          # 4 voxels
    found[1:3, 10:15, 10:15] = True    # 50 voxels over two slices: one region in 3D
    found[3, 18, 18] = True            # 1 voxel
    kept = drop_small_lesions(found, 10.0, (2.0, 1.0, 1.0))  # 2 mm³ a voxel: 5 voxels at least
    assert kept[1:3, 10:15, 10:15].all() and kept.sum() == 50
    # the same voxels, larger: 4 voxels of 8 mm³ are 32 mm³, kept at 30
    kept = drop_small_lesions(found, 30.0, (2.0, 2.0, 2.0))
    assert kept[1, 2:4, 2:4].all() and not kept[3, 18, 18] and kept.sum() == 54
    np.testing.assert_array_equal(drop_small_lesions(found, 0.5, (1.0, 1.0, 1.0)), found)  # under one voxel
    diagonal = np.zeros((2, 5, 5), bool)
    diagonal[0, 1, 1] = diagonal[1, 2, 2] = True  # touch only at a corner: two regions (6-connected)
    assert not drop_small_lesions(diagonal, 2.0, (1.0, 1.0, 1.0)).any()


def test_the_segmenter_drops_a_speck_and_keeps_the_lesions():
    """A speck of lesion intensity (3 x 3 voxels on one slice, 14.4 mm³) in a lung: found without the option,
    gone with 20 mm³; the chest's two lesions (far larger) stay."""
    ct, lung, lesion_a, lesion_b = chest()
    speck = np.zeros_like(lung, bool)
    ys, xs = np.nonzero(lung[11] == 2)
    y, x = int(np.median(ys)), int(np.median(xs))
    speck[11, y - 1:y + 2, x - 1:x + 2] = True
    ct[speck] = LESION_HU
    models = [LoadedModel(band_model(64, *LUNG_BAND), config("lung", 64), "lung"),
              LoadedModel(band_model(64, *LESION_BAND), config("infection", 64), "infection")]
    volume = from_canonical_array(ct, SPACING)

    def run(**settings):
        return Segmenter.from_models(*models, InferenceSettings(guard=load_guard(), **settings)).segment(
            volume, "hu", progress=False).infection > 0

    every, small_dropped = run(), run(infection_min_lesion_mm3=20.0)
    assert every[speck].any() and not small_dropped[speck].any()
    lesions = (lesion_a > 0) | (lesion_b > 0)
    assert small_dropped[lesions].mean() == every[lesions].mean() > 0.5  # the lesions are kept as found
    np.testing.assert_array_equal(small_dropped, every & ~speck_region(every, speck))


def speck_region(found: np.ndarray, speck: np.ndarray) -> np.ndarray:
    """The connected region of ``found`` that holds the speck."""
    from scipy import ndimage

    labels, _ = ndimage.label(found)
    return np.isin(labels, np.unique(labels[speck & found]))


def test_the_option_of_lungseg_predict_the_parameters_and_its_refusals(capsys):
    from lungseg.cli import build_parser
    from lungseg.cli_predict import _settings
    from lungseg.limits import inference_parameters

    args = build_parser().parse_args(["predict", "ct.nii.gz", "-o", "out", "--min-lesion", "25"])
    assert _settings(args, load_guard()).infection_min_lesion_mm3 == 25.0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "ct.nii.gz", "-o", "out", "--min-lesion", "-1"])
    assert "invalid lesion volume '-1': give a number of mm³ >= 0" in capsys.readouterr().err
    params = inference_parameters()
    assert params["infection_min_lesion_mm3"] == 0  # conf/base
    assert InferenceSettings.from_params({**params, "infection_min_lesion_mm3": 8}).infection_min_lesion_mm3 == 8.0
    with pytest.raises(ConfigError, match="infection_min_lesion_mm3 must be a volume in mm³ >= 0"):
        InferenceSettings(guard=load_guard(), infection_min_lesion_mm3=-3)
