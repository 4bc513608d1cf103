"""Clean exits: SIGTERM cleans up like Ctrl-C (exit 143), one run per output folder, an unwritable -o is
refused before any model is loaded, and `lungseg ui` says when it is reachable from other machines."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import zipfile

import pytest
import tomllib
from hardening_helpers import (
    FAST,
    PROJECT_ROOT,
    error_lines,
    leftovers,
    phantom,
    predict,
    rule_models_fixture,  # noqa: F401 - the fixture
    save_nifti,
    spawn_predict,
    wait_for,
)

from lungseg import cli
from lungseg.inference.dicom_write import write_dicom_series
from lungseg.inference.output_lock import lock_path

#: Seconds from the signal to the child's exit: clean-up is immediate, but a loaded TensorFlow takes a
#: moment to unload, and the suite shares its CPUs.
SIGNAL_EXIT = 10.0

#: A hook run in the child before `lungseg predict`: ``TARGET`` (module, attribute) is wrapped so that the
#: run writes FLAG and waits there, where the test sends its signal.
HOOK = """
import importlib, pathlib, time
_mod = importlib.import_module({module!r})
_orig = getattr(_mod, {attr!r})
def _hook(*args, **kwargs):
    pathlib.Path({flag!r}).write_text("here")
    time.sleep(120)
    return _orig(*args, **kwargs)
setattr(_mod, {attr!r}, _hook)
"""


def _zip_series(tmp_path):
    write_dicom_series(phantom(seed=1)[0], (2.5, 0.8, 0.8), tmp_path / "series")
    with zipfile.ZipFile(tmp_path / "scan.zip", "w") as zf:
        for f in sorted((tmp_path / "series").iterdir()):
            zf.write(f, f.name)
    return tmp_path / "scan.zip"


def _reading_a_zip(tmp_path, rule_models):
    """``lungseg predict`` on a zipped series in a child, held while it reads the extracted series:
    (the zip, the child's TMPDIR, -o, the process)."""
    src = _zip_series(tmp_path)
    systmp, flag, out = tmp_path / "systmp", tmp_path / "flag", tmp_path / "out"
    systmp.mkdir()
    hook = HOOK.format(module="lungseg.inference.dicom", attr="read_series_folder", flag=str(flag))
    proc = spawn_predict([str(src), "-o", str(out), "--models-dir", str(rule_models), "--no-progress"], systmp, hook)
    wait_for(flag, proc)
    return src, systmp, out, proc


def _signal_and_wait(proc, signum):
    sent = time.perf_counter()
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, err, time.perf_counter() - sent


@pytest.mark.parametrize(
    "signum, code, word",
    [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")],
    ids=["SIGTERM", "SIGINT"],
)
def test_a_signal_while_a_zip_is_read_removes_the_extraction_folder(tmp_path, rule_models, signum, code, word):
    src, systmp, out, proc = _reading_a_zip(tmp_path, rule_models)
    assert [p.name[:14] for p in systmp.iterdir()] == ["lungseg-dicom-"]  # extracted, being read
    rc, err, seconds = _signal_and_wait(proc, signum)
    assert rc == code, err
    assert f"lungseg: {word}" in err and "Traceback" not in err and seconds < SIGNAL_EXIT
    assert list(systmp.iterdir()) == []  # the extraction folder is gone
    assert not out.exists() and not lock_path(out).exists()


def test_sigterm_during_the_write_leaves_no_temporary_output(tmp_path, rule_models):
    src = tmp_path / "chest.nii.gz"
    save_nifti(src, phantom(seed=2)[0])
    systmp, flag, out = tmp_path / "systmp", tmp_path / "flag", tmp_path / "out"
    systmp.mkdir()
    hook = HOOK.format(module="lungseg.inference.report", attr="_write_png", flag=str(flag))
    proc = spawn_predict([str(src), "-o", str(out), "--models-dir", str(rule_models), "--no-progress"], systmp, hook)
    wait_for(flag, proc)
    partial = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]
    assert len(partial) == 1 and (tmp_path / partial[0] / "lung_mask.nii.gz").is_file()  # half-written
    assert lock_path(out).is_file()
    rc, err, seconds = _signal_and_wait(proc, signal.SIGTERM)
    assert rc == 143 and "lungseg: terminated (SIGTERM)" in err and seconds < SIGNAL_EXIT
    assert not out.exists() and leftovers(tmp_path) == []  # no .out.tmp-*, no lock
    assert list(systmp.iterdir()) == []


def test_a_second_run_to_the_same_output_fails_at_once(tmp_path, rule_models, capsys):
    src = tmp_path / "chest.nii.gz"
    save_nifti(src, phantom(seed=3)[0])
    flag, out = tmp_path / "flag", tmp_path / "out"
    hook = HOOK.format(module="lungseg.inference.readers", attr="read_input", flag=str(flag))
    first = spawn_predict([str(src), "-o", str(out), "--models-dir", str(rule_models), "--no-progress"], tmp_path, hook)
    try:
        wait_for(flag, first)
        code, seconds = predict(src, out, rule_models)
        (line,) = error_lines(capsys.readouterr().err)
        assert code == 2 and seconds < FAST
        assert f"is being written by another lungseg run (pid {first.pid}" in line and ".out.lock" in line
    finally:
        rc, _, _ = _signal_and_wait(first, signal.SIGTERM)
    assert rc == 143 and not lock_path(out).exists()
    # a lock left by a run that died without cleaning up (SIGKILL) is taken over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_path(out).write_text(f"{dead.pid}\n")
    code, _ = predict(src, out, rule_models)
    assert code == 0 and (out / "report.json").is_file() and not lock_path(out).exists()


def test_an_unwritable_output_is_refused_before_any_model_is_loaded(tmp_path, capsys):
    src = tmp_path / "chest.nii.gz"
    save_nifti(src, phantom(seed=4)[0])
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    no_models = tmp_path / "no_models"  # a model look-up would fail with "no trained lung model"
    code, seconds = predict(src, tmp_path / "notes.txt" / "out", no_models)
    (line,) = error_lines(capsys.readouterr().err)
    assert code == 2 and seconds < FAST and "is not writable" in line and "no trained" not in line
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file permissions")
def test_a_read_only_parent_is_refused(tmp_path, capsys):
    src = tmp_path / "chest.nii.gz"
    save_nifti(src, phantom(seed=5)[0])
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    try:
        code, _ = predict(src, ro / "out", tmp_path / "no_models")
        (line,) = error_lines(capsys.readouterr().err)
        assert code == 2 and "is not writable" in line
    finally:
        ro.chmod(0o755)


def test_ui_warns_when_not_on_loopback_and_turns_usage_stats_off(monkeypatch, tmp_path, caplog):
    seen = {}

    class FakePopen:
        def __init__(self, cmd, stderr=None, **kwargs):
            seen["cmd"] = cmd
            self.stderr = None

        def wait(self, timeout=None):
            return 0

        def poll(self):
            return 0

    app = tmp_path / "streamlit_app.py"
    app.write_text("")
    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    monkeypatch.setattr(cli, "streamlit_app_path", lambda: app)
    with caplog.at_level(logging.WARNING, logger="lungseg.cli"):
        assert cli.main(["ui", "-v"]) == 0
    assert "no authentication" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="lungseg.cli"):
        assert cli.main(["ui", "-v", "--host", "0.0.0.0"]) == 0
    assert "listens on 0.0.0.0" in caplog.text and "no authentication" in caplog.text
    cmd = seen["cmd"]
    assert cmd[cmd.index("--browser.gatherUsageStats") + 1] == "false"
    config = tomllib.loads((PROJECT_ROOT / ".streamlit" / "config.toml").read_text())
    assert config["browser"]["gatherUsageStats"] is False  # `streamlit run` from the project folder too
    assert cmd[cmd.index("--client.toolbarMode") + 1] == "minimal"  # no "Deploy" button
    assert config["client"]["toolbarMode"] == "minimal"


