"""`lungseg predict` on bad inputs: one clear error line, exit code 2, nothing left in OUTDIR."""

from __future__ import annotations

import io
import subprocess

import cv2
import nibabel as nib
import numpy as np
import pytest

from lungseg import cli


def _assert_clean_failure(capsys, tmp_path, code, out, *words):
    captured = capsys.readouterr()
    assert code == 2
    errors = [line for line in captured.err.splitlines() if line.startswith("lungseg: error:")]
    assert len(errors) == 1, captured.err
    assert "Traceback" not in captured.err
    for word in words:
        assert word in errors[0], errors[0]
    assert not out.exists() or not any(out.iterdir())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def _predict(tmp_path, src, *extra):
    out = tmp_path / "out"
    code = cli.main(["predict", str(src), "-o", str(out), "--models-dir", str(tmp_path / "no_models"), "--no-progress", *extra])
    return code, out


def test_colour_photo(tmp_path, capsys):
    photo = np.dstack([np.full((64, 64), 10, np.uint8), np.full((64, 64), 120, np.uint8), np.full((64, 64), 250, np.uint8)])
    cv2.imwrite(str(tmp_path / "holiday.png"), photo)
    code, out = _predict(tmp_path, tmp_path / "holiday.png")
    _assert_clean_failure(capsys, tmp_path, code, out, "holiday.png", "colour")


def test_one_pixel_image(tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "dot.png"), np.zeros((1, 1), np.uint8))
    code, out = _predict(tmp_path, tmp_path / "dot.png")
    _assert_clean_failure(capsys, tmp_path, code, out, "dot.png", "1x1")


def test_empty_file(tmp_path, capsys):
    (tmp_path / "scan.nii.gz").write_bytes(b"")
    code, out = _predict(tmp_path, tmp_path / "scan.nii.gz")
    _assert_clean_failure(capsys, tmp_path, code, out, "scan.nii.gz", "empty")


def test_4d_nifti(tmp_path, capsys):
    nib.save(nib.Nifti1Image(np.zeros((40, 40, 4, 2), np.int16), np.eye(4)), str(tmp_path / "perfusion.nii.gz"))
    code, out = _predict(tmp_path, tmp_path / "perfusion.nii.gz")
    _assert_clean_failure(capsys, tmp_path, code, out, "perfusion.nii.gz", "4D")


def test_missing_input(tmp_path, capsys):
    code, out = _predict(tmp_path, tmp_path / "nowhere.nii.gz")
    _assert_clean_failure(capsys, tmp_path, code, out, "nowhere.nii.gz", "no such file")


def test_missing_model_names_the_training_command(tmp_path, capsys):
    ct = np.full((40, 40, 3), -1000, np.int16)
    nib.save(nib.Nifti1Image(ct, np.diag([-1.0, -1.0, 1.0, 1.0])), str(tmp_path / "ct.nii.gz"))
    code, out = _predict(tmp_path, tmp_path / "ct.nii.gz")
    _assert_clean_failure(capsys, tmp_path, code, out, "no trained lung model", "kedro run --pipelines=lung_unet", "make demo")
    code, out = _predict(tmp_path, tmp_path / "ct.nii.gz", "--lung-model", str(tmp_path / "gone.keras"))
    _assert_clean_failure(capsys, tmp_path, code, out, "gone.keras", "kedro run --pipelines=lung_unet")


def test_foreign_output_folder_is_not_overwritten(tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "slice.png"), np.full((64, 64), 90, np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code = cli.main(["predict", str(tmp_path / "slice.png"), "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 2 and "not empty" in captured.err
    assert (out / "notes.txt").read_text() == "keep me"


def test_bad_arguments_exit_2(tmp_path):
    with pytest.raises(SystemExit) as exc:
        cli.main(["predict", str(tmp_path), "-o", str(tmp_path / "o"), "--tasks", "lungs,heart"])
    assert exc.value.code == 2
    assert cli.main([]) == 2


def test_ui_launches_streamlit_on_the_shipped_app(monkeypatch, tmp_path, capsys):
    assert cli.streamlit_app_path().as_posix().endswith("src/lungseg/app/streamlit_app.py")
    app = tmp_path / "streamlit_app.py"
    app.write_text("")
    seen = {}
    server_stderr = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
                     "I0000 00:00:1796109225.533847   16096 port.cc:153] oneDNN custom operations are on.\n"
                     "2026-01-01 12:00:00.000 Uncaught app exception\n")

    class FakePopen:
        def __init__(self, cmd, stderr=None, **kwargs):
            seen["cmd"], seen["stderr"] = cmd, stderr
            self.stderr = io.StringIO(server_stderr) if stderr == subprocess.PIPE else None

        def wait(self, timeout=None):
            return 0

        def poll(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    monkeypatch.setattr(cli, "streamlit_app_path", lambda: app)
    assert cli.main(["ui", "--port", "8600", "--host", "0.0.0.0"]) == 0
    cmd = seen["cmd"]
    assert cmd[1:5] == ["-m", "streamlit", "run", str(app)]
    assert cmd[5:11] == ["--server.address", "0.0.0.0", "--server.port", "8600", "--server.headless", "true"]
    assert cmd[11] == "--server.maxUploadSize" and int(cmd[12]) > 200  # the page's own limit gives the message
    assert cmd[13:15] == ["--browser.gatherUsageStats", "false"]
    assert cmd[15:17] == ["--client.toolbarMode", "minimal"]  # no "Deploy" button
    # the server's stderr is passed on without TensorFlow's start-up lines; -v passes it untouched
    err = capsys.readouterr().err
    assert "Uncaught app exception" in err and "oneDNN" not in err and "absl" not in err
    assert cli.main(["ui", "-v"]) == 0 and seen["stderr"] is None


def test_ui_without_the_app_script_is_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cli, "streamlit_app_path", lambda: tmp_path / "missing_app.py")
    assert cli.main(["ui"]) == 2
    assert "lungseg: error: the web UI script is missing" in capsys.readouterr().err


def test_models_command_lists_none_with_the_training_hint(tmp_path, capsys):
    assert cli.main(["models", "--models-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "lung:" in out and "kedro run --pipelines=infection_unet" in out
