"""Names from data are never paths: hostile case ids and symlinks, in the batch CLI and the Kedro pipelines."""

from __future__ import annotations

import os

import pandas as pd
import pytest
import yaml
from hardening_helpers import (
    FAST,
    PROJECT_ROOT,
    error_lines,
    phantom,
    predict,
    rule_models_fixture,  # noqa: F401 - the fixture
    save_nifti,
)

from lungseg.errors import DataValidationError, InputError
from lungseg.layout import check_case_id

HOSTILE = ["../../x", "/abs/path", "..", ".", "", "a/b", "a\\b", ".hidden", "x..y", "a b", "ok;rm -rf", "é"]


@pytest.mark.parametrize("case", HOSTILE, ids=repr)
def test_the_case_id_validator_refuses_every_path_like_id(case):
    with pytest.raises(DataValidationError, match="unsafe case id"):
        check_case_id(case, "somewhere")


@pytest.mark.parametrize("case", ["coronacases_001", "radiopaedia_4_85506_1", "_org", "P-12.v2", "a" * 128])
def test_ordinary_ids_pass(case):
    assert check_case_id(case) == case


def _batch_csv(root, case_ids):
    rows = []
    for i, case in enumerate(case_ids):
        save_nifti(root / "ct_scans" / f"c{i}_org.nii.gz", phantom(seed=i)[0])
        rows.append({"case": case, "ct_scan": f"ct_scans/c{i}_org.nii.gz"})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root / "metadata.csv"


@pytest.mark.parametrize("bad", ["../../x", "/abs/path"])
def test_batch_cli_refuses_a_hostile_case_column_and_creates_nothing(tmp_path, rule_models, capsys, bad):
    root = tmp_path / "work" / "raw"
    csv = _batch_csv(root, ["good_case", bad])
    out = tmp_path / "work" / "out"
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    code, seconds = predict(csv, out, rule_models)
    err = capsys.readouterr().err
    assert code == 2 and seconds < FAST
    (line,) = error_lines(err)
    assert f"unsafe case id {bad!r}" in line and "row 3" in line and "column 'case'" in line
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before  # nothing created
    assert not os.path.exists("/abs/path") and not (tmp_path / "x").exists()


def test_batch_folder_file_names_go_through_the_same_validator(tmp_path, rule_models, capsys):
    folder = tmp_path / "cases"
    save_nifti(folder / "p1.nii.gz", phantom(seed=1)[0])
    save_nifti(folder / "bad name;x.nii.gz", phantom(seed=2)[0])
    code, _ = predict(folder, tmp_path / "out", rule_models)
    (line,) = error_lines(capsys.readouterr().err)
    assert code == 2 and "unsafe case id 'bad name;x'" in line and not (tmp_path / "out").exists()


def test_batch_csv_symlink_leading_outside_its_folder_is_refused(tmp_path, rule_models, capsys):
    outside = tmp_path / "secret"
    save_nifti(outside / "ct.nii.gz", phantom(seed=3)[0])
    root = tmp_path / "raw"
    (root / "ct_scans").mkdir(parents=True)
    (root / "ct_scans" / "p_org.nii.gz").symlink_to(outside / "ct.nii.gz")
    pd.DataFrame([{"ct_scan": "ct_scans/p_org.nii.gz"}]).to_csv(root / "metadata.csv", index=False)
    code, _ = predict(root / "metadata.csv", tmp_path / "out", rule_models)
    (line,) = error_lines(capsys.readouterr().err)
    assert code == 2 and "leads outside" in line and "p_org.nii.gz" in line


def test_kedro_inference_node_refuses_a_hostile_case_id(tmp_path, rule_models):
    from lungseg.pipelines.inference.nodes import run_inference

    csv = _batch_csv(tmp_path / "raw", ["../../escape"])
    params = yaml.safe_load((PROJECT_ROOT / "conf" / "base" / "parameters_inference.yml").read_text())["inference"]
    params.update(input=str(csv), output_dir=str(tmp_path / "inference"), models_dir=str(rule_models), progress=False)
    with pytest.raises(InputError, match=r"unsafe case id '\.\./\.\./escape'"):
        run_inference(params)
    assert not (tmp_path / "inference").exists() and not (tmp_path / "escape").exists()


def _ingestion_params(raw_root):
    params = yaml.safe_load((PROJECT_ROOT / "conf" / "base" / "parameters_ingestion.yml").read_text())["ingestion"]
    return {**params, "raw_root": str(raw_root)}