def test_memory_error_is_a_clear_exit_2(tmp_path, rule_models, monkeypatch, capsys):
    from lungseg.inference import segment

    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 6.8 GiB")

    src = tmp_path / "chest.nii.gz"
    save_nifti(src, phantom(seed=6)[0])
    monkeypatch.setattr(segment.Segmenter, "segment", no_memory)
    code, _ = predict(src, tmp_path / "out", rule_models)
    (line,) = error_lines(capsys.readouterr().err)
    assert code == 2 and "not enough memory" in line and "6.8 GiB" in line
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_an_extraction_folder_left_by_a_killed_run_is_swept_by_the_next_one(tmp_path, rule_models):
    """#28 item 7 (row 11): SIGKILL leaves lungseg-dicom-<pid>-* in TMPDIR; the next run removes it (its
    process is gone), keeps a live process's folder and its own is gone when it ends."""
    src, systmp, out, proc = _reading_a_zip(tmp_path, rule_models)
    proc.kill()
    proc.wait(timeout=60)
    (left,) = list(systmp.iterdir())
    assert left.name.startswith(f"lungseg-dicom-{proc.pid}-") and any(left.iterdir())  # left behind by SIGKILL
    alive = systmp / f"lungseg-dicom-{os.getpid()}-busy"  # a running process's folder is not touched
    alive.mkdir()
    rerun = spawn_predict([str(src), "-o", str(out), "--models-dir", str(rule_models), "--no-progress"], systmp)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert [p.name for p in systmp.iterdir()] == [alive.name]
