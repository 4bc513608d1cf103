"""Geometry: masks must share their CT's grid; degenerate affines and zero pixdim are named, not guessed."""

from __future__ import annotations

import json
import logging

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import write_case
from hardening_helpers import (
    FAST,
    PROJECT_ROOT,
    error_lines,
    leftovers,
    patch_nifti_header,
    phantom,
    predict,
    rule_models_fixture,  # noqa: F401 - the fixture
    save_nifti,
)
from kedro_datasets.partitions import PartitionedDataset

from lungseg.errors import DataValidationError
from lungseg.ingest import ingest_dataset


def _params(root, **extra):
    params = yaml.safe_load((PROJECT_ROOT / "conf" / "base" / "parameters_ingestion.yml").read_text())["ingestion"]
    return {**params, "raw_root": str(root), **extra}


def _ingest(root, **extra):
    meta = pd.read_csv(root / "metadata.csv")
    volumes = PartitionedDataset(path=str(root), dataset="lungseg.datasets.NiftiDataset").load()
    return ingest_dataset(meta, volumes, _params(root, **extra))


def _dataset(root, shape=(8, 48, 48)):
    rows = [write_case(root, "case_a", shape=shape, seed=1), write_case(root, "case_b", shape=shape, seed=2)]
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


def _rewrite_with_affine(path, affine):
    img = nib.load(str(path))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), str(path))


def test_a_mask_with_a_flipped_axis_is_refused_naming_the_case_and_both_files(tmp_path):
    root = _dataset(tmp_path / "raw")
    ct_affine = nib.load(str(root / "ct_scans/case_b_org.nii.gz")).affine
    flipped = ct_affine.copy()
    flipped[2, 2] *= -1  # z flipped: every label slice lands on the mirrored CT slice
    _rewrite_with_affine(root / "lung_mask/case_b.nii.gz", flipped)
    with pytest.raises(DataValidationError) as info:
        _ingest(root)
    msg = str(info.value)
    assert "case 'case_b'" in msg and "lung_mask/case_b.nii.gz" in msg and "ct_scans/case_b_org.nii.gz" in msg
    assert "orientation LPI differs from LPS" in msg and "misaligned" in msg
    table, _, skipped = _ingest(root, skip_invalid_cases=True)
    assert list(table["case_id"]) == ["case_a"] and list(skipped["case_id"]) == ["case_b"]


def test_ingestion_and_the_batch_ground_truth_share_one_grid_check(tmp_path, caplog):
    """lungseg.volume.load_mask reads both: a mask with a flipped axis is refused in the same words by
    ingestion and by the batch's ground-truth reader (with a tolerance); the UI's (none) reorients it, warning."""
    from lungseg.inference.ground_truth import read_mask
    from lungseg.volume import load_canonical

    root = _dataset(tmp_path / "raw")
    ct_file = root / "ct_scans/case_b_org.nii.gz"
    flipped = nib.load(str(ct_file)).affine.copy()
    flipped[2, 2] *= -1
    mask = root / "lung_mask/case_b.nii.gz"
    _rewrite_with_affine(mask, flipped)
    with pytest.raises(DataValidationError) as ingested:
        _ingest(root)
    ct = load_canonical(nib.load(str(ct_file)), file=str(ct_file))
    with pytest.raises(DataValidationError) as scored:
        read_mask(mask, ct, case="case_b", tolerance=_params(root)["geometry_tolerance"])
    for info in (ingested, scored):
        msg = str(info.value)
        assert "case 'case_b'" in msg and "lung_mask/case_b.nii.gz" in msg and "case_b_org.nii.gz" in msg
        assert "is not on the grid of its CT" in msg and "orientation LPI differs from LPS" in msg
    with caplog.at_level(logging.WARNING, logger="lungseg.volume"):
        labels = read_mask(mask, ct, case="case_b")
    assert labels.shape == ct.array.shape and "is oriented LPI, the CT LPS" in caplog.text


