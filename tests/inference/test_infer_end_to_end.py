"""End to end: `lungseg predict`, the Segmenter and the Kedro `inference` pipeline on synthetic chests.

Two kinds of models are used, both saved and loaded through the normal path:

* "rule" models: three fixed 1x1/3x3 convolutions that mark pixels whose intensity lies in a band (the
  phantom's lung or lesion intensity), eroded by one pixel. Deterministic and instant, they test the
  plumbing (grids, affines, DICOM vs NIfTI, batch mode, reports) exactly.
* a tiny U-Net (32 px, base_filters 4, depth 2) trained here for a few seconds on phantoms, whose
  lung Dice on unseen phantoms must exceed ``TRAINED_LUNG_DICE_BOUND``.
"""

from __future__ import annotations

import json
import logging

import cv2
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from rule_models import WINDOW, band_model, unit

from lungseg import cli
from lungseg.evaluation.metrics import dice
from lungseg.inference.dicom_write import write_dicom_series
from lungseg.inference.models import LoadedModel, load_model_spec
from lungseg.inference.readers import read_input
from lungseg.inference.report import make_report
from lungseg.inference.segment import Segmenter
from lungseg.inference.settings import InferenceSettings
from lungseg.limits import load_guard, load_limits
from lungseg.volume import from_canonical_array, load_canonical

SPACING = (2.5, 0.8, 0.8)  # (sz, sy, sx) mm
LUNG_HU, LESION_HU, BODY_HU, AIR_HU = -850, -300, 40, -1000
#: Lung Dice of the tiny U-Net trained in the test on unseen phantoms (0.92-0.94 when written).
TRAINED_LUNG_DICE_BOUND = 0.85
VERSION = "2025-06-01T12.00.00.000Z"


# ------------------------------------------------------------------------------------- synthetic data



def make_segmenter(lung, infection, **settings) -> Segmenter:
    """A Segmenter with the project's guard bounds (what ``Segmenter(...)`` read for itself before #26)."""
    return Segmenter.from_models(lung, infection, InferenceSettings(guard=load_guard(), **settings))

def phantom(shape=(12, 64, 64), seed=0, lungs=True):
    """Canonical (z, y, x) HU chest: body, left lung (larger column index) = 1, right lung = 2, a lesion.

    Returns ``(ct int16, lung labels uint8, infection uint8)``.
    """
    rng = np.random.default_rng(seed)
    z, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = h / 2 + rng.uniform(-2, 2), w / 2 + rng.uniform(-2, 2)
    body = ((yy - cy) / (0.40 * h)) ** 2 + ((xx - cx) / (0.45 * w)) ** 2 < 1
    ct = np.full(shape, AIR_HU, np.float32)
    lung = np.zeros(shape, np.uint8)
    inf = np.zeros(shape, np.uint8)
    ry, rx = 0.27 * h * rng.uniform(0.9, 1.1), 0.15 * w * rng.uniform(0.9, 1.1)
    centres = {1: (cy + rng.uniform(-2, 2), cx + 0.20 * w), 2: (cy + rng.uniform(-2, 2), cx - 0.20 * w)}
    by, bx, br = centres[1][0] + rng.uniform(-3, 3), centres[1][1] + rng.uniform(-1, 1), 0.06 * w
    for k in range(z):
        ct[k][body] = BODY_HU
        scale = np.sqrt(max(0.0, 1 - (((k + 0.5) / z - 0.5) / 0.45) ** 2))  # lungs taper at both ends
        if lungs and scale > 0.2:
            for label, (y0, x0) in centres.items():
                m = ((yy - y0) / (ry * scale)) ** 2 + ((xx - x0) / (rx * scale)) ** 2 < 1
                ct[k][m] = LUNG_HU
                lung[k][m] = label
            blob = (((yy - by) / br) ** 2 + ((xx - bx) / br) ** 2 < 1) & (lung[k] == 1)
            ct[k][blob] = LESION_HU
            inf[k][blob] = 1
    ct += rng.normal(0, 15, shape).astype(np.float32)
    # >= -1024 so that the DICOM copy (unsigned storage, intercept -1024) holds the very same values
    return np.clip(np.round(ct), -1024, 3000).astype(np.int16), lung, inf


