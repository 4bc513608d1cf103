"""`lungseg predict` with a tiny U-Net trained here, on a phantom that no flip or transpose maps onto itself.

The suite's other phantoms are symmetric in z (and square), so a z flip or an x/y transpose on the way
back to the file's grid would pass them. This one has a lesion in the upper slices of the left lung
only, lungs set towards the back, a dense marker in front, a non-square grid (12 x 56 x 80), an
anisotropic voxel (2.5, 0.7, 0.9 mm), and is stored permuted and z-flipped (axis codes P, I, L). The
ground truth is written with nibabel on the very same stored grid, and the outputs are compared with it
array to array, with no lungseg code in between.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from hardening_helpers import VERSION, band_model, model_config, predict, save_versioned, unit

from lungseg.evaluation.metrics import dice
from lungseg.volume import from_canonical_array

SHAPE = (12, 56, 80)  # canonical (z, y, x)
SPACING = (2.5, 0.7, 0.9)  # (sz, sy, sx) mm
#: file axis 0 = canonical y (P), axis 1 = canonical z reversed (I), axis 2 = canonical x (L)
STORED = ("P", "I", "L")
LUNG_HU, LESION_HU, BODY_HU, AIR_HU, MARKER_HU = -850, -300, 40, -1000, 700
UPPER = 8  # the lesion is in slices z >= UPPER only (towards the head)


def asymmetric_phantom(seed: int):
    """(ct, lung labels 1 left / 2 right, infection) in canonical (z, y, x)."""
    rng = np.random.default_rng(seed)
    z, h, w = SHAPE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = h / 2 + rng.uniform(-1, 1), w / 2 + rng.uniform(-2, 2)
    body = ((yy - cy) / (0.44 * h)) ** 2 + ((xx - cx) / (0.46 * w)) ** 2 < 1
    marker = ((yy - (cy - 0.34 * h)) / 2.5) ** 2 + ((xx - cx) / 4.0) ** 2 < 1  # anterior: small row index
    ct = np.full(SHAPE, AIR_HU, np.float32)
    lung = np.zeros(SHAPE, np.uint8)
    inf = np.zeros(SHAPE, np.uint8)
    for k in range(z):
        ct[k][body] = BODY_HU
        ct[k][marker] = MARKER_HU
        scale = np.sqrt(max(0.0, 1 - (((k + 0.5) / z - 0.5) / 0.5) ** 2))
        for label, x0 in ((1, cx + 0.2 * w), (2, cx - 0.2 * w)):  # left lung at the larger column
            m = ((yy - (cy + 0.06 * h)) / (0.26 * h * scale + 1e-6)) ** 2 + (
                (xx - x0) / (0.13 * w * scale + 1e-6)
            ) ** 2 < 1
            ct[k][m] = LUNG_HU
            lung[k][m] = label
        if k >= UPPER:
            blob = (((yy - cy - 0.06 * h) / 5) ** 2 + ((xx - cx - 0.2 * w) / 4) ** 2 < 1) & (lung[k] == 1)
            ct[k][blob] = LESION_HU
            inf[k][blob] = 1
    ct += rng.normal(0, 15, SHAPE).astype(np.float32)
    return np.clip(np.round(ct), -1024, 3000).astype(np.int16), lung, inf


def stored(arr_zyx: np.ndarray) -> nib.Nifti1Image:
    """The canonical array as a NIfTI on the stored (permuted, z-flipped) grid, by nibabel alone."""
    img = from_canonical_array(arr_zyx, SPACING).to_nifti(arr_zyx, arr_zyx.dtype)
    ornt = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(img.affine), nib.orientations.axcodes2ornt(STORED)
    )
    return img.as_reoriented(ornt)


@pytest.fixture(scope="module")
def trained_models(tmp_path_factory):
    """A lung U-Net (32 px, base 4, depth 2) trained here on phantoms of other seeds; a band model for lesions."""
    import keras

    from lungseg.imaging import PreprocessConfig, prepare_masks, prepare_slices, to_unit_float
    from lungseg.models import build_model, compile_model

    keras.utils.set_random_seed(0)
    config = model_config("lung", 32)
    xs, ys = [], []
    for seed in range(4):
        ct, lung, _ = asymmetric_phantom(10 + seed)
        images, records = prepare_slices(ct, "hu", PreprocessConfig.from_dict(config))
        xs.append(images)
        ys.append(prepare_masks(lung > 0, records))
    x = to_unit_float(np.concatenate(xs))[..., None]
    y = np.concatenate(ys)[..., None].astype(np.float32)
    # BatchNorm momentum 0.9: with 0.99 the moving statistics lag behind in a run this short (docs/architecture.md)
    model = compile_model(
        build_model("unet", 32, {"base_filters": 4, "depth": 2, "bn_momentum": 0.9}), "bce_dice", 1e-2
    )
    model.fit(x, y, batch_size=8, epochs=40, verbose=0)
    root = tmp_path_factory.mktemp("asym_models")
    save_versioned(root, "lung", model, config)
    save_versioned(
        root, "infection", band_model(64, unit(LESION_HU) - 0.08, unit(LESION_HU) + 0.08), model_config("infection", 64)
    )
    assert (root / "lung_unet" / "model.keras" / VERSION / "model.keras").is_file()
    return root


def test_predict_writes_labels_on_the_stored_grid_of_an_asymmetric_permuted_flipped_input(
    tmp_path, trained_models, capsys
):
    ct, lung, inf = asymmetric_phantom(seed=100)
    src_img = stored(ct)
    assert nib.aff2axcodes(src_img.affine) == STORED and src_img.shape == (56, 12, 80)
    nib.save(src_img, str(tmp_path / "chest.nii.gz"))
    nib.save(stored(lung), str(tmp_path / "gt_lung.nii.gz"))
    nib.save(stored(inf), str(tmp_path / "gt_infection.nii.gz"))

    out = tmp_path / "out"
    code, _ = predict(tmp_path / "chest.nii.gz", out, trained_models)
    assert code == 0, capsys.readouterr().err

    gt_lung = np.asarray(nib.load(str(tmp_path / "gt_lung.nii.gz")).dataobj)
    gt_inf = np.asarray(nib.load(str(tmp_path / "gt_infection.nii.gz")).dataobj)
    pred_img = nib.load(str(out / "lung_mask.nii.gz"))
    inf_img = nib.load(str(out / "infection_mask.nii.gz"))
    for img in (pred_img, inf_img):
        assert img.shape == src_img.shape
        np.testing.assert_allclose(img.affine, src_img.affine, atol=1e-5)
    pred = np.asarray(pred_img.dataobj)
    pred_inf = np.asarray(inf_img.dataobj)
    assert dice(pred == 1, gt_lung == 1) > 0.85  # left stays left
    assert dice(pred == 2, gt_lung == 2) > 0.85
    assert dice(pred_inf > 0, gt_inf > 0) > 0.6
    # the stored axis 1 runs from the head down: the lesion's stored slices are the first ones
    lesion_slices = np.flatnonzero(pred_inf.any(axis=(0, 2)))
    assert lesion_slices.size and lesion_slices.max() < SHAPE[0] - UPPER
    # a flipped or transposed write-back would score far lower against the same ground truth
    assert dice(np.flip(pred, 1) == 1, gt_lung == 1) < 0.85 or dice(np.flip(pred_inf, 1) > 0, gt_inf > 0) < 0.3
    report = json.loads((out / "report.json").read_text())
    assert report["spacing_mm"] == pytest.approx(list(SPACING), rel=1e-5)
    assert report["infection_volume_ml"]["right"] == 0 and report["infection_volume_ml"]["left"] > 0
    assert report["implausible_input"] is None
