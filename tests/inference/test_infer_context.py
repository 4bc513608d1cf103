"""2.5D models (``context`` 3: each slice with its neighbours as channels) through ``lungseg predict``.

The infection model is a rule model that marks the lesion intensity only where it holds in all three
stacked slices, so what it finds shows which slices the CLI stacked: a lesion on 6 consecutive slices
loses its two end slices, and a lesion on a single slice disappears. A 2D copy of the same rule marks both.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from rule_models import WINDOW, band_model, stack_band_model, unit

from lungseg import cli
from lungseg.evaluation.metrics import dice
from lungseg.volume import from_canonical_array, load_canonical

SPACING = (2.5, 0.8, 0.8)
LUNG_HU, LESION_HU, BODY_HU, AIR_HU = -850, -300, 40, -1000
VERSION = "2025-06-01T12.00.00.000Z"
LUNG_BAND = (unit(LUNG_HU) - 0.05, unit(LUNG_HU) + 0.06)
LESION_BAND = (unit(LESION_HU) - 0.08, unit(LESION_HU) + 0.08)


def chest(z=14, size=64, seed=0):
    """Two lungs on every slice; lesion A (left lung) on slices 4-9, lesion B (right lung) on slice 6 only."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = size / 2
    body = ((yy - c) / (0.40 * size)) ** 2 + ((xx - c) / (0.45 * size)) ** 2 < 1
    ct = np.full((z, size, size), AIR_HU, np.float32)
    lung = np.zeros((z, size, size), np.uint8)
    for label, x0 in ((1, c + 0.2 * size), (2, c - 0.2 * size)):
        m = ((yy - c) / (0.27 * size)) ** 2 + ((xx - x0) / (0.15 * size)) ** 2 < 1
        lung[:, m] = label
    ct[:, body] = BODY_HU
    ct[lung > 0] = LUNG_HU
    blob_a = ((yy - c) ** 2 + (xx - (c + 0.2 * size)) ** 2) < (0.07 * size) ** 2
    blob_b = ((yy - c) ** 2 + (xx - (c - 0.2 * size)) ** 2) < (0.07 * size) ** 2
    lesion_a, lesion_b = np.zeros_like(lung), np.zeros_like(lung)
    lesion_a[4:10, blob_a] = 1
    lesion_b[6, blob_b] = 1
    ct[(lesion_a | lesion_b) > 0] = LESION_HU
    ct += rng.normal(0, 15, ct.shape).astype(np.float32)
    return np.clip(np.round(ct), -1024, 3000).astype(np.int16), lung, lesion_a, lesion_b


def config(task, size, **extra):
    return {"task": task, "architecture": "unet", "image_size": size,
            "crop_mode": "body" if task == "lung" else "lung_mask", "window": list(WINDOW),
            "clahe_clip_limit": 0.0, "clahe_tile_grid": 4, "crop_margin": 2, "threshold": 0.5, **extra}


def save_models(root, context):
    for task, model, cfg in (
        ("lung", band_model(64, *LUNG_BAND), config("lung", 64)),
        ("infection", stack_band_model(64, *LESION_BAND, context) if context > 1 else band_model(64, *LESION_BAND),
         config("infection", 64, context=context)),
    ):
        path = root / f"{task}_unet" / "model.keras" / VERSION / "model.keras"
        path.parent.mkdir(parents=True)
        model.save(path)
        cfg_path = root / f"{task}_unet" / "model_config.json" / VERSION / "model_config.json"
        cfg_path.parent.mkdir(parents=True)
        cfg_path.write_text(json.dumps(cfg))
    return root


def predict_infection(tmp_path, context):
    ct, lung, lesion_a, lesion_b = chest()
    src = tmp_path / "chest.nii.gz"
    nib.save(from_canonical_array(ct, SPACING).to_nifti(ct, ct.dtype), str(src))
    models = save_models(tmp_path / f"models{context}", context)
    out = tmp_path / f"out{context}"
    assert cli.main(["predict", str(src), "-o", str(out), "--models-dir", str(models), "--no-progress"]) == 0
    pred = load_canonical(nib.load(str(out / "infection_mask.nii.gz"))).array > 0
    return pred, lung, lesion_a, lesion_b