def save_nifti(path, ct_zyx, reorient=False):
    """Save a canonical array as NIfTI; ``reorient`` stores it RAS with axes permuted (a non-LPS grid)."""
    img = from_canonical_array(ct_zyx, SPACING).to_nifti(ct_zyx, ct_zyx.dtype)
    if reorient:
        ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(img.affine), [[1, 1], [0, 1], [2, -1]])
        img = img.as_reoriented(ornt)
        assert nib.aff2axcodes(img.affine) != ("L", "P", "S")
    nib.save(img, str(path))
    return img


# ----------------------------------------------------------------------------------------- models


def model_config(task, image_size, **extra):
    return {
        "task": task, "architecture": "unet", "image_size": image_size,
        "crop_mode": "body" if task == "lung" else "lung_mask", "window": list(WINDOW),
        "clahe_clip_limit": 0.0, "clahe_tile_grid": 4, "crop_margin": 2, "threshold": 0.5, **extra,
    }


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """Rule models in the training pipeline's versioned layout (found without --lung-model)."""
    root = tmp_path_factory.mktemp("models")
    bands = {"lung": (unit(LUNG_HU) - 0.05, unit(LUNG_HU) + 0.06), "infection": (unit(LESION_HU) - 0.08, unit(LESION_HU) + 0.08)}
    for task, (lo, hi) in bands.items():
        path = root / f"{task}_unet" / "model.keras" / VERSION / "model.keras"
        path.parent.mkdir(parents=True)
        band_model(64, lo, hi).save(path)
        cfg = root / f"{task}_unet" / "model_config.json" / VERSION / "model_config.json"
        cfg.parent.mkdir(parents=True)
        cfg.write_text(json.dumps(model_config(task, 64)))
    return root


@pytest.fixture(scope="module")
def rule_segmenter(models_dir):
    return make_segmenter(load_model_spec(None, "lung", models_dir), load_model_spec(None, "infection", models_dir))


def predict(src, out, models_dir, *extra):
    return cli.main(["predict", str(src), "-o", str(out), "--models-dir", str(models_dir), "--no-progress", *extra])


# ------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("reorient", [False, True], ids=["lps", "ras-permuted"])
def test_cli_writes_every_output_on_the_input_grid(tmp_path, models_dir, capsys, reorient):
    ct, lung, inf = phantom(seed=1)
    src = tmp_path / "chest.nii.gz"
    stored = save_nifti(src, ct, reorient=reorient)
    out = tmp_path / "out"
    assert predict(src, out, models_dir) == 0
    assert str(out) in capsys.readouterr().out

    expected = {"lung_mask.nii.gz", "infection_mask.nii.gz", "lung_and_infection_mask.nii.gz", "report.json"}
    assert expected <= {p.name for p in out.iterdir()}
    assert list((out / "overlays").glob("slice_*.png"))
    masks = {}
    for name in ("lung_mask", "infection_mask", "lung_and_infection_mask"):
        img = nib.load(str(out / f"{name}.nii.gz"))
        assert img.shape == stored.shape and img.get_data_dtype() == np.uint8
        np.testing.assert_allclose(img.affine, stored.affine, atol=1e-6)
        masks[name] = load_canonical(img).array
    # Left lung (label 1) is on the larger column index side, as in the ground truth.
    assert dice(masks["lung_mask"] == 1, lung == 1) > 0.8
    assert dice(masks["lung_mask"] == 2, lung == 2) > 0.8
    assert dice(masks["infection_mask"], inf) > 0.6
    assert not np.any(masks["infection_mask"].astype(bool) & (masks["lung_mask"] == 0))
    np.testing.assert_array_equal(masks["lung_and_infection_mask"], np.where(masks["infection_mask"] > 0, 3, masks["lung_mask"]))

    report = json.loads((out / "report.json").read_text())
    voxel_ml = np.prod(SPACING) / 1000
    assert report["voxel_volume_ml"] == pytest.approx(voxel_ml, rel=1e-6)
    assert report["voxels"]["left_lung"] == int((masks["lung_mask"] == 1).sum())
    assert report["lung_volume_ml"]["left"] == pytest.approx(report["voxels"]["left_lung"] * voxel_ml, rel=1e-6)
    assert report["lung_volume_ml"]["total"] == pytest.approx(int((masks["lung_mask"] > 0).sum()) * voxel_ml, rel=1e-6)
    assert report["infection_volume_ml"]["total"] == pytest.approx(int(masks["infection_mask"].sum()) * voxel_ml, rel=1e-6)
    assert report["infection_volume_ml"]["right"] == 0 and report["severity"]["right"] == 0
    assert report["severity"]["left"] >= 1 and report["no_lungs_found"] is False


