"""DICOM series geometry: taken after sorting by position, checked on every slice; gaps refused or resampled."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import yaml
from hardening_helpers import (
    FAST,
    PROJECT_ROOT,
    error_lines,
    leftovers,
    phantom,
    predict,
    rule_models_fixture,  # noqa: F401 - the fixture
)

from lungseg.errors import InputError
from lungseg.inference.dicom_write import write_dicom_series
from lungseg.inference.readers import read_input
from lungseg.limits import Limits, load_limits

SPACING = (2.5, 0.8, 0.8)


def _limits(**changes) -> Limits:
    params = yaml.safe_load((PROJECT_ROOT / "conf" / "base" / "parameters_inference.yml").read_text())
    return Limits.from_params({**params["inference"]["limits"], **changes})


def _series(folder, seed=1):
    ct = phantom(seed=seed)[0]
    paths = write_dicom_series(ct, SPACING, folder)  # file names shuffled: name order is not slice order
    return ct, paths


def _edit(path, **tags):
    ds = pydicom.dcmread(path)
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path)


def test_a_consistent_series_is_read_by_position_not_by_name(tmp_path):
    ct, paths = _series(tmp_path / "s")
    assert sorted(p.name for p in paths) != [p.name for p in paths]
    volume, _ = read_input(tmp_path / "s", load_limits())
    np.testing.assert_array_equal(volume.array, ct)
    assert volume.spacing == pytest.approx(SPACING)


def test_inconsistent_pixel_spacing_on_the_first_file_by_name_is_refused(tmp_path, rule_models, capsys):
    _, paths = _series(tmp_path / "s")
    first_by_name = min(paths, key=lambda p: p.name)
    assert first_by_name != paths[0]  # not the first slice by position
    _edit(first_by_name, PixelSpacing=[1.5, 1.5])  # the old reader took the whole geometry from this file
    out = tmp_path / "out"
    code, seconds = predict(tmp_path / "s", out, rule_models)
    (line,) = error_lines(capsys.readouterr().err)
    assert code == 2 and seconds < FAST
    assert first_by_name.name in line and "PixelSpacing [1.5, 1.5]" in line and "[0.8, 0.8]" in line
    assert "disagree" in line and not out.exists() and leftovers(tmp_path) == []


def test_inconsistent_orientation_or_size_is_refused_by_name(tmp_path):
    _, paths = _series(tmp_path / "s")
    _edit(paths[5], ImageOrientationPatient=[0, 1, 0, 1, 0, 0])
    with pytest.raises(InputError, match=rf"{paths[5].name}.*ImageOrientationPatient.*disagree"):
        read_input(tmp_path / "s", load_limits())
    _, paths = _series(tmp_path / "t", seed=2)
    ds = pydicom.dcmread(paths[3])
    ds.Rows, ds.Columns = 32, 32
    ds.PixelData = np.zeros((32, 32), "<u2").tobytes()
    ds.save_as(paths[3])
    with pytest.raises(InputError, match=rf"{paths[3].name}.* is 32x32, the series' first slice 64x64"):
        read_input(tmp_path / "t", load_limits())


def test_a_missing_slice_is_refused_by_default(tmp_path, rule_models, capsys):
    _, paths = _series(tmp_path / "s")
    paths[6].unlink()
    out = tmp_path / "out"
    code, seconds = predict(tmp_path / "s", out, rule_models)
    (line,) = error_lines(capsys.readouterr().err)
    assert code == 2 and seconds < FAST
    assert "a gap of 5 mm" in line and paths[5].name in line and paths[7].name in line
    assert "usual step is 2.5 mm" in line and "dicom_slice_gap" in line
    assert not out.exists() and leftovers(tmp_path) == []


def test_a_missing_slice_is_resampled_onto_a_true_uniform_grid_when_allowed(tmp_path):
    ct, paths = _series(tmp_path / "s")
    paths[6].unlink()
    volume, _ = read_input(tmp_path / "s", _limits(dicom_slice_gap="resample"))
    assert volume.array.shape == ct.shape and volume.spacing == pytest.approx(SPACING)
    kept = [k for k in range(ct.shape[0]) if k != 6]
    np.testing.assert_allclose(volume.array[kept], ct[kept])  # every real slice at its true position
    np.testing.assert_allclose(volume.array[6], (ct[5].astype(np.float32) + ct[7]) / 2)
    z_world = volume.affine[2, 3] + np.arange(ct.shape[0]) * volume.affine[2, 2]
    assert np.diff(z_world) == pytest.approx(np.full(ct.shape[0] - 1, SPACING[0]))
