"""The infection model on the whole body (``preprocessing.infection_crop_source: body``), and an infection
margin around the predicted lungs (``infection_margin_mm``).

It sees the context a tight lung box cuts off; its prediction is kept inside the lungs: the predicted
lungs in the combined system (``lungseg predict``), the ground-truth lungs when it is evaluated alone.
The rule model marks the lesion intensity anywhere, so a lesion-like blob in the chest wall shows that
the body crop reached the model and that the lungs were applied afterwards.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from conftest import TINY_PREPROCESSING
from rule_models import band_model
from test_infer_context import LESION_BAND, LESION_HU, LUNG_BAND, SPACING, chest, config, save_models

import lungseg.imaging as imaging
from lungseg import cli
from lungseg.errors import ConfigError
from lungseg.evaluation.evaluate import predict_case
from lungseg.evaluation.metrics import dice
from lungseg.imaging import PreprocessConfig, enhance
from lungseg.inference.loaded_model import LoadedModel
from lungseg.inference.segment import Segmenter, reaching_in
from lungseg.inference.settings import InferenceSettings
from lungseg.limits import load_guard
from lungseg.models.inputs import preprocess_config
from lungseg.volume import from_canonical_array, load_canonical


def chest_with_wall_blob():
    """The 2.5D tests' chest, plus a lesion-intensity blob in the soft tissue outside both lungs."""
    ct, lung, lesion_a, lesion_b = chest()
    size = ct.shape[1]
    yy, xx = np.mgrid[0:size, 0:size]
    wall = ((yy - 0.16 * size) ** 2 + (xx - size / 2) ** 2) < (0.05 * size) ** 2
    assert not (lung[:, wall] > 0).any()
    ct[4:10, wall] = LESION_HU
    return ct, lung, (lesion_a | lesion_b) > 0, wall


def test_the_infection_crop_source_is_recorded_and_checked():
    assert preprocess_config(TINY_PREPROCESSING, "infection").crop_mode == "lung_mask"  # the default
    body = {**TINY_PREPROCESSING, "infection_crop_source": "body"}
    assert preprocess_config(body, "infection").crop_mode == "body"
    assert preprocess_config(body, "lung").crop_mode == "body"
    with pytest.raises(ConfigError, match="infection_crop_source is 'lungs'"):
        preprocess_config({**TINY_PREPROCESSING, "infection_crop_source": "lungs"}, "infection")


def test_predict_uses_the_recorded_body_crop_and_keeps_infection_in_the_lungs(tmp_path, monkeypatch):
    ct, lung, lesion, wall = chest_with_wall_blob()
    src = tmp_path / "chest.nii.gz"
    nib.save(from_canonical_array(ct, SPACING).to_nifti(ct, ct.dtype), str(src))
    models = save_models(tmp_path / "models", 1)
    # 96 px: the body box is larger than the lungs' box, and the rule's 3x3 vote erodes a small lesion at 64
    next((models / "infection_unet" / "model.keras").rglob("model.keras")).unlink()
    band_model(96, *LESION_BAND).save(next((models / "infection_unet" / "model.keras").iterdir()) / "model.keras")
    cfg_path = next((models / "infection_unet" / "model_config.json").rglob("model_config.json"))
    cfg_path.write_text(json.dumps({**config("infection", 96), "crop_mode": "body"}))
    seen = []
    real = imaging.prepare_slices

    def spy(ct_, kind, cfg, lung_mask=None, **kw):
        seen.append(cfg.crop_mode)
        return real(ct_, kind, cfg, lung_mask, **kw)

    monkeypatch.setattr(imaging, "prepare_slices", spy)  # segment.py imports it at each call
    out = tmp_path / "out"
    assert cli.main(["predict", str(src), "-o", str(out), "--models-dir", str(models), "--no-progress"]) == 0
    assert seen and set(seen) == {"body"}  # the lung model's chunks, then the infection model's (lung_mask before)
    pred = load_canonical(nib.load(str(out / "infection_mask.nii.gz"))).array > 0
    assert dice(pred, lesion) > 0.8
    assert not pred[:, wall].any()  # lesion-like, but outside the lungs


def test_evaluating_a_body_cropped_infection_model_keeps_it_in_the_ground_truth_lungs():
    ct, lung, lesion, wall = chest_with_wall_blob()
    cfg = {**config("infection", 96), "crop_mode": "body"}
    image = enhance(ct, "hu", PreprocessConfig.from_dict(cfg))
    model = band_model(96, *LESION_BAND)
    pred = predict_case(model, cfg, image, lung, batch_size=4) > 0
    assert dice(pred, lesion) > 0.8 and not pred[:, wall].any()
    no_lung = lung.copy()
    no_lung[5] = 0
    pred = predict_case(model, cfg, image, no_lung, batch_size=4) > 0
    assert not pred[5].any()  # a slice without lung: nothing predicted, as in the lung-crop protocol