def test_tiny_unet_trained_here_segments_unseen_lungs(models_dir):
    import keras

    from lungseg.imaging import PreprocessConfig, prepare_masks, prepare_slices, to_unit_float
    from lungseg.models import build_model, compile_model

    keras.utils.set_random_seed(0)
    config = model_config("lung", 32)  # no CLAHE: at 64 px it mostly amplifies the phantom's noise
    images, targets = [], []
    for seed in range(4):
        ct, lung, _ = phantom(seed=10 + seed)
        x, records = prepare_slices(ct, "hu", PreprocessConfig.from_dict(config))
        images.append(x)
        targets.append(prepare_masks(lung > 0, records))
    x = to_unit_float(np.concatenate(images))[..., None]
    y = np.concatenate(targets)[..., None].astype(np.float32)
    model = compile_model(build_model("unet", 32, {"base_filters": 4, "depth": 2}), "bce_dice", 1e-2)
    model.fit(x, y, batch_size=8, epochs=40, verbose=0)

    segmenter = make_segmenter(LoadedModel(model, config, "tiny-unet"), load_model_spec(None, "infection", models_dir), batch_size=8)
    for seed in (100, 101):
        ct, lung, _ = phantom(seed=seed)
        seg = segmenter.segment(from_canonical_array(ct, SPACING), "hu", progress=False)
        assert dice(seg.lung_labels > 0, lung > 0) > TRAINED_LUNG_DICE_BOUND
        assert dice(seg.lung_labels == 1, lung == 1) > TRAINED_LUNG_DICE_BOUND - 0.1  # left/right not swapped
        assert dice(seg.lung_labels == 2, lung == 2) > TRAINED_LUNG_DICE_BOUND - 0.1


def test_dicom_series_gives_the_same_masks_as_nifti(tmp_path, models_dir, caplog):
    ct, _, _ = phantom(seed=2)
    save_nifti(tmp_path / "chest.nii.gz", ct)
    write_dicom_series(ct, SPACING, tmp_path / "study" / "axial", series_uid="1.2.826.99.1", origin_lps=(-30, -20, 100))
    write_dicom_series(ct[:3, :40, :40], SPACING, tmp_path / "study" / "scout", series_uid="1.2.826.99.2")
    assert predict(tmp_path / "chest.nii.gz", tmp_path / "out_nii", models_dir) == 0
    with caplog.at_level(logging.WARNING, logger="lungseg"):
        assert predict(tmp_path / "study", tmp_path / "out_dcm", models_dir) == 0
    assert "2 DICOM series" in caplog.text and "1.2.826.99.1" in caplog.text

    dicom_volume, _ = read_input(tmp_path / "study", load_limits())
    for name in ("lung_mask", "infection_mask", "lung_and_infection_mask"):
        from_nii = nib.load(str(tmp_path / "out_nii" / f"{name}.nii.gz"))
        from_dcm = nib.load(str(tmp_path / "out_dcm" / f"{name}.nii.gz"))
        np.testing.assert_array_equal(load_canonical(from_dcm).array, load_canonical(from_nii).array)
        np.testing.assert_allclose(from_dcm.affine, dicom_volume.affine)  # on the series' own grid
    assert load_canonical(nib.load(str(tmp_path / "out_dcm" / "lung_mask.nii.gz"))).array.any()
    report = json.loads((tmp_path / "out_dcm" / "report.json").read_text())
    assert report["dicom_series"] == {"series_uid": "1.2.826.99.1", "series_description": "lungseg synthetic CT", "n_series": 2}


