"""#28 item 6 (row 9) and #29 item 4: physical sense before figures. A voxel size no CT has is
refused; a 2-slice slab and a PNG slice get no ml and no severity grade, in the CLI as in the UI."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
from hardening_helpers import (
    FAST,
    error_lines,
    leftovers,
    phantom,
    predict,
    rule_models_fixture,  # noqa: F401 - the fixture
    save_nifti,
)

from lungseg.imaging import window_to_uint8

SPACING = (2.5, 0.8, 0.8)


def test_a_voxel_size_in_the_wrong_unit_is_refused_by_name(tmp_path, rule_models, capsys):
    ct = phantom(seed=5)[0]
    src = tmp_path / "metres.nii.gz"
    save_nifti(src, ct, tuple(s * 1e-3 for s in SPACING))  # the header in metres, not mm
    out = tmp_path / "out"
    code, seconds = predict(src, out, rule_models)
    (line,) = error_lines(capsys.readouterr().err)
    assert code == 2 and seconds < FAST
    assert "metres.nii.gz" in line and "voxel size of 0.0025 x 0.0008 x 0.0008 mm" in line and "0.1-20 mm" in line
    assert not out.exists() and leftovers(tmp_path) == []


def _figures_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("lungseg: Lungs"))


def test_a_slab_and_a_png_slice_get_no_ml_and_no_severity_from_the_cli(tmp_path, rule_models, capsys):
    ct = phantom(seed=6)[0]
    slab = tmp_path / "slab.nii.gz"
    save_nifti(slab, ct[5:7], SPACING)  # 2 slices, 5 mm: no whole lungs
    k = 6
    png = tmp_path / "slice.png"
    cv2.imwrite(str(png), window_to_uint8(ct[k], "hu", (-1250, 250)))
    for src, what in ((slab, "a slab of 2 slices"), (png, "a single slice")):
        out = tmp_path / src.stem.split(".")[0]
        code, _ = predict(src, out, rule_models)
        printed = capsys.readouterr().out
        assert code == 0, printed
        report = json.loads((out / "report.json").read_text())
        assert report["partial_scan"].startswith(what)
        assert report["lung_volume_ml"] is None and report["severity"] is None
        assert np.isfinite(report["infection_percent"]["total"])
        line = _figures_line(printed)
        assert what in line and not re.search(r"\d ml", line) and not re.search(r"severity \d", line), line


def test_row9_tiny_lungs_in_a_short_scan_get_no_ml_and_no_severity(tmp_path, rule_models, capsys):
    """A 30 mm scan whose header says 0.11 mm pixels (the phantom's are 0.8): 0.2 ml of "lungs". Under
    200 mm, the old guard held no minimum and reported "Lungs 0.2 ml ... severity"; the floor per mm of
    scan (0.3 ml here) refuses it, and the same scan at its true voxel size passes."""
    ct = phantom(seed=8)[0]
    src = tmp_path / "tiny.nii.gz"
    save_nifti(src, ct, (SPACING[0], 0.11, 0.11))
    out = tmp_path / "out"
    code, seconds = predict(src, out, rule_models)
    captured = capsys.readouterr()
    assert code == 3 and seconds < 10 * FAST, captured.err
    (line,) = error_lines(captured.err, "lungseg: implausible input:")
    assert "tiny.nii.gz" in line and "in a scan 30 mm long, below the physiological minimum of 0.3 ml" in line, line
    assert "0.01 ml per mm" in line and "voxel size" in line
    report = json.loads((out / "report.json").read_text())
    assert report["implausible_input"] in line and report["severity"] is None and report["infection_percent"] is None
    assert 0.1 < report["plausibility"]["lung_ml"] < 0.3 and report["plausibility"]["min_lung_ml"] == pytest.approx(0.3)
    assert not re.search(r"severity \d", captured.out) and leftovers(tmp_path) == []
    save_nifti(src, ct, SPACING)
    code, _ = predict(src, tmp_path / "true", rule_models)
    report = json.loads((tmp_path / "true" / "report.json").read_text())
    assert code == 0 and report["implausible_input"] is None and report["severity"] is not None
    assert report["plausibility"]["lung_ml"] > 3 * report["plausibility"]["min_lung_ml"]  # the phantom's margin