def test_a_mask_transposed_in_plane_is_refused_on_a_non_square_case(tmp_path):
    root = tmp_path / "raw"
    rel = write_case(root, "wide", shape=(8, 40, 56), seed=3)
    pd.DataFrame([rel]).to_csv(root / "metadata.csv", index=False)
    # the same stored array shape as a (hypothetical) 40x56 mask, but x and y swapped in the affine
    img = nib.load(str(root / rel["infection_mask"]))
    data = np.asarray(img.dataobj)
    swapped = img.affine[:, [1, 0, 2, 3]]
    nib.save(nib.Nifti1Image(data, swapped), str(root / rel["infection_mask"]))
    with pytest.raises(
        DataValidationError, match=r"case 'wide'.*infection_mask/wide.nii.gz.*orientation PLS differs from LPS"
    ):
        _ingest(root)


def test_a_mask_shifted_or_rescaled_beyond_the_tolerance_is_refused(tmp_path):
    root = _dataset(tmp_path / "raw")
    affine = nib.load(str(root / "ct_scans/case_a_org.nii.gz")).affine
    shifted = affine.copy()
    shifted[:3, 3] += [0, 0, 5.0]
    _rewrite_with_affine(root / "lung_and_infection_mask/case_a.nii.gz", shifted)
    with pytest.raises(DataValidationError, match=r"case 'case_a'.*origin .* differs"):
        _ingest(root)
    tiny = affine.copy()
    tiny[:3, 3] += [0, 0, 0.01]  # within geometry_tolerance.origin_mm
    _rewrite_with_affine(root / "lung_and_infection_mask/case_a.nii.gz", tiny)
    rescaled = affine.copy()
    rescaled[0, 0] *= 1.1
    _rewrite_with_affine(root / "lung_mask/case_a.nii.gz", rescaled)
    with pytest.raises(DataValidationError, match=r"case 'case_a'.*spacing .* differs"):
        _ingest(root)


@pytest.mark.parametrize(
    "srow", [[0.0] * 12, [np.nan] + [0.0] * 11, [1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]], ids=["zero", "nan", "singular"]
)
def test_a_degenerate_ct_affine_is_a_clear_skippable_error(tmp_path, srow):
    root = _dataset(tmp_path / "raw")
    ct = root / "ct_scans/case_a_org.nii.gz"
    patch_nifti_header(ct, ct, srow=srow, sform_code=1, qform_code=0)
    with pytest.raises(
        DataValidationError, match=r"case 'case_a', file 'ct_scans/case_a_org.nii.gz': degenerate affine"
    ):
        _ingest(root)
    table, _, skipped = _ingest(root, skip_invalid_cases=True)
    assert list(table["case_id"]) == ["case_b"] and "degenerate affine" in skipped.loc[0, "problem"]


def test_predict_on_a_zero_affine_exits_2_with_one_line(tmp_path, rule_models, capsys):
    src = tmp_path / "ct.nii"
    save_nifti(src, phantom(seed=4)[0])
    patch_nifti_header(src, src, srow=[0.0] * 12, sform_code=1, qform_code=0)
    out = tmp_path / "out"
    code, seconds = predict(src, out, rule_models)
    err = capsys.readouterr().err
    assert code == 2 and seconds < FAST and "internal error" not in err
    (line,) = error_lines(err)
    assert "ct.nii" in line and "degenerate affine" in line
    assert not out.exists() and leftovers(tmp_path) == []


def test_zero_pixdim_is_flagged_in_report_json(tmp_path, rule_models, capsys):
    src = tmp_path / "ct.nii"
    save_nifti(src, phantom(seed=5)[0])
    patch_nifti_header(src, src, pixdim=[1.0, 0, 0, 0, 1, 0, 0, 0], qform_code=0, sform_code=0)
    out = tmp_path / "out"
    code, _ = predict(src, out, rule_models)
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["spacing_assumed"] is True and report["spacing_mm"] == [1.0, 1.0, 1.0]
    ok = tmp_path / "ok.nii.gz"
    save_nifti(ok, phantom(seed=5)[0])
    assert predict(ok, tmp_path / "out_ok", rule_models)[0] == 0
    assert json.loads((tmp_path / "out_ok" / "report.json").read_text())["spacing_assumed"] is False