def test_png_slice_gives_png_masks(tmp_path, models_dir):
    from lungseg.imaging import window_to_uint8

    ct, lung, _ = phantom(seed=3)
    k = int(np.argmax((lung > 0).sum(axis=(1, 2))))
    cv2.imwrite(str(tmp_path / "slice.png"), window_to_uint8(ct[k], "hu", WINDOW))
    out = tmp_path / "out"
    assert predict(tmp_path / "slice.png", out, models_dir) == 0
    lung_png = cv2.imread(str(out / "lung_mask.png"), cv2.IMREAD_UNCHANGED)
    assert lung_png.shape == ct.shape[1:]
    assert dice(lung_png > 0, lung[k] > 0) > 0.8
    assert (out / "infection_mask.png").is_file() and (out / "lung_and_infection_mask.png").is_file()


def test_volume_without_lungs_gives_empty_masks(tmp_path, models_dir, capsys):
    ct, _, _ = phantom(seed=4, lungs=False)
    save_nifti(tmp_path / "abdomen.nii.gz", ct)
    out = tmp_path / "out"
    assert predict(tmp_path / "abdomen.nii.gz", out, models_dir) == 3  # the plausibility guard's exit code
    err = capsys.readouterr().err.splitlines()
    assert err == ["lungseg: implausible input: abdomen.nii.gz: no lungs found in this image; is it a chest CT?; "
                   "no figures reported (report.json: implausible_input)"]
    for name in ("lung_mask", "infection_mask", "lung_and_infection_mask"):
        assert not np.asarray(nib.load(str(out / f"{name}.nii.gz")).dataobj).any()
    report = json.loads((out / "report.json").read_text())
    assert report["no_lungs_found"] is True and "No lungs" in report["message"]
    assert report["implausible_input"].startswith("no lungs found")
    assert report["severity"] is None and report["infection_percent"] is None
    assert report["lung_volume_ml"]["total"] == 0


def test_batch_size_does_not_change_the_result_and_lung_only_task(rule_segmenter):
    ct, _, _ = phantom(seed=5)
    volume = from_canonical_array(ct, SPACING)
    batched = rule_segmenter.segment(volume, "hu", progress=False)
    one_by_one = make_segmenter(rule_segmenter.lung, rule_segmenter.infection, batch_size=1).segment(volume, "hu", progress=False)
    np.testing.assert_array_equal(batched.lung_labels, one_by_one.lung_labels)
    np.testing.assert_array_equal(batched.infection, one_by_one.infection)
    small_chunks = make_segmenter(rule_segmenter.lung, rule_segmenter.infection, batch_size=3, chunk_slices=5)
    assert small_chunks.chunk_slices == 6
    chunked = small_chunks.segment(volume, "hu", progress=False, keep_probabilities=True)
    np.testing.assert_array_equal(chunked.lung_labels, batched.lung_labels)
    np.testing.assert_array_equal(chunked.infection, batched.infection)
    assert chunked.lung_prob.shape == ct.shape and chunked.lung_prob.dtype == np.float32
    from lungseg.imaging import clean_lung_mask

    assert chunked.infection_prob.shape == ct.shape
    lung_only = make_segmenter(rule_segmenter.lung, None).segment(volume, "hu", tasks=("lung",), progress=False)
    # the lungs alone: the clean-up of the lung model's mask (holes left open) ...
    np.testing.assert_array_equal(clean_lung_mask(chunked.lung_prob >= 0.5, fill_holes=False), lung_only.lung_labels)
    # ... and with the infection task, the infection found in its holes is lung too
    np.testing.assert_array_equal((lung_only.lung_labels > 0) | (batched.infection > 0), batched.lung_labels > 0)
    assert not lung_only.infection.any() and make_report(lung_only, SPACING)["infection_volume_ml"] is None


def test_batch_mode_on_a_folder(tmp_path, models_dir, capsys):
    cases = tmp_path / "cases"
    cases.mkdir()
    for seed, name in ((6, "p1_org.nii.gz"), (7, "p2.nii")):
        save_nifti(cases / name, phantom(seed=seed)[0])
    (cases / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08 definitely not gzip")
    out = tmp_path / "out"
    assert predict(cases, out, models_dir) == 2  # one case failed
    err = capsys.readouterr().err
    assert "lungseg: error: 1 of 3 cases failed (broken)" in err
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["case"]) == ["broken", "p1", "p2"]
    assert list(summary["status"]) == ["error", "ok", "ok"]
    assert "broken.nii.gz" in summary.loc[0, "error"]
    assert (summary.loc[1:, "lung_ml_total"] > 0).all()
    assert (out / "p1" / "lung_mask.nii.gz").is_file() and (out / "p2" / "report.json").is_file()
    assert not (out / "broken").exists()