# ----------------------------------------------------------------------------- infection_margin_mm


def test_reaching_in_keeps_the_regions_that_enter_the_lungs_up_to_the_margin():
    outline = np.zeros((3, 40, 40), bool)
    outline[:, 10:30, 10:20] = True
    found = np.zeros_like(outline)
    found[1, 15:20, 16:24] = True  # enters the lungs, 4 px out of them
    found[1, 2:5, 2:5] = True  # near the lungs (within 10 px) but never in them
    found[2, 15:17, 16:36] = True  # enters them, 16 px out: cut at the margin
    kept = reaching_in(found, outline, margin_mm=8.0, spacing_yx=(0.8, 0.8))  # 10 px
    assert kept[1, 15:20, 16:24].all() and not kept[1, 2:5, 2:5].any()
    assert kept[2, 15:17, 16:30].all() and not kept[2, 15:17, 31:].any()
    notch = np.zeros_like(outline)
    notch[0, 12:16, 20:25] = True  # borders the lungs (a notch the lung model cut into their edge)
    notch[0, 20:24, 22:25] = True  # 2 px from them: apart
    kept = reaching_in(notch, outline, 8.0, (0.8, 0.8))
    assert kept[0, 12:16, 20:25].all() and not kept[0, 20:24].any()
    with pytest.raises(ConfigError, match="infection_margin_mm must be a number of mm >= 0"):
        InferenceSettings(guard=load_guard(), infection_margin_mm=-1)


def test_a_margin_keeps_a_consolidation_the_lung_model_cut_off_and_makes_it_lung():
    """A lesion on the lung's outer edge: the lung model (lung intensity) leaves it out, as it leaves out
    consolidation at the lungs' border. Without a margin the infection stops at the lung model's outline;
    with 5 mm the lesion is infection, and lung. (The chest's own lesions are inside the lungs either way.)"""
    ct, lung, lesion_a, lesion_b = chest()
    size = ct.shape[1]
    yy, xx = np.mgrid[0:size, 0:size]
    c = size / 2
    edge_x = c + 0.2 * size + 0.15 * size  # the left lung's outer edge, on its centre row
    lesion = np.zeros_like(lung, bool)
    lesion[3:9] = (((yy - c) ** 2 + (xx - edge_x) ** 2) < (0.07 * size) ** 2) & (lung[0] > 0)
    ct[lesion] = LESION_HU
    models = []
    for task, model, cfg in (("lung", band_model(64, *LUNG_BAND), config("lung", 64)),
                             ("infection", band_model(96, *LESION_BAND), {**config("infection", 96), "crop_mode": "body"})):
        models.append(LoadedModel(model, cfg, task))
    volume = from_canonical_array(ct, SPACING)
    inside = Segmenter.from_models(*models, InferenceSettings(guard=load_guard())).segment(volume, "hu", progress=False)
    margin = Segmenter.from_models(*models, InferenceSettings(guard=load_guard(), infection_margin_mm=5.0)).segment(
        volume, "hu", progress=False)
    def recall(seg):
        return (seg.infection[lesion] > 0).mean()

    assert recall(inside) < 0.2  # outside the lung model's outline
    assert recall(margin) > 0.8
    added = (margin.infection > 0) & ~(inside.infection > 0)
    from scipy import ndimage

    near_lesions = ndimage.binary_dilation(lesion | (lesion_a > 0) | (lesion_b > 0), iterations=2)
    assert not (added & ~near_lesions).any()  # it added nothing away from the lesions
    assert (margin.lung_labels[margin.infection > 0] > 0).all()  # and it is lung now
    assert dice(margin.lung_labels > 0, lung > 0) > dice(inside.lung_labels > 0, lung > 0)


def test_the_margin_is_an_option_of_lungseg_predict_and_of_the_inference_parameters(capsys):
    from lungseg.cli import build_parser
    from lungseg.cli_predict import _settings
    from lungseg.limits import inference_parameters

    args = build_parser().parse_args(["predict", "ct.nii.gz", "-o", "out", "--infection-margin", "7.5"])
    assert _settings(args, load_guard()).infection_margin_mm == 7.5
    assert _settings(build_parser().parse_args(["predict", "ct.nii.gz", "-o", "out"]), load_guard()).infection_margin_mm == 0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "ct.nii.gz", "-o", "out", "--infection-margin", "-2"])
    assert "invalid margin '-2': give a number of mm >= 0" in capsys.readouterr().err
    params = inference_parameters()
    assert params["infection_margin_mm"] == 0  # conf/base
    assert InferenceSettings.from_params({**params, "infection_margin_mm": 12}).infection_margin_mm == 12.0
