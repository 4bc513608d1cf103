"""#28 item 2 (rows 10 and 12): an interrupted batch keeps its finished cases and a partial summary.csv,
and a rerun resumes; a batch too long or full of missing files is refused or summed up in one line."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time

import pandas as pd
from hardening_helpers import (
    LUNG_HU,
    VERSION,
    VMEM_MB,
    band_model,
    error_lines,
    leftovers,
    phantom,
    predict,
    rule_models_fixture,  # noqa: F401 - the fixture
    run_bounded,
    save_nifti,
    spawn_predict,
    unit,
    wait_for,
)

from lungseg.inference.batch import JOURNAL_FILE
from lungseg.inference.ownership import read_manifest

#: A hook run in the child: the second case waits at FLAG, where the test sends SIGTERM.
SECOND_CASE_WAITS = """
import pathlib, time
import lungseg.inference.batch as _batch
_orig, _calls = _batch.segment_case, []
def _hook(*args, **kwargs):
    _calls.append(1)
    if len(_calls) == 2:
        pathlib.Path({flag!r}).write_text("here")
        time.sleep(120)
    return _orig(*args, **kwargs)
_batch.segment_case = _hook
"""


def _batch_folder(folder, n=3):
    for i in range(n):
        save_nifti(folder / f"c{i}.nii.gz", phantom(seed=20 + i)[0])
    return folder


def test_row10_sigterm_keeps_finished_cases_writes_a_partial_summary_and_the_rerun_resumes(
        tmp_path, rule_models, capsys, caplog):
    batch, out, flag = _batch_folder(tmp_path / "in"), tmp_path / "out", tmp_path / "flag"
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    proc = spawn_predict([str(batch), "-o", str(out), "--models-dir", str(rule_models), "--no-progress"], systmp,
                         SECOND_CASE_WAITS.format(flag=str(flag)))
    wait_for(flag, proc)
    sent = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and time.perf_counter() - sent < 10, err
    assert "batch interrupted after 1 of 3 cases" in err and "rerun the same command to resume" in err
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["case"]) == ["c0", "c1", "c2"]
    assert list(summary["status"]) == ["ok", "not_run", "not_run"]
    assert (out / "c0" / "report.json").is_file() and not (out / "c1").exists()
    assert leftovers(tmp_path) == [] and list(systmp.iterdir()) == []  # no staging folder, no lock
    assert {"c0", "summary.csv", JOURNAL_FILE} <= set(read_manifest(out)["entries"])
    first_report = (out / "c0" / "report.json").stat().st_mtime_ns

    caplog.set_level(logging.INFO, logger="lungseg")
    code, _ = predict(batch, out, rule_models)
    assert code == 0, capsys.readouterr().err
    assert "1 of 3 cases were finished by an earlier run" in caplog.text
    assert (out / "c0" / "report.json").stat().st_mtime_ns == first_report  # not segmented again
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["status"]) == ["ok"] * 3 and summary["lung_ml_total"].notna().all()


def test_a_changed_input_is_segmented_again_on_resume(tmp_path, rule_models, capsys, caplog):
    batch, out = _batch_folder(tmp_path / "in", 2), tmp_path / "out"
    assert predict(batch, out, rule_models)[0] == 0, capsys.readouterr().err
    kept = (out / "c1" / "report.json").stat().st_mtime_ns
    changed = (out / "c0" / "report.json").stat().st_mtime_ns
    save_nifti(batch / "c0.nii.gz", phantom(seed=99)[0])  # another scan under the same name
    caplog.set_level(logging.INFO, logger="lungseg")
    assert predict(batch, out, rule_models)[0] == 0
    assert "1 of 2 cases were finished by an earlier run" in caplog.text and "(c1)" in caplog.text
    assert (out / "c1" / "report.json").stat().st_mtime_ns == kept
    assert (out / "c0" / "report.json").stat().st_mtime_ns != changed


def test_a_model_overwritten_at_the_same_path_makes_the_rerun_segment_again(tmp_path, rule_models, capsys, caplog):
    """The journal's run key holds a SHA-256 of each model file and its config, not only its path: a lung
    model retrained into the same file (here with its old mtime put back, as ``cp -p`` or a sync would)
    does not let the earlier cases be skipped."""
    models = tmp_path / "models"
    shutil.copytree(rule_models, models)
    batch, out = _batch_folder(tmp_path / "in", 2), tmp_path / "out"
    assert predict(batch, out, models)[0] == 0, capsys.readouterr().err
    reports = {c: (out / c / "report.json").stat().st_mtime_ns for c in ("c0", "c1")}
    lung = models / "lung_unet" / "model.keras" / VERSION / "model.keras"
    stat = lung.stat()
    band_model(64, unit(LUNG_HU) - 0.06, unit(LUNG_HU) + 0.07).save(lung)  # another model, the same path
    os.utime(lung, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    caplog.set_level(logging.INFO, logger="lungseg")
    assert predict(batch, out, models)[0] == 0, capsys.readouterr().err
    assert "finished by an earlier run" not in caplog.text
    assert all((out / c / "report.json").stat().st_mtime_ns != t for c, t in reports.items())  # both redone
    assert list(pd.read_csv(out / "summary.csv")["status"]) == ["ok", "ok"] and leftovers(tmp_path) == []


def test_row12_a_100k_row_csv_is_refused_by_the_row_limit_at_once_and_small(tmp_path):
    csv = tmp_path / "metadata.csv"
    csv.write_text("ct_scan\n" + "".join(f"ct_scans/missing_{i}.nii.gz\n" for i in range(100_000)))
    code, err, seconds, peak_mb = run_bounded(["predict", csv, "-o", tmp_path / "out"], vmem_mb=VMEM_MB)
    assert code == 2, err
    (line,) = error_lines(err)
    assert "100,000 rows, over the limit of 10,000" in line and "max_batch_cases" in line and len(line) < 400
    assert len(err.splitlines()) <= 3, err  # one line, not one per row
    assert seconds < 3 and peak_mb < 500, (seconds, peak_mb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metadata.csv"]


def test_row12_missing_files_are_one_line_and_all_missing_is_refused_before_any_model(
        tmp_path, rule_models, capsys, caplog):
    csv = tmp_path / "metadata.csv"
    save_nifti(tmp_path / "ct_scans" / "real.nii.gz", phantom(seed=3)[0])
    csv.write_text("ct_scan\nct_scans/real.nii.gz\n" + "".join(f"ct_scans/gone_{i}.nii.gz\n" for i in range(200)))
    caplog.set_level(logging.INFO, logger="lungseg")
    code, _ = predict(csv, tmp_path / "out", rule_models)
    err = capsys.readouterr().err
    assert code == 2
    logged = [r.getMessage() for r in caplog.records if "gone_" in r.getMessage()]
    assert len(logged) == 1 and "200 of 201 cases have no input file" in logged[0], logged  # not one per row
    (line,) = error_lines(err)
    assert "200 of 201 cases failed" in line and "(200 in all)" in line and len(line) < 600
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert len(summary) == 201 and summary.loc[0, "status"] == "ok"

    csv.write_text("ct_scan\n" + "".join(f"ct_scans/gone_{i}.nii.gz\n" for i in range(50)))
    empty_models = tmp_path / "no_models"
    empty_models.mkdir()  # a model look-up would fail with another message: the inputs are checked first
    code, _ = predict(csv, tmp_path / "out2", empty_models)
    (line,) = error_lines(capsys.readouterr().err)
    assert code == 2 and "none of the 50 cases' input files exists" in line and "gone_0.nii.gz" in line
    assert not (tmp_path / "out2").exists()


def test_a_header_only_csv_says_so(tmp_path, rule_models, capsys):
    """Row 19 (cosmetic): a header-only csv was reported as 'no NIfTI files'."""
    (tmp_path / "metadata.csv").write_text("ct_scan,lung_mask\n")
    code, _ = predict(tmp_path / "metadata.csv", tmp_path / "out", rule_models)
    (line,) = error_lines(capsys.readouterr().err)
    assert code == 2 and "a header and no rows" in line and not (tmp_path / "out").exists()
