"""#29: model provenance, the severity withheld for synthetic-trained models on other input, placeholder
spacing and ``--spacing``, the lesion and metric tables, and the CLI's PNG report, progress and floats.

The models are the deterministic rule models of ``rule_models`` (an intensity band each), saved in the
training pipeline's versioned layout with a config that says they were trained on ``synthetic_demo``
in the ``demo`` environment, and a reports folder with their recorded validation case Dice.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from chest_models import SPACING, chest, save, write_models
from rule_models import WINDOW
from scipy import ndimage

from lungseg import cli
from lungseg.inference.provenance import SYNTHETIC_WITHHELD, is_synthetic_phantom
from lungseg.inference.readers import read_input
from lungseg.layout import SYNTHETIC_PHANTOM_DESCRIP
from lungseg.limits import load_limits
from lungseg.volume import load_canonical


@pytest.fixture(scope="module")
def synthetic_models(tmp_path_factory):
    return write_models(tmp_path_factory.mktemp("synthetic"), "synthetic_demo")


@pytest.fixture(scope="module")
def real_models(tmp_path_factory):
    return write_models(tmp_path_factory.mktemp("real"), "covid20-dev", environment="dev_cpu", scores=None)


def predict(src, out, models, *extra):
    return cli.main(["predict", str(src), "-o", str(out), "--models-dir", str(models), "--no-progress", *extra])


# ---------------------------------------------------------------------------------------- provenance


def test_the_generator_marks_its_phantoms_and_a_chest_drawn_otherwise_is_not_one(tmp_path):
    from lungseg.synthetic import generate_case, write_case

    paths = write_case(generate_case(0, "tiny", seed=0), tmp_path)
    assert nib.load(str(paths["ct_scans"])).header["descrip"].item().decode() == SYNTHETIC_PHANTOM_DESCRIP
    assert is_synthetic_phantom(read_input(paths["ct_scans"], load_limits())[0])
    real = save(tmp_path / "chest.nii.gz", chest()[0])
    assert not is_synthetic_phantom(read_input(real, load_limits())[0])


def test_models_lists_dataset_environment_and_score(synthetic_models, real_models, capsys):
    assert cli.main(["models", "--models-dir", str(synthetic_models)]) == 0
    out = capsys.readouterr().out
    assert "trained on synthetic_demo (env demo, 2025-06-01T12:00:00+00:00); validation case Dice 0.955 on " \
           "synthetic phantoms" in out
    assert "validation case Dice 0.720 on synthetic phantoms" in out
    assert cli.main(["models", "--models-dir", str(real_models)]) == 0
    out = capsys.readouterr().out
    assert "trained on covid20-dev (env dev_cpu, 2025-06-01T12:00:00+00:00); no recorded score" in out


def test_synthetic_models_on_a_phantom_give_the_grade_without_a_warning(tmp_path, synthetic_models, capsys):
    src = save(tmp_path / "phantom.nii.gz", chest()[0], phantom_marker=True)
    assert predict(src, tmp_path / "out", synthetic_models) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err
    assert "lungseg: lung model lung_unet: trained on synthetic_demo (env demo" in captured.out
    assert "validation case Dice 0.955 on synthetic phantoms" in captured.out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["severity"]["left"] >= 1 and report["severity_withheld"] is None
    assert report["provenance"]["lung"]["dataset"] == "synthetic_demo"
    assert report["provenance"]["infection"]["environment"] == "demo"
    assert report["provenance"]["infection"]["score"] == 0.72
    assert report["provenance"]["infection"]["score_name"] == "validation case Dice"


def test_synthetic_models_on_other_ct_withhold_the_grade_and_warn(tmp_path, synthetic_models, capsys):
    src = save(tmp_path / "chest.nii.gz", chest()[0])  # a real-looking HU chest, not the generator's
    assert predict(src, tmp_path / "out", synthetic_models) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("lungseg: warning:")]
    assert len(warnings) == 1 and SYNTHETIC_WITHHELD in warnings[0] and "chest.nii.gz" in warnings[0]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["severity"] is None and report["severity_label"] is None
    assert report["severity_withheld"].startswith(f"{SYNTHETIC_WITHHELD} (synthetic_demo)")
    assert report["infection_percent"]["left"] > 0  # the figures are there, the grade is not
    assert "severity withheld" in report["message"] and not re.search(r"severity \d", report["message"])
    assert not re.search(r"severity \d", captured.out)


def test_models_trained_on_real_ct_keep_the_grade_on_any_ct(tmp_path, real_models, capsys):
    src = save(tmp_path / "chest.nii.gz", chest()[0])
    assert predict(src, tmp_path / "out", real_models) == 0
    assert "warning" not in capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["severity"]["left"] >= 1 and report["severity_withheld"] is None


def test_batch_and_pyfunc_withhold_the_grade_too(tmp_path, synthetic_models, capsys):
    import pandas as pd

    from lungseg.inference.models import load_model_spec
    from lungseg.limits import inference_parameters
    from lungseg.serving.bundle import SETTINGS_KEYS, write_bundle
    from lungseg.serving.pyfunc import INPUT_COLUMN, CombinedSegmentationModel, encode_nifti

    cases = tmp_path / "cases"
    cases.mkdir()
    save(cases / "phantom.nii.gz", chest(seed=1)[0], phantom_marker=True)
    save(cases / "real.nii.gz", chest(seed=2)[0])
    assert predict(cases, tmp_path / "out", synthetic_models) == 0
    err = capsys.readouterr().err
    assert "lungseg: warning: no severity grade for 1 of 2 cases (real)" in err
    summary = pd.read_csv(tmp_path / "out" / "summary.csv").set_index("case")
    assert summary.loc["real", "severity_withheld"].startswith(SYNTHETIC_WITHHELD)
    assert np.isnan(summary.loc["real", "severity_total"]) and summary.loc["phantom", "severity_total"] >= 1

    bundle = write_bundle(tmp_path / "bundle", load_model_spec(None, "lung", synthetic_models),
                          load_model_spec(None, "infection", synthetic_models),
                          {k: inference_parameters()[k] for k in SETTINGS_KEYS})
    model = CombinedSegmentationModel()

    class Context:
        artifacts = {"bundle": str(bundle)}
        model_config: dict = {}

    model.load_context(Context())
    rows = model.predict(None, pd.DataFrame({INPUT_COLUMN: [encode_nifti(cases / "real.nii.gz"),
                                                             encode_nifti(cases / "phantom.nii.gz")]}))
    real, phantom = (json.loads(text) for text in rows["report_json"])
    assert real["severity"] is None and real["severity_withheld"].startswith(SYNTHETIC_WITHHELD)
    assert phantom["severity"]["total"] >= 1 and phantom["severity_withheld"] is None
    # the served model names each model's training data and the figure it was scored with (the bundle
    # carries the score recorded beside the models)
    assert real["provenance"]["lung"]["dataset"] == "synthetic_demo"
    assert real["provenance"]["lung"]["environment"] == "demo"
    assert real["provenance"]["lung"]["score"] == 0.955


# ------------------------------------------------------------------------------------------- spacing


def test_one_mm_on_0_255_input_is_a_placeholder_and_spacing_overrides_it(tmp_path, real_models, capsys):
    from lungseg.imaging import window_to_uint8

    ct, _ = chest(shape=(40, 64, 64))  # 40 slices: at 1 mm still a whole scan (30 mm or more)
    u8 = window_to_uint8(ct, "hu", WINDOW)
    src = save(tmp_path / "converted.nii.gz", u8, spacing=(1.0, 1.0, 1.0))
    assert predict(src, tmp_path / "out", real_models) == 0
    captured = capsys.readouterr()
    assert "volumes in ml are nominal" in captured.err and "--spacing X,Y,Z" in captured.err
    assert "(nominal: the voxel size was assumed)" in captured.out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["spacing_assumed"] is True and report["volumes_nominal"] is True
    assert "placeholder" in report["spacing_note"] and report["spacing_source"] == "assumed"

    assert predict(src, tmp_path / "fixed", real_models, "--spacing", "0.8,0.8,2.5") == 0
    assert "nominal" not in capsys.readouterr().err
    fixed = json.loads((tmp_path / "fixed" / "report.json").read_text())
    assert fixed["spacing_assumed"] is False and fixed["volumes_nominal"] is False
    assert fixed["spacing_source"] == "--spacing" and fixed["spacing_mm"] == [2.5, 0.8, 0.8]
    voxel_ml = 2.5 * 0.8 * 0.8 / 1000
    assert fixed["lung_volume_ml"]["total"] == pytest.approx(fixed["voxels"]["lung"] * voxel_ml, rel=1e-9)
    assert fixed["voxels"] == report["voxels"]  # the same masks, other ml
    written = nib.load(str(tmp_path / "fixed" / "lung_mask.nii.gz"))
    np.testing.assert_allclose(written.affine, nib.load(str(src)).affine)  # still on the input's own grid

    hu = save(tmp_path / "iso.nii.gz", ct, spacing=(1.0, 1.0, 1.0))  # HU at 1 mm isotropic: a real voxel size
    assert read_input(hu, load_limits())[0].meta.get("spacing_assumed") is None


def test_spacing_is_checked_and_applies_to_one_input(tmp_path, real_models, capsys):
    src = save(tmp_path / "chest.nii.gz", chest()[0])
    with pytest.raises(SystemExit) as exc:
        cli.main(["predict", str(src), "-o", str(tmp_path / "o1"), "--spacing", "0.8,0.8"])
    assert exc.value.code == 2 and "give three positive numbers in mm, X,Y,Z" in capsys.readouterr().err
    assert predict(src, tmp_path / "o2", real_models, "--spacing", "0.8,0.8,50") == 2
    assert "--spacing: a voxel size of 50 x 0.8 x 0.8 mm" in capsys.readouterr().err
    (tmp_path / "cases").mkdir()
    save(tmp_path / "cases" / "a.nii.gz", chest()[0])
    assert predict(tmp_path / "cases", tmp_path / "o3", real_models, "--spacing", "1,1,1") == 2
    assert "--spacing applies to one input, not to a batch" in capsys.readouterr().err


def test_a_dicom_series_without_pixel_spacing_is_flagged(tmp_path):
    import pydicom

    from lungseg.inference.dicom_write import write_dicom_series

    files = write_dicom_series(chest()[0], SPACING, tmp_path / "series")
    for f in files:
        ds = pydicom.dcmread(f)
        del ds.PixelSpacing
        ds.save_as(f)
    volume, _ = read_input(tmp_path / "series", load_limits())
    assert volume.meta["spacing_assumed"] is True and "PixelSpacing" in volume.meta["spacing_note"]


# ------------------------------------------------------------------------------------------- export


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_lesions_csv_holds_the_3d_components_of_the_infection_mask(tmp_path, real_models):
    ct, _ = chest(lesions=((1, -6.0), (1, 6.0), (2, 0.0)))  # two lesions in the left lung, one in the right
    src = save(tmp_path / "chest.nii.gz", ct)
    out = tmp_path / "out"
    assert predict(src, out, real_models) == 0
    infection = load_canonical(nib.load(str(out / "infection_mask.nii.gz"))).array > 0
    lungs = load_canonical(nib.load(str(out / "lung_mask.nii.gz"))).array
    labels, n = ndimage.label(infection, structure=np.ones((3, 3, 3), bool))
    rows = _csv(out / "lesions.csv")
    report = json.loads((out / "report.json").read_text())
    assert n == 3 and len(rows) == n and len(report["lesions"]) == n
    sizes = sorted(np.bincount(labels.ravel())[1:].tolist(), reverse=True)
    assert [int(r["voxels"]) for r in rows] == sizes  # largest first
    voxel_ml = np.prod(SPACING) / 1000
    for row, listed in zip(rows, report["lesions"]):
        assert int(row["id"]) == listed["id"] and int(row["voxels"]) == listed["voxels"]
        z, y, x = round(float(row["centroid_z"])), round(float(row["centroid_y"])), round(float(row["centroid_x"]))
        k = labels[z, y, x]
        region = labels == k
        assert int(region.sum()) == int(row["voxels"])
        assert float(row["volume_ml"]) == pytest.approx(int(row["voxels"]) * voxel_ml, rel=1e-9)
        np.testing.assert_allclose([float(row[f"centroid_{a}"]) for a in "zyx"], ndimage.center_of_mass(region),
                                   atol=1e-6)
        zs = np.flatnonzero(region.any(axis=(1, 2)))
        assert (int(row["slice_first"]), int(row["slice_last"])) == (zs[0], zs[-1])
        sides = set(np.unique(lungs[region]).tolist())
        assert row["lung"] == {frozenset({1}): "left", frozenset({2}): "right"}[frozenset(sides)]
        assert float(row["mean_hu"]) == pytest.approx(ct[region].mean(), rel=1e-6)
        # mm: the input's affine at the centroid's own voxel (RAS+ scanner coordinates)
        ijk = [float(row[f"centroid_{a}"]) for a in "ijk"]
        xyz = nib.load(str(src)).affine @ [*ijk, 1.0]
        np.testing.assert_allclose([float(row[f"centroid_{a}_mm"]) for a in "xyz"], xyz[:3], atol=1e-6)
    assert sorted(r["lung"] for r in rows) == ["left", "left", "right"]


def test_batch_with_ground_truth_writes_metrics_csv_matching_the_masks(tmp_path, real_models, caplog):
    from lungseg.evaluation.metrics import dice

    root = tmp_path / "data"
    rows = []
    for i in range(2):
        ct, lung = chest(seed=i)
        inf = ((ct > -500) & (ct < -100) & (lung > 0)).astype(np.uint8)
        for folder in ("ct", "lung", "inf"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        save(root / "ct" / f"case{i}.nii.gz", ct)
        save(root / "lung" / f"case{i}.nii.gz", lung)
        save(root / "inf" / f"case{i}.nii.gz", inf)
        rows.append({"ct_scan": f"ct/case{i}.nii.gz", "lung_mask": f"lung/case{i}.nii.gz",
                     "infection_mask": f"inf/case{i}.nii.gz"})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="lungseg"):
        assert predict(root / "metadata.csv", out, real_models) == 0
    assert "case 1 of 2: case0 ok" in caplog.text and "case 2 of 2: case1 ok" in caplog.text  # no bar: one line a case
    summary = pd.read_csv(out / "summary.csv").set_index("case")
    for case in ("case0", "case1"):
        assert summary.loc[case, "lesions_csv"] == f"{case}/lesions.csv" and (out / case / "lesions.csv").is_file()
        assert summary.loc[case, "metrics_csv"] == f"{case}/metrics.csv" and (out / case / "metrics.csv").is_file()
        assert summary.loc[case, "report_json"] == f"{case}/report.json"
        table = pd.read_csv(out / case / "metrics.csv")
        whole = table[table["slice"].isna()].set_index(["task", "region"])
        assert whole.loc[("lung", "all"), "dice"] == pytest.approx(summary.loc[case, "lung_dice"], rel=1e-9)
        assert whole.loc[("infection", "all"), "iou"] == pytest.approx(summary.loc[case, "infection_iou"], rel=1e-9)
        pred_lung = load_canonical(nib.load(str(out / case / "lung_mask.nii.gz"))).array
        pred_inf = load_canonical(nib.load(str(out / case / "infection_mask.nii.gz"))).array > 0
        true_lung = load_canonical(nib.load(str(root / "lung" / f"{case}.nii.gz"))).array
        true_inf = load_canonical(nib.load(str(root / "inf" / f"{case}.nii.gz"))).array > 0
        assert whole.loc[("lung", "left"), "dice"] == pytest.approx(dice(pred_lung == 1, true_lung == 1), rel=1e-9)
        assert whole.loc[("lung", "right"), "dice"] == pytest.approx(dice(pred_lung == 2, true_lung == 2), rel=1e-9)
        left = true_lung == 1
        assert whole.loc[("infection", "left"), "dice"] == pytest.approx(
            dice(pred_inf & left, true_inf & left), rel=1e-9)
        per_slice = table[table["slice"].notna() & (table["task"] == "infection")]
        report = json.loads((out / case / "report.json").read_text())
        listed = report["per_slice_dice"]["infection"]
        assert len(listed) == pred_inf.shape[0]
        for _, r in per_slice.iterrows():
            z = int(r["slice"])
            assert r["dice"] == pytest.approx(dice(pred_inf[z], true_inf[z]), rel=1e-9) == pytest.approx(listed[z])
        empty = [z for z in range(pred_inf.shape[0]) if not (pred_inf[z].any() or true_inf[z].any())]
        assert all(listed[z] is None for z in empty) and set(per_slice["slice"].astype(int)).isdisjoint(empty)
        assert {r["task"] for r in report["ground_truth_scores"]} == {"lung", "infection"}


# ----------------------------------------------------------------------------------------------- CLI


def test_a_png_slice_reports_pixels_and_no_ml_or_severity(tmp_path, real_models, capsys):
    import cv2

    from lungseg.imaging import window_to_uint8

    ct, lung = chest()
    k = int(np.argmax((lung > 0).sum(axis=(1, 2))))
    cv2.imwrite(str(tmp_path / "slice.png"), window_to_uint8(ct[k], "hu", WINDOW))
    assert predict(tmp_path / "slice.png", tmp_path / "out", real_models) == 0
    out = capsys.readouterr().out
    (message,) = [line for line in out.splitlines() if line.startswith("lungseg: Lungs")]
    assert re.search(r"Lungs \d+ pixels \(left \d+, right \d+\); infection \d+ pixels", message)
    assert not re.search(r"\d ml", message) and not re.search(r"severity \d", message)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["severity"] is None and report["lung_volume_ml"] is None and report["area_pixels"]["lung"]["total"] > 0


def test_progress_bars_only_on_a_terminal_and_left_visible(tmp_path, real_models, capsys, monkeypatch):
    src = save(tmp_path / "chest.nii.gz", chest()[0])
    args = ["predict", str(src), "--models-dir", str(real_models)]
    assert cli.main([*args, "-o", str(tmp_path / "redirected")]) == 0  # capsys: stderr is not a terminal
    err = capsys.readouterr().err
    assert "lung model" not in err and "\r" not in err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert cli.main([*args, "-o", str(tmp_path / "terminal")]) == 0
    err = capsys.readouterr().err
    # tqdm(leave=True): each bar's last state stays on the screen when done
    # tqdm(leave=True): each bar's last state stays on the screen, ended by a new line, when done
    assert re.search(r"lung model: 100%[^\r\n]*12/12[^\r\n]*\n", err)
    assert re.search(r"infection model: 100%[^\r\n]*\n", err)


def test_report_and_summary_floats_carry_no_float_noise(tmp_path, real_models):
    (tmp_path / "cases").mkdir()
    save(tmp_path / "cases" / "a.nii.gz", chest()[0], spacing=(1.1, 0.7, 0.7))
    assert predict(tmp_path / "cases", tmp_path / "out", real_models) == 0
    noise = re.compile(r"\d\.\d{11,}")
    assert not noise.search((tmp_path / "out" / "a" / "report.json").read_text())
    assert not noise.search((tmp_path / "out" / "a" / "lesions.csv").read_text())
    assert not noise.search((tmp_path / "out" / "summary.csv").read_text())
    report = json.loads((tmp_path / "out" / "a" / "report.json").read_text())
    assert report["voxel_volume_ml"] == 0.000539  # 1.1 * 0.7 * 0.7 / 1000 = 0.0005390000000000001 in floats