def test_ingestion_refuses_a_hostile_mask_name_by_row(tiny_dataset):
    from lungseg.ingest import check_metadata

    meta = pd.read_csv(tiny_dataset / "metadata.csv")
    meta.loc[1, "lung_mask"] = "lung_mask/evil name;x.nii.gz"
    with pytest.raises(DataValidationError, match=r"row 3, column 'lung_mask'.*unsafe case id 'evil name;x'"):
        check_metadata(meta)
    skipped = []
    table = check_metadata(meta, skipped)
    assert list(table["case_id"]) == ["case_a", "case_c"] and "unsafe case id" in skipped[0]["problem"]


def test_ingestion_refuses_symlinks_leading_outside_raw_root(tiny_dataset, tmp_path):
    from kedro_datasets.partitions import PartitionedDataset

    from lungseg.pipelines.ingestion.nodes import ingest_cases

    outside = tmp_path / "elsewhere.nii.gz"
    target = tiny_dataset / "ct_scans" / "case_b_org.nii.gz"
    outside.write_bytes(target.read_bytes())
    target.unlink()
    target.symlink_to(outside)
    meta = pd.read_csv(tiny_dataset / "metadata.csv")
    volumes = PartitionedDataset(path=str(tiny_dataset), dataset="lungseg.datasets.NiftiDataset").load()
    with pytest.raises(DataValidationError, match=r"case 'case_b'.*symlink under the dataset root .* leads outside"):
        ingest_cases(meta, volumes, _ingestion_params(tiny_dataset))
    params = {**_ingestion_params(tiny_dataset), "skip_invalid_cases": True}
    table, _, skipped = ingest_cases(meta, volumes, params)
    assert list(table["case_id"]) == ["case_a", "case_c"] and list(skipped["case_id"]) == ["case_b"]


def test_repeated_case_ids_never_collide_with_a_real_one(tmp_path, caplog):
    """#28 row 2: ids a, a, a_2 used to give two a_2 (one case's masks lost); now a, a_3, a_2."""
    from lungseg.inference.batch_cases import find_cases

    for name in ("one", "two", "three"):
        save_nifti(tmp_path / f"{name}.nii.gz", phantom(shape=(4, 32, 32))[0])
    pd.DataFrame({"case": ["a", "a", "a_2"], "ct_scan": ["one.nii.gz", "two.nii.gz", "three.nii.gz"]}).to_csv(
        tmp_path / "metadata.csv", index=False)
    with caplog.at_level("WARNING"):
        cases = find_cases(tmp_path / "metadata.csv")
    assert [(c.case, c.file.name) for c in cases] == [("a", "one.nii.gz"), ("a_3", "two.nii.gz"), ("a_2", "three.nii.gz")]
    assert "case id 'a' is repeated" in caplog.text and "'a_3'" in caplog.text


def test_row2_the_batch_cli_writes_a_a_2_and_a_3_each_from_its_own_file(tmp_path, rule_models, capsys, caplog):
    """#28 row 2 end to end: ``lungseg predict metadata.csv`` with ids a, a, a_2 exits 0 with three case
    folders, each holding the masks of its own input (told apart by their number of slices), three rows
    in summary.csv, one warning naming the renamed file, and nothing else left in the input folder or -o."""
    import nibabel as nib

    root = tmp_path / "raw"
    slices = {"one": 12, "two": 14, "three": 16}
    for i, (name, z) in enumerate(slices.items()):
        save_nifti(root / f"{name}.nii.gz", phantom(shape=(z, 64, 64), seed=30 + i)[0])
    pd.DataFrame({"case": ["a", "a", "a_2"], "ct_scan": [f"{n}.nii.gz" for n in slices]}).to_csv(
        root / "metadata.csv", index=False)
    before = sorted(p.name for p in root.iterdir())
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        code, seconds = predict(root / "metadata.csv", out, rule_models)
    captured = capsys.readouterr()
    assert code == 0 and seconds < 10 * FAST, captured.err
    warnings = [r.getMessage() for r in caplog.records if "is repeated" in r.getMessage()]
    assert len(warnings) == 1 and "case id 'a' is repeated" in warnings[0] and "two.nii.gz" in warnings[0]
    assert "is written as case 'a_3'" in warnings[0]
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary["case"]) == ["a", "a_2", "a_3"] and (summary["status"] == "ok").all()
    expected = {"a": "one", "a_3": "two", "a_2": "three"}
    for case, name in expected.items():
        assert summary.set_index("case").loc[case, "input"].endswith(f"{name}.nii.gz")
        mask = nib.load(str(out / case / "lung_mask.nii.gz"))
        assert mask.shape[2] == slices[name], (case, mask.shape)  # its own input's grid, not another case's
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["a", "a_2", "a_3"]
    assert sorted(p.name for p in root.iterdir()) == before and error_lines(captured.err) == []
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []
