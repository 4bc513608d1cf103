"""#28 item 4 rest and row 15: image headers read for their size before decoding (row 14), a .keras archive
held to member size limits (row 16), a served payload held to a size limit with messages that name the row
and no server path (row 17), a full TMPDIR and a fold member of the wrong size as exit 2 (row 15)."""

from __future__ import annotations

import errno
import json
import time
import zipfile
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from hardening_helpers import (
    FAST,
    VMEM_MB,
    error_lines,
    leftovers,
    model_config,
    phantom,
    predict,
    rule_models_fixture,  # noqa: F401 - the fixture
    run_bounded,
    save_nifti,
)
from rule_models import band_model

from lungseg.inference.dicom_write import write_dicom_series
from lungseg.limits import inference_parameters


def _jpeg_declaring(path, height: int, width: int):
    """A real 64x64 JPEG whose SOF0 header is patched to declare height x width (10 KB on disk)."""
    raw = bytearray(cv2.imencode(".jpg", np.full((64, 64), 128, np.uint8))[1].tobytes())
    sof = raw.index(b"\xff\xc0")
    raw[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("side, words", [(30000, ("too many pixels", "refused before decoding")),
                                         (5000, ("5,000 pixels across", "max_inplane"))])
def test_row14_a_giant_jpeg_is_refused_from_its_header_without_decoding(tmp_path, side, words):
    jpg = _jpeg_declaring(tmp_path / "giant.jpg", side, side)
    code, err, seconds, peak_mb = run_bounded(["predict", jpg, "-o", tmp_path / "out"], vmem_mb=VMEM_MB)
    assert code == 2, err
    (line,) = error_lines(err)
    assert "giant.jpg" in line and all(w in line for w in words), line
    assert seconds < 2 and peak_mb < 500, (seconds, peak_mb)  # a 30000^2 decode alone is 900 MB
    assert sorted(p.name for p in tmp_path.iterdir()) == ["giant.jpg"]


def _keras_with(tmp_path, members: dict[str, bytes]):
    model = tmp_path / "models" / "lung.keras"
    model.parent.mkdir()
    with zipfile.ZipFile(model, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    (model.parent / "model_config.json").write_text(json.dumps(model_config("lung", 64)))
    return model


def test_row16_a_keras_whose_config_inflates_is_refused_before_loading(tmp_path, capsys):
    scan = tmp_path / "scan.nii.gz"
    save_nifti(scan, phantom(seed=4)[0])
    bomb = _keras_with(tmp_path, {"metadata.json": b"{}", "config.json": b"{" + b" " * (40 << 20) + b"}"})
    assert bomb.stat().st_size < 1 << 20  # 40 MB of config in under 1 MB
    import lungseg.models  # noqa: F401 - Keras' import (seconds, once a process) is not the refusal's time
    start = time.perf_counter()
    code, _ = predict(scan, tmp_path / "out", tmp_path / "models", "--lung-model", str(bomb), "--tasks", "lung")
    (line,) = error_lines(capsys.readouterr().err)
    assert code == 2 and time.perf_counter() - start < FAST
    assert "lung.keras" in line and "'config.json' inflates to 40 MB" in line and "over the limit of 16 MB" in line
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_row19_a_truncated_keras_is_named_as_truncated_not_missing(tmp_path, rule_models, capsys):
    scan = tmp_path / "scan.nii.gz"
    save_nifti(scan, phantom(seed=4)[0])
    good = next(rule_models.glob("lung_unet/model.keras/*/model.keras"))
    cut = _keras_with(tmp_path, {})
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    code, _ = predict(scan, tmp_path / "out", tmp_path / "models", "--lung-model", str(cut), "--tasks", "lung")
    (line,) = error_lines(capsys.readouterr().err)
    assert code == 2 and "lung.keras" in line and "not a complete .keras model archive" in line
    assert "not found" not in line.lower()


def test_row15_a_fold_member_of_another_size_than_its_config_is_exit_2_by_name(tmp_path, capsys):
    scan = tmp_path / "scan.nii.gz"
    save_nifti(scan, phantom(seed=5)[0])
    folds = tmp_path / "models" / "lung_unet_cv"
    folds.mkdir(parents=True)
    for i, size in enumerate((128, 64)):  # fold_1 was trained at 64 px, its config says 128
        band_model(size, 0.1, 0.2).save(folds / f"fold_{i}.keras")
        (folds / f"fold_{i}.json").write_text(json.dumps(model_config("lung", 128)))
    code, _ = predict(scan, tmp_path / "out", tmp_path / "models", "--lung-model", str(folds), "--tasks", "lung")
    (line,) = error_lines(capsys.readouterr().err)
    assert code == 2 and "fold_1.keras" in line and "takes 64x64 images but its config says image_size 128" in line
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_row15_a_full_tmpdir_while_extracting_a_dicom_zip_is_exit_2_with_a_message(
        tmp_path, rule_models, capsys, monkeypatch):
    write_dicom_series(phantom(seed=1)[0], (2.5, 0.8, 0.8), tmp_path / "series")
    with zipfile.ZipFile(tmp_path / "scan.zip", "w") as zf:
        for f in sorted((tmp_path / "series").iterdir()):
            zf.write(f, f.name)
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(systmp))
    monkeypatch.setattr("tempfile.tempdir", None)

    def full(self, member, path=None, pwd=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zipfile.ZipFile, "extract", full)
    code, _ = predict(tmp_path / "scan.zip", tmp_path / "out", rule_models)
    (line,) = error_lines(capsys.readouterr().err)
    assert code == 2 and "scan.zip" in line and "no space left in the temporary folder" in line and "TMPDIR" in line
    assert list(systmp.iterdir()) == [] and not (tmp_path / "out").exists()


class _Bundle(SimpleNamespace):
    pass


def _served(limits_override: dict):
    from lungseg.serving.pyfunc import CombinedSegmentationModel

    model = CombinedSegmentationModel()
    limits = {**inference_parameters()["limits"], **limits_override}
    model._models = _Bundle(settings={"limits": limits}, infection=None, lung=None)
    model._segmenter = None  # never reached: these payloads are refused first
    return model


def test_row17_a_payload_over_the_limit_is_refused_by_row_before_anything_is_written(tmp_path, monkeypatch):
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from lungseg.serving.pyfunc import encode_nifti

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    save_nifti(tmp_path / "ok.nii.gz", phantom(seed=6)[0])
    small = encode_nifti(tmp_path / "ok.nii.gz")
    big = "A" * 4_000_000  # 3 MB once decoded
    model = _served({"max_payload_mb": 2})
    with pytest.raises(MlflowException) as refused:
        model.predict(None, pd.DataFrame({"ct_nifti_base64": [small, big]}))
    message = refused.value.message
    assert message.startswith("row 1: the CT is 3 MB, over the limit of 2 MB") and "max_payload_mb" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.nii.gz"]  # row 0 was not even written


def test_row17_a_bad_payload_names_the_row_and_never_a_server_path(tmp_path, monkeypatch):
    import base64

    import pandas as pd
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    junk = base64.b64encode(b"\x1f\x8b" + b"not a nifti at all" * 10).decode()
    with pytest.raises(MlflowException) as refused:
        _served({}).predict(None, pd.DataFrame({"ct_nifti_base64": [junk]}))
    message = refused.value.message
    assert message.startswith("row 0: ") and "not a readable NIfTI" in message
    assert str(tmp_path) not in message and "lungseg-serve" not in message, message
    assert list(tmp_path.iterdir()) == []  # the row's scratch folder is gone
