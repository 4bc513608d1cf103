"""#28 item 5 (rows 7-8): geometry and content lungseg cannot trust are refused by name, never read
into a silent volume error: a sheared NIfTI affine, a DICOM gantry tilt, two different DICOM images at
one slice position, and a rescale that overflows to infinity."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
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

from lungseg.errors import InputError
from lungseg.inference.dicom_write import write_dicom_series
from lungseg.inference.readers import read_input
from lungseg.limits import load_limits
from lungseg.volume import shear_degrees

SPACING = (2.5, 0.8, 0.8)


def _sheared(src, dst, degrees: float):
    img = nib.load(str(src))
    affine = img.affine.copy()
    affine[1, 2] = np.tan(np.radians(degrees)) * affine[2, 2]  # each slice shifted along y: a gantry tilt
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), affine), str(dst))
    return dst


def test_shear_is_measured_between_the_voxel_axes_and_rotations_are_not_shear():
    rotation = np.eye(4)
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    rotation[:2, :2] = [[c, -s], [s, c]]
    assert shear_degrees(rotation @ np.diag([0.7, 0.7, 2.5, 1])) == pytest.approx(0, abs=1e-6)
    tilted = np.diag([0.8, 0.8, 2.5, 1.0])
    tilted[1, 2] = np.tan(np.radians(12)) * 2.5
    assert shear_degrees(tilted) == pytest.approx(12, abs=1e-6)


def test_a_sheared_nifti_is_refused_by_name_before_any_model_loads(tmp_path, rule_models, capsys):
    src = tmp_path / "chest.nii.gz"
    save_nifti(src, phantom(seed=4)[0], SPACING)
    bad = _sheared(src, tmp_path / "tilted.nii.gz", 15.0)
    out = tmp_path / "out"
    code, seconds = predict(bad, out, rule_models)
    (line,) = error_lines(capsys.readouterr().err)
    assert code == 2 and seconds < FAST
    assert "tilted.nii.gz" in line and "sheared by 15.0 degrees" in line and "dcm2niix" in line
    assert not out.exists() and leftovers(tmp_path) == []
    # a shear within rounding of the header is read, and so is an oblique but orthogonal grid
    read_input(_sheared(src, tmp_path / "rounding.nii.gz", 0.2), load_limits())
    img = nib.load(str(src))
    rot = np.eye(4)
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    rot[1:3, 1:3] = [[c, -s], [s, c]]
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), rot @ img.affine), str(tmp_path / "oblique.nii.gz"))
    volume, _ = read_input(tmp_path / "oblique.nii.gz", load_limits())
    assert volume.spacing == pytest.approx(SPACING)


def _series(folder, seed=1):
    return write_dicom_series(phantom(seed=seed)[0], SPACING, folder)


def test_a_dicom_gantry_tilt_is_refused_by_name(tmp_path, rule_models, capsys):
    paths = _series(tmp_path / "s")
    for k, path in enumerate(paths):  # slice k moves by k * 2.5 mm * tan(10 deg) towards posterior
        ds = pydicom.dcmread(path)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + k * SPACING[0] * np.tan(np.radians(10)), z]
        ds.GantryDetectorTilt = 10.0
        ds.save_as(path)
    out = tmp_path / "out"
    code, seconds = predict(tmp_path / "s", out, rule_models)
    (line,) = error_lines(capsys.readouterr().err)
    assert code == 2 and seconds < FAST
    assert "tilted by 10.0 degrees" in line and "gantry tilt" in line
    assert not out.exists() and leftovers(tmp_path) == []


def test_two_different_images_at_one_position_are_refused_and_a_true_duplicate_is_kept_once(
        tmp_path, rule_models, capsys):
    paths = _series(tmp_path / "s")
    copy = tmp_path / "s" / "zz_copy.dcm"
    ds = pydicom.dcmread(paths[4])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(copy)
    volume, _ = read_input(tmp_path / "s", load_limits())  # the same pixels twice: one slice
    assert volume.array.shape[0] == len(paths)
    pixels = ds.pixel_array.copy()
    pixels[10:20, 10:20] = 2000  # another reconstruction at the same position
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(copy)
    with pytest.raises(InputError, match=r"zz_copy\.dcm.*same slice position but hold different images"):
        read_input(tmp_path / "s", load_limits())
    out = tmp_path / "out"  # and through the CLI: exit 2 by name, before any model, nothing written
    code, seconds = predict(tmp_path / "s", out, rule_models)
    (line,) = error_lines(capsys.readouterr().err)
    assert code == 2 and seconds < FAST and "zz_copy.dcm" in line and "hold different images" in line
    assert not out.exists() and leftovers(tmp_path) == []


def test_a_rescale_that_overflows_is_refused_by_name(tmp_path, rule_models, capsys):
    paths = _series(tmp_path / "s")
    ds = pydicom.dcmread(paths[6])
    ds.RescaleSlope = "1e39"
    ds.save_as(paths[6])
    out = tmp_path / "out"
    code, _ = predict(tmp_path / "s", out, rule_models)
    (line,) = error_lines(capsys.readouterr().err)
    assert code == 2 and paths[6].name in line and "non-finite" in line and "RescaleSlope 1e+39" in line
    assert not out.exists() and leftovers(tmp_path) == []