def test_a_25d_model_sees_the_neighbouring_slices_through_the_cli(tmp_path):
    pred, lung, lesion_a, lesion_b = predict_infection(tmp_path, 3)
    inner = lesion_a.copy()
    inner[[4, 9]] = 0  # the end slices have a lesion-free neighbour
    assert dice(pred, inner > 0) > 0.8
    assert pred[[4, 9]].sum() <= 0.05 * lesion_a[4].sum()
    assert pred[lesion_b > 0].sum() <= 0.05 * lesion_b.sum()  # one slice only: not in all three channels
    assert not pred[:4].any() and not pred[10:].any()


def test_the_same_rule_in_2d_marks_every_lesion_slice(tmp_path):
    pred, _, lesion_a, lesion_b = predict_infection(tmp_path, 1)
    assert dice(pred, (lesion_a | lesion_b) > 0) > 0.8


def test_a_model_whose_channels_disagree_with_its_context_is_refused(tmp_path, capsys):
    ct, *_ = chest()
    src = tmp_path / "chest.nii.gz"
    nib.save(from_canonical_array(ct, SPACING).to_nifti(ct, ct.dtype), str(src))
    models = save_models(tmp_path / "models", 3)
    cfg_path = next((models / "infection_unet" / "model_config.json").rglob("model_config.json"))
    cfg_path.write_text(json.dumps(config("infection", 64, context=5)))
    rc = cli.main(["predict", str(src), "-o", str(tmp_path / "out"), "--models-dir", str(models), "--no-progress"])
    assert rc != 0
    err = capsys.readouterr().err
    assert "3 channel(s)" in err and "context 5" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("context", [3, 5])
def test_context_stacks_in_the_imaging_pipeline(context):
    from lungseg.imaging import PreprocessConfig, context_neighbours, crop_and_resize, slice_breaks

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (1, 40, 40)).astype(np.float32)
    vol = np.concatenate([base + rng.normal(0, 3, (6, 40, 40)),  # one run of 6 similar slices
                          rng.integers(0, 255, (1, 40, 40)) + rng.normal(0, 3, (5, 40, 40))])  # then another
    vol = np.clip(vol, 0, 255).astype(np.uint8)
    breaks = slice_breaks(vol)
    assert breaks.tolist() == [False] * 5 + [True] + [False] * 4
    nb = context_neighbours(11, context, breaks)
    r = context // 2
    assert nb[0].tolist() == [0] * (r + 1) + list(range(1, r + 1))  # the volume's start repeats slice 0
    assert nb[5].tolist() == list(range(5 - r, 6)) + [5] * r  # the break repeats the run's last slice
    assert nb[6].tolist() == [6] * (r + 1) + list(range(7, 7 + r))
    cfg = PreprocessConfig(image_size=16, crop_mode="body", clahe_clip_limit=0.0, context=context)
    stacks, recs = crop_and_resize(vol, cfg)
    flat, flat_recs = crop_and_resize(vol, PreprocessConfig(image_size=16, crop_mode="body", clahe_clip_limit=0.0))
    assert stacks.shape == (11, 16, 16, context) and flat.shape == (11, 16, 16)
    np.testing.assert_array_equal(stacks[..., r], flat)  # the middle channel is the 2D input
    sub, _ = crop_and_resize(vol, cfg, index=np.array([2, 7]))
    np.testing.assert_array_equal(sub, stacks[[2, 7]])  # a subset still takes its neighbours from the volume
    with pytest.raises(Exception, match="odd"):
        PreprocessConfig(context=2)


@pytest.mark.parametrize("context", [3, 5])
def test_augmentation_moves_every_slice_of_a_stack_alike(context):
    from lungseg.imaging import AugmentParams, augment_batch
    from lungseg.models import SliceSequence

    rng = np.random.default_rng(1)
    plane = rng.integers(0, 255, (2, 24, 24)).astype(np.uint8)
    stacks = np.repeat(plane[..., None], context, axis=-1)  # every channel the same slice
    masks = (plane > 128).astype(np.uint8)
    params = AugmentParams(hflip=True, rotation_deg=20.0, scale_min=0.9, scale_max=1.1)
    out_s, out_m = augment_batch(stacks, masks, np.random.default_rng(5), params)
    out_p, out_pm = augment_batch(plane, masks, np.random.default_rng(5), params)  # the same draws in 2D
    for c in range(context):
        np.testing.assert_array_equal(out_s[..., c], out_p)
    np.testing.assert_array_equal(out_m, out_pm)
    x, y = SliceSequence(stacks, masks, 2, None, shuffle=False, seed=0)[0]
    assert x.shape == (2, 24, 24, context) and y.shape == (2, 24, 24, 1)
