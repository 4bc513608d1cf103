"""The infection model on the whole body (``preprocessing.infection_crop_source: body``).

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
from test_infer_context import LESION_BAND, LESION_HU, SPACING, chest, config, save_models

import lungseg.imaging as imaging
from lungseg import cli
from lungseg.errors import ConfigError
from lungseg.evaluation.evaluate import predict_case
from lungseg.evaluation.metrics import dice
from lungseg.imaging import PreprocessConfig, enhance
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
