"""Ingestion: metadata, path resolution, canonical orientation and every bad input."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import phantom, write_case, write_nifti
from kedro_datasets.partitions import PartitionedDataset

from lungseg.datasets import NiftiDataset, NpzDataset
from lungseg.errors import DataValidationError
from lungseg.ingest import ingest_dataset
from lungseg.layout import resolve_relative


def _volumes(root: Path) -> dict:
    return PartitionedDataset(path=str(root), dataset="lungseg.datasets.NiftiDataset").load()


def _ingest(root: Path, **params):
    meta = pd.read_csv(root / "metadata.csv")
    return ingest_dataset(meta, _volumes(root), {"skip_invalid_cases": False, **params})


def test_ingests_both_intensity_kinds_and_kaggle_paths(tiny_dataset):
    table, canonical, skipped = _ingest(tiny_dataset)
    assert list(table["case_id"]) == ["case_a", "case_b", "case_c"]
    assert dict(zip(table["case_id"], table["source_kind"])) == {"case_a": "hu", "case_b": "uint8", "case_c": "hu"}
    assert table.loc[table.case_id == "case_c", "n_slices"].item() == 6
    assert table.loc[0, "ct_scan_path"] == "ct_scans/case_a_org.nii.gz"  # Kaggle prefix stripped
    assert np.allclose(table[["spacing_z", "spacing_y", "spacing_x"]].to_numpy()[0], (2.0, 0.8, 0.8))
    assert skipped.empty
    record = canonical["case_b"]()
    ct, lung, inf = phantom((8, 48, 48), "uint8", 2)
    assert np.array_equal(record["ct"], ct)
    assert np.array_equal(record["lung"], lung) and np.array_equal(record["infection"], inf)


def test_reoriented_case_comes_back_canonical(tmp_path):
    root = tmp_path / "raw"
    rel = write_case(root, "plain", "hu", seed=5)
    ct, lung, inf = phantom((8, 48, 48), "hu", 5)
    # Store a second copy of the same case in RAS with the first two array axes swapped.
    ras = np.array([[0, 0.8, 0, 0], [0.8, 0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1.0]])
    case = "swapped"
    paths = {}
    for key, arr in zip(rel, (ct, lung, inf, np.where(inf > 0, 3, lung).astype(np.uint8))):
        lps_xyz = arr.transpose(2, 1, 0)  # x=L, y=P, z=S
        ras_yx = np.flip(np.flip(lps_xyz, 0), 1).transpose(1, 0, 2)  # i=A(y), j=R(x)
        name = rel[key].replace("plain", case)
        nib.save(nib.Nifti1Image(np.ascontiguousarray(ras_yx), ras), str(root / name))
        paths[key] = name
    pd.DataFrame([rel, paths]).to_csv(root / "metadata.csv", index=False)
    table, canonical, _ = _ingest(root)
    assert table.loc[1, "orientation"] != table.loc[0, "orientation"]
    a, b = canonical["plain"](), canonical["swapped"]()
    assert np.array_equal(a["ct"], b["ct"]) and np.array_equal(a["lung"], b["lung"])
    assert np.allclose(a["spacing"], b["spacing"])


def test_canonical_cases_saved_lazily_through_partitioned_dataset(tiny_dataset, tmp_path):
    _, canonical, _ = _ingest(tiny_dataset)
    out = PartitionedDataset(path=str(tmp_path / "cases"), dataset="lungseg.datasets.NpzDataset",
                             filename_suffix=".npz")
    out.save(canonical)
    loaded = out.load()
    assert sorted(loaded) == ["case_a", "case_b", "case_c"]
    assert loaded["case_c"]()["ct"].shape == (6, 40, 40)


# ----------------------------------------------------------------------------- bad input
def _expect(root: Path, match: str, case: str | None = None, file: str | None = None):
    with pytest.raises(DataValidationError, match=match) as info:
        _ingest(root)
    msg = str(info.value)
    if case:
        assert case in msg, msg
    if file:
        assert file in msg, msg
    return info.value


def test_missing_file(tiny_dataset):
    (tiny_dataset / "infection_mask/case_b.nii.gz").unlink()
    _expect(tiny_dataset, "file not found", case="case_b", file="infection_mask/case_b.nii.gz")


def test_truncated_nifti(tiny_dataset):
    path = tiny_dataset / "ct_scans/case_c_org.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _expect(tiny_dataset, "truncated or corrupt", case="case_c", file="ct_scans/case_c_org.nii.gz")


def test_unreadable_nifti(tiny_dataset):
    (tiny_dataset / "lung_mask/case_a.nii.gz").write_bytes(gzip.compress(b"this is not a nifti file" * 20))
    _expect(tiny_dataset, "not a readable NIfTI", file="lung_mask/case_a.nii.gz")


def test_shape_mismatch(tiny_dataset):
    write_nifti(tiny_dataset / "lung_mask/case_a.nii.gz", np.zeros((8, 48, 40), np.uint8))
    _expect(tiny_dataset, r"lung_mask's shape \(40, 48, 8\) does not match the CT's shape \(48, 48, 8\) "
            r".'ct_scans/case_a_org.nii.gz'.", case="case_a", file="lung_mask/case_a.nii.gz")


def test_mask_value_outside_label_set(tiny_dataset):
    _, lung, _ = phantom((8, 48, 48), "hu", 1)
    lung[3, 10, 10] = 7
    write_nifti(tiny_dataset / "lung_mask/case_a.nii.gz", lung)
    _expect(tiny_dataset, r"value\(s\) \[7\] outside its label set \(0, 1, 2\)", case="case_a",
            file="lung_mask/case_a.nii.gz")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_in_ct(tiny_dataset, bad):
    ct, _, _ = phantom((6, 40, 40), "hu", 3)
    ct = ct.astype(np.float32)
    ct[2, 5, 5] = bad
    write_nifti(tiny_dataset / "ct_scans/case_c_org.nii.gz", ct)
    _expect(tiny_dataset, "NaN or infinite", case="case_c", file="ct_scans/case_c_org.nii.gz")


def test_metadata_missing_column(tiny_dataset):
    meta = pd.read_csv(tiny_dataset / "metadata.csv").drop(columns=["infection_mask"])
    with pytest.raises(DataValidationError, match=r"metadata.csv.*missing required column\(s\) \['infection_mask'\]"):
        ingest_dataset(meta, _volumes(tiny_dataset), {})


def test_path_escaping_root(tiny_dataset):
    meta = pd.read_csv(tiny_dataset / "metadata.csv")
    meta.loc[1, "ct_scan"] = "../../etc/passwd"
    with pytest.raises(DataValidationError, match="escapes the dataset root") as info:
        ingest_dataset(meta, _volumes(tiny_dataset), {})
    assert "case_b" in str(info.value) and "../../etc/passwd" in str(info.value)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("../input/covid19-ct-scans/ct_scans/coronacases_org_001.nii", "ct_scans/coronacases_org_001.nii"),
        ("ct_scans\\x.nii.gz", "ct_scans/x.nii.gz"),
        ("./lung_mask/../lung_mask/y.nii", "lung_mask/y.nii"),
    ],
)
def test_resolve_relative(raw, expected):
    assert resolve_relative(raw) == expected


def test_absolute_path_rejected():
    with pytest.raises(DataValidationError, match="absolute path"):
        resolve_relative("/etc/passwd", case="x")


def test_skip_invalid_cases_reports_them(tiny_dataset, caplog):
    (tiny_dataset / "ct_scans/case_b_org.nii.gz").unlink()
    with caplog.at_level(logging.WARNING):
        table, canonical, skipped = _ingest(tiny_dataset, skip_invalid_cases=True)
    assert list(table["case_id"]) == ["case_a", "case_c"] and sorted(canonical) == ["case_a", "case_c"]
    assert skipped.to_dict("records") == [
        {"case_id": "case_b", "file": "ct_scans/case_b_org.nii.gz", "problem": "file not found under the dataset root"}
    ]
    assert "case_b" in caplog.text


def test_empty_lung_mask_is_logged_not_fatal(tmp_path, caplog):
    root = tmp_path / "raw"
    rel = write_case(root, "nolung", "hu")
    write_nifti(root / rel["lung_mask"], np.zeros((8, 48, 48), np.uint8))
    write_nifti(root / rel["infection_mask"], np.zeros((8, 48, 48), np.uint8))
    write_nifti(root / rel["lung_and_infection_mask"], np.zeros((8, 48, 48), np.uint8))
    pd.DataFrame([rel]).to_csv(root / "metadata.csv", index=False)
    with caplog.at_level(logging.WARNING):
        table, _, _ = _ingest(root)
    assert table.loc[0, "lung_slices"] == 0
    assert "empty on every slice" in caplog.text


def test_nifti_dataset_save_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "out" / "x.nii.gz"
    ds = NiftiDataset(str(target))

    def boom(img, path):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", boom)
    with pytest.raises(Exception, match="disk full"):
        ds.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)))
    assert list((tmp_path / "out").iterdir()) == []


def test_npz_dataset_roundtrip(tmp_path):
    ds = NpzDataset(str(tmp_path / "a.npz"))
    ds.save({"x": np.arange(5, dtype=np.int16), "y": np.ones((2, 2), np.uint8)})
    out = ds.load()
    assert out["x"].dtype == np.int16 and out["x"].tolist() == [0, 1, 2, 3, 4] and out["y"].sum() == 4


def test_skip_invalid_cases_also_skips_a_bad_path(tiny_dataset):
    meta = pd.read_csv(tiny_dataset / "metadata.csv")
    meta.loc[1, "ct_scan"] = "../../etc/passwd"
    table, _, skipped = ingest_dataset(meta, _volumes(tiny_dataset), {"skip_invalid_cases": True})
    assert list(table["case_id"]) == ["case_a", "case_c"]
    assert skipped.loc[0, "case_id"] == "case_b" and "escapes the dataset root" in skipped.loc[0, "problem"]
