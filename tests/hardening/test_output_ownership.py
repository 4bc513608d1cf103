"""#28 item 1: lungseg writes only into folders that are its own (by their .lungseg-output.json), replaces
only what that manifest lists, refuses a symlinked -o before any model loads, and sweeps the staging
folders of killed runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
from hardening_helpers import (
    FAST,
    error_lines,
    leftovers,
    phantom,
    predict,
    rule_models_fixture,  # noqa: F401 - the fixture
    save_nifti,
)

from lungseg.inference.batch import JOURNAL_FILE
from lungseg.inference.ownership import MANIFEST_FILE, read_manifest, sweep_stale


def _listing(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _stranger(folder):
    """A folder of someone else's files, with a report.json of their own (row 1 of the issue)."""
    (folder / "results" / "fig").mkdir(parents=True)
    (folder / "report.json").write_text('{"theirs": true}')
    (folder / "summary.csv").write_text("a,b\n1,2\n")
    (folder / "thesis.docx").write_bytes(b"precious")
    (folder / "results" / "fig" / "a.png").write_bytes(b"png")
    return _listing(folder)


def test_a_strangers_folder_with_a_report_json_is_refused_and_left_as_it_was(tmp_path, rule_models, capsys):
    src = tmp_path / "chest.nii.gz"
    save_nifti(src, phantom(seed=1)[0])
    theirs = tmp_path / "theirs"
    before = _stranger(theirs)
    code, seconds = predict(src, theirs, rule_models)
    (line,) = error_lines(capsys.readouterr().err)
    assert code == 2 and seconds < FAST
    assert "is not empty and is not a lungseg output" in line and MANIFEST_FILE in line and "--overwrite" in line
    assert _listing(theirs) == before and leftovers(tmp_path) == []
    # batch mode as well: a summary.csv of someone else's is no batch output
    batch = tmp_path / "batch_in"
    save_nifti(batch / "a.nii.gz", phantom(seed=2)[0])
    code, _ = predict(batch, theirs, rule_models)
    (line,) = error_lines(capsys.readouterr().err)
    assert code == 2 and "is not a lungseg batch output" in line and _listing(theirs) == before


def test_overwrite_writes_into_a_foreign_folder_and_replaces_only_same_named_files(tmp_path, rule_models, capsys):
    src = tmp_path / "chest.nii.gz"
    save_nifti(src, phantom(seed=1)[0])
    theirs = tmp_path / "theirs"
    before = _stranger(theirs)
    code, _ = predict(src, theirs, rule_models, "--overwrite")
    assert code == 0, capsys.readouterr().err
    after = _listing(theirs)
    for name in ("thesis.docx", "summary.csv", "results/fig/a.png"):
        assert after[name] == before[name]  # not ours: untouched
    assert json.loads(after["report.json"])["input"]  # the same-named report.json is now lungseg's
    manifest = read_manifest(theirs)
    assert manifest["kind"] == "case" and "thesis.docx" not in manifest["entries"]
    assert {"report.json", "lung_mask.nii.gz", "overlays"} <= set(manifest["entries"])


def test_a_rerun_replaces_only_what_the_manifest_lists(tmp_path, rule_models, capsys):
    src = tmp_path / "chest.nii.gz"
    save_nifti(src, phantom(seed=3)[0])
    out = tmp_path / "out"
    assert predict(src, out, rule_models)[0] == 0
    (out / "my_notes.txt").write_text("kept")
    (out / "overlays" / "slice_999.png").write_bytes(b"stale overlay")
    assert predict(src, out, rule_models)[0] == 0, capsys.readouterr().err
    assert (out / "my_notes.txt").read_text() == "kept"
    assert not (out / "overlays" / "slice_999.png").exists()
    assert leftovers(tmp_path) == []


def test_a_batch_is_its_own_output_and_its_rerun_keeps_other_files(tmp_path, rule_models, capsys):
    batch = tmp_path / "batch_in"
    for i in range(2):
        save_nifti(batch / f"c{i}.nii.gz", phantom(seed=10 + i)[0])
    out = tmp_path / "out"
    assert predict(batch, out, rule_models)[0] == 0, capsys.readouterr().err
    manifest = read_manifest(out)
    assert manifest["kind"] == "batch" and set(manifest["entries"]) == {"c0", "c1", "summary.csv", JOURNAL_FILE}
    assert read_manifest(out / "c0")["kind"] == "case"
    (out / "analysis.ipynb").write_text("{}")
    assert predict(batch, out, rule_models)[0] == 0
    assert (out / "analysis.ipynb").read_text() == "{}"
    assert list(pd.read_csv(out / "summary.csv")["case"]) == ["c0", "c1"]
    # a single-case run into a batch folder is refused: the kinds differ
    code, _ = predict(batch / "c0.nii.gz", out, rule_models)
    (line,) = error_lines(capsys.readouterr().err)
    assert code == 2 and "holds a lungseg batch output, not a lungseg output" in line


def test_a_symlinked_output_is_refused_before_any_model_loads(tmp_path, capsys):
    src = tmp_path / "chest.nii.gz"
    save_nifti(src, phantom(seed=4)[0])
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    no_models = tmp_path / "no_models"  # a model look-up would fail with "no trained lung model"
    code, seconds = predict(src, tmp_path / "link", no_models)
    (line,) = error_lines(capsys.readouterr().err)
    assert code == 2 and seconds < FAST and "is a symbolic link" in line and "no trained" not in line
    assert list(real.iterdir()) == [] and (tmp_path / "link").is_symlink() and leftovers(tmp_path) == []


def test_staging_folders_of_dead_runs_are_swept_and_live_ones_kept(tmp_path, rule_models, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # this process has exited: its pid is free (or reused, then its folder stays)
    out = tmp_path / "out"
    stale = tmp_path / f".out.tmp-{dead_pid}-abc123"
    (stale / "overlays").mkdir(parents=True)
    (stale / "lung_mask.nii.gz").write_bytes(b"half written")
    live = tmp_path / f".out.tmp-{os.getpid()}-live"
    live.mkdir()
    other = tmp_path / ".other.tmp-1-x"  # another output's: not ours to judge
    other.mkdir()
    assert sweep_stale(out) == [stale] and live.exists() and other.exists()
    stale.mkdir()
    src = tmp_path / "chest.nii.gz"
    save_nifti(src, phantom(seed=5)[0])
    assert predict(src, out, rule_models)[0] == 0, capsys.readouterr().err
    assert not stale.exists() and live.exists()  # a successful rerun cleans up after the killed one

