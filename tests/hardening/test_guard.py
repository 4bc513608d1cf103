"""Plausibility guard: a non-CT input or an implausible segmentation gets implausible_input, exit 3,
one line, and no severity grade (report.json, summary.csv and the Segmentation the UI receives)."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from hardening_helpers import (
    FAST,
    band_model,
    error_lines,
    leftovers,
    model_config,
    phantom,
    predict,
    rule_models_fixture,  # noqa: F401 - the fixture
    save_nifti,
    save_versioned,
    unit,
)

from lungseg.inference.guard import NO_LUNGS, check_plausibility, min_lung_ml
from lungseg.limits import load_guard


@pytest.fixture(scope="module")
def gullible_models(tmp_path_factory):
    """A lung model that calls anything from air to lung "lung" (as a model trained on chests may on air)."""
    root = tmp_path_factory.mktemp("gullible")
    save_versioned(root, "lung", band_model(64, unit(-1100), unit(-700)), model_config("lung", 64))
    save_versioned(root, "infection", band_model(64, unit(-400), unit(-200)), model_config("infection", 64))
    return root


def _implausible(tmp_path, capsys, src, models, *words):
    out = tmp_path / "out"
    code, seconds = predict(src, out, models)
    captured = capsys.readouterr()
    assert code == 3, captured.err
    (line,) = error_lines(captured.err, "lungseg: implausible input:")
    assert "Traceback" not in captured.err and not error_lines(captured.err)
    for word in words:
        assert word in line, line
    report = json.loads((out / "report.json").read_text())
    assert report["implausible_input"] and report["implausible_input"] in line
    assert report["severity"] is None and report["severity_label"] is None and report["infection_percent"] is None
    assert "severity" not in captured.out
    assert leftovers(tmp_path) == []  # outputs written, no temporary folder or lock left
    return report, seconds


def test_all_air_volume_is_implausible_not_188_ml_of_lung(tmp_path, gullible_models, capsys):
    air = np.random.default_rng(0).normal(-1000, 10, (20, 64, 64)).round().astype(np.int16)
    save_nifti(tmp_path / "air.nii.gz", air)
    report, seconds = _implausible(
        tmp_path, capsys, tmp_path / "air.nii.gz", gullible_models, "air.nii.gz", "no body found"
    )
    assert report["voxels"]["lung"] > 0.5 * air.size  # the model did label the air: the guard caught it
    assert report["no_lungs_found"] is False and seconds < 10 * FAST


def test_a_grayscale_photo_is_implausible(tmp_path, rule_models, capsys):
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:96, :128].astype(np.float32)
    photo = 215 - 25 * yy / 96  # a sky
    ground = yy > 60 + 6 * np.sin(xx / 9)
    photo[ground] = 140 + 20 * np.sin(xx[ground] / 5) * np.cos(yy[ground] / 7)  # a field
    photo += rng.normal(0, 6, photo.shape)
    cv2.imwrite(str(tmp_path / "holiday.png"), np.clip(photo, 0, 255).astype(np.uint8))
    report, _ = _implausible(
        tmp_path, capsys, tmp_path / "holiday.png", rule_models, "holiday.png", "do not look like a CT"
    )
    assert report["spacing_assumed"] is True  # a picture has no voxel size either


def test_no_lungs_found_is_exit_3_with_the_no_lungs_flag(tmp_path, rule_models, capsys):
    save_nifti(tmp_path / "abdomen.nii.gz", phantom(seed=2, lungs=False)[0])
    report, _ = _implausible(tmp_path, capsys, tmp_path / "abdomen.nii.gz", rule_models, "no lungs found")
    assert report["no_lungs_found"] is True and report["implausible_input"] == NO_LUNGS


def test_a_chest_phantom_passes_with_figures_and_a_grade(tmp_path, rule_models, capsys):
    save_nifti(tmp_path / "chest.nii.gz", phantom(seed=3)[0])
    code, _ = predict(tmp_path / "chest.nii.gz", tmp_path / "out", rule_models)
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["implausible_input"] is None and report["severity"]["left"] >= 1
    figures = report["plausibility"]
    assert figures["lung_in_body"] > 0.95 and 0.05 < figures["lung_of_fov"] < 0.6 and figures["body"] > 0.3


def test_batch_summary_carries_implausible_input_and_exit_3(tmp_path, rule_models, capsys):
    folder = tmp_path / "cases"
    save_nifti(folder / "chest.nii.gz", phantom(seed=4)[0])
    save_nifti(folder / "belly.nii.gz", phantom(seed=5, lungs=False)[0])
    code, _ = predict(folder, tmp_path / "out", rule_models)
    err = capsys.readouterr().err
    assert code == 3 and "lungseg: implausible input: 1 of 2 cases (belly)" in err
    summary = pd.read_csv(tmp_path / "out" / "summary.csv").set_index("case")
    assert summary.loc["belly", "implausible_input"] == NO_LUNGS and pd.isna(summary.loc["belly", "severity_total"])
    assert pd.isna(summary.loc["chest", "implausible_input"]) and summary.loc["chest", "severity_left"] >= 1


def _figures_case(shape=(12, 64, 64)):
    ct, lung, _ = phantom(shape, seed=6)
    return ct, lung


def test_guard_checks_one_by_one():
    params = load_guard()
    ct, lung = _figures_case()
    assert check_plausibility(ct, "hu", lung, (2.5, 0.8, 0.8), params)[0] is None
    outside = np.zeros_like(lung)
    outside[:, :6, :] = 1  # "lungs" in the air in front of the body
    why, _ = check_plausibility(ct, "hu", outside, (2.5, 0.8, 0.8), params)
    assert why.startswith("only 0.0% of the lungs lie inside the body")
    everywhere = np.ones_like(lung)
    assert "field of view" in check_plausibility(ct, "hu", everywhere, (2.5, 0.8, 0.8), params)[0]
    assert "above the physiological maximum" in check_plausibility(ct, "hu", lung, (40.0, 12.0, 12.0), params)[0]
    long_scan, small = _figures_case((100, 64, 64))[0], np.zeros((100, 64, 64), np.uint8)
    small[50, 30:34, 40:44] = 1
    assert "below the physiological minimum" in check_plausibility(long_scan, "hu", small, (2.5, 0.8, 0.8), params)[0]
    scaled = ct.astype(np.float32) * 40  # not Hounsfield units
    assert check_plausibility(scaled, "hu", lung, (2.5, 0.8, 0.8), params)[0].startswith("not CT intensities")
    assert check_plausibility(scaled, "hu", lung, (2.5, 0.8, 0.8), replace(params, enabled=False))[0] is None


def test_the_segmenter_sets_implausible_input_for_the_ui(rule_models):
    from lungseg.inference.models import load_model_spec
    from lungseg.inference.segment import Segmenter
    from lungseg.inference.settings import InferenceSettings
    from lungseg.limits import load_guard
    from lungseg.volume import from_canonical_array

    seg = Segmenter.from_models(load_model_spec(None, "lung", rule_models), None, InferenceSettings(guard=load_guard()))
    air = from_canonical_array(np.full((4, 64, 64), -1000, np.int16), (2.5, 0.8, 0.8))
    result = seg.segment(air, "hu", tasks=("lung",), progress=False)
    assert result.implausible_input.startswith("no body found")
    chest = seg.segment(
        from_canonical_array(phantom(seed=7)[0], (2.5, 0.8, 0.8)), "hu", tasks=("lung",), progress=False
    )
    assert chest.implausible_input is None


def test_the_lung_minimum_applies_whatever_the_scan_length():
    params = load_guard()
    assert min_lung_ml(30.0, params) == pytest.approx(30 * params.min_lung_ml_per_mm)  # pro rata under 200 mm
    assert min_lung_ml(250.0, params) == params.min_lung_ml  # whole lungs: the old minimum
    ct, lung = _figures_case((40, 64, 64))  # 100 mm long: the old guard checked no minimum here
    blob = np.zeros_like(lung)
    blob[20, 30:32, 40:42] = 1  # 4 voxels, 0.0064 ml: "Lungs 0.0 ml"
    why, figures = check_plausibility(ct, "hu", blob, (2.5, 0.8, 0.8), params)
    assert why == ("a lung volume of 0.0064 ml in a scan 100 mm long, below the physiological minimum of 1 ml, "
                   "0.01 ml per mm (is the voxel size right?)")
    assert figures["min_lung_ml"] == pytest.approx(1.0)
    assert check_plausibility(ct, "hu", lung, (2.5, 0.8, 0.8), params)[0] is None  # the phantom's own lungs pass
    stored = {k: v for k, v in asdict(params).items() if k != "min_lung_ml_per_mm"}  # registered before the floor
    assert type(params).from_params(stored).min_lung_ml_per_mm == 0.01


REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "covid20-dev" / "lung_mask"


@pytest.mark.skipif(not REAL.is_dir(), reason="optional: ../shared/data/covid20-dev is absent")
def test_real_short_scans_hold_far_more_lung_than_the_floor():
    """The shortest covid20-dev scans (11-70 mm along z) against the floor: their true lung masks hold
    over 100 times the minimum, so a real scan that covers part of the lungs is not refused."""
    import nibabel as nib

    params, checked = load_guard(), 0
    for path in sorted(REAL.glob("*.nii.gz")):
        img = nib.load(str(path))
        sx, sy, sz = (float(v) for v in img.header.get_zooms()[:3])
        extent = img.shape[2] * sz
        if extent >= params.min_extent_mm / 2:
            continue
        ml = np.count_nonzero(np.asanyarray(img.dataobj)) * sx * sy * sz / 1000
        assert ml > 100 * min_lung_ml(extent, params), (path.name, ml, extent)
        checked += 1
    assert checked >= 3