def test_kedro_inference_pipeline_on_a_metadata_csv(tmp_path, models_dir):
    from kedro.io import DataCatalog, MemoryDataset
    from kedro.runner import SequentialRunner
    from kedro_datasets.pandas import CSVDataset

    from lungseg.pipelines.inference.nodes import INFERENCE_KEYS
    from lungseg.pipelines.inference.pipeline import create_pipeline

    root = tmp_path / "raw"
    (root / "ct_scans").mkdir(parents=True)
    rows = []
    for seed, case in ((8, "coronacases_001"), (9, "radiopaedia_002")):
        save_nifti(root / "ct_scans" / f"{case}_org.nii.gz", phantom(seed=seed)[0])
        rows.append({"ct_scan": f"../input/covid19-ct-scans/ct_scans/{case}_org.nii.gz", "lung_mask": f"lung_mask/{case}.nii"})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)

    from pathlib import Path

    conf = Path(__file__).resolve().parents[2] / "conf" / "base"
    params = yaml.safe_load((conf / "parameters_inference.yml").read_text())["inference"]
    assert set(params) == set(INFERENCE_KEYS)
    catalog_entry = yaml.safe_load((conf / "catalog_inference.yml").read_text())["inference_summary"]
    assert catalog_entry["type"] == "pandas.CSVDataset"

    params.update(input=str(root / "metadata.csv"), output_dir=str(tmp_path / "inference"),
                  models_dir=str(models_dir), progress=False)
    summary_path = tmp_path / "inference" / "summary.csv"
    catalog = DataCatalog(
        {"params:inference": MemoryDataset(params), "inference_summary": CSVDataset(filepath=str(summary_path), save_args={"index": False})}
    )
    SequentialRunner().run(create_pipeline(), catalog)
    summary = pd.read_csv(summary_path)
    assert list(summary["case"]) == ["coronacases_001", "radiopaedia_002"]
    assert (summary["status"] == "ok").all() and (summary["lung_ml_total"] > 0).all()
    for case in summary["case"]:
        report = json.loads((tmp_path / "inference" / case / "report.json").read_text())
        assert report["voxels"]["lung"] > 0


def test_lung_holes_left_open_but_infection_in_a_hole_is_lung(rule_segmenter):
    """``lung_fill_holes=False`` (the default): a hole of the lung mask that holds no infection stays out
    of the lungs (a vessel, as the dataset's lung masks leave them out), while the infection model still
    looks inside the lungs' filled outline, and infection found in a hole is lung too. With
    ``lung_fill_holes=True`` every hole is lung. The infection is the same either way."""
    ct, _, inf = phantom(seed=2)
    yy, xx = np.mgrid[0:64, 0:64]
    vessel = (yy - 32) ** 2 + (xx - 19) ** 2 < 9  # soft tissue inside the right lung: neither model labels it
    mid = slice(4, 8)
    ct[mid][:, vessel] = BODY_HU
    volume = from_canonical_array(ct, SPACING)
    lung, infection = rule_segmenter.lung, rule_segmenter.infection
    open_ = make_segmenter(lung, infection).segment(volume, "hu", progress=False)
    filled = make_segmenter(lung, infection, lung_fill_holes=True).segment(volume, "hu", progress=False)
    assert make_segmenter(lung, infection).lung_fill_holes is False
    np.testing.assert_array_equal(open_.infection, filled.infection)
    assert dice(open_.infection, inf) > 0.6  # the lesion is found (as in the CLI test above) ...
    lungs_alone = make_segmenter(lung, None).segment(volume, "hu", tasks=("lung",), progress=False).lung_labels
    assert np.any((open_.infection > 0) & (lungs_alone == 0))  # ... also where it is a hole of the lung model's mask
    assert np.all(open_.lung_labels[open_.infection > 0] > 0)  # and counted as lung
    assert not open_.lung_labels[mid][:, vessel].any()  # the vessel's hole stays open
    assert filled.lung_labels[mid][:, vessel].all()  # filled when asked
    assert set(np.unique(open_.lung_labels)) == {0, 1, 2}
