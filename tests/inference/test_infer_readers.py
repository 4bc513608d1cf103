"""lungseg.inference.readers: every input kind, and a clear InputError for each bad one."""

from __future__ import annotations

import gzip
import logging
import zipfile

import cv2
import nibabel as nib
import numpy as np
import pytest

from lungseg.errors import InputError
from lungseg.inference.dicom_write import write_dicom_series
from lungseg.inference.readers import read_input
from lungseg.limits import load_limits
from lungseg.volume import from_canonical_array

SPACING = (2.5, 0.75, 0.8)


def _hu_volume(shape=(6, 40, 48), seed=0) -> np.ndarray:
    """A canonical (z, y, x) HU volume whose values identify their position (no symmetry)."""
    rng = np.random.default_rng(seed)
    return rng.integers(-1024, 600, size=shape).astype(np.int16)


def _save_canonical_nifti(path, arr_zyx, spacing=SPACING):
    img = from_canonical_array(arr_zyx, spacing).to_nifti(arr_zyx, arr_zyx.dtype)
    nib.save(img, str(path))
    return path


def test_nifti_hu_and_reoriented_nifti_give_the_same_canonical_volume(tmp_path):
    hu = _hu_volume()
    lps = _save_canonical_nifti(tmp_path / "lps.nii.gz", hu)
    # The same image stored RAS with swapped x/y axes: a different file grid, the same anatomy.
    img = nib.load(str(lps))
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(img.affine), [[1, -1], [0, -1], [2, 1]])
    reoriented = img.as_reoriented(ornt)
    nib.save(reoriented, str(tmp_path / "ras.nii.gz"))
    assert nib.aff2axcodes(reoriented.affine) != ("L", "P", "S")

    v1, k1 = read_input(lps, load_limits())
    v2, k2 = read_input(tmp_path / "ras.nii.gz", load_limits())
    assert k1 == k2 == "hu"
    np.testing.assert_array_equal(v1.array, hu)
    np.testing.assert_array_equal(v2.array, hu)
    np.testing.assert_allclose(v2.spacing, SPACING, rtol=1e-6)
    assert v2.shape == reoriented.shape and v2.meta["input_kind"] == "nifti"


def test_uint8_nifti_is_detected_as_uint8(tmp_path):
    u8 = np.random.default_rng(1).integers(0, 256, size=(4, 40, 40)).astype(np.uint8)
    _, kind = read_input(_save_canonical_nifti(tmp_path / "u8.nii.gz", u8), load_limits())
    assert kind == "uint8"


def test_grayscale_png_is_a_one_slice_uint8_volume(tmp_path):
    img = np.random.default_rng(2).integers(0, 256, size=(48, 64)).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "slice.png"), img)
    # A gray picture saved with three identical channels is accepted too.
    cv2.imwrite(str(tmp_path / "slice3.png"), np.dstack([img, img, img]))
    for name in ("slice.png", "slice3.png"):
        volume, kind = read_input(tmp_path / name, load_limits())
        assert kind == "uint8"
        assert volume.array.shape == (1, 48, 64) and volume.spacing == (1.0, 1.0, 1.0)
        np.testing.assert_array_equal(volume.array[0], img)
        assert volume.meta["input_kind"] == "image"


def test_colour_photo_is_refused(tmp_path):
    photo = np.zeros((64, 64, 3), np.uint8)
    photo[..., 2] = 200  # red
    photo[20:40, 20:40, 1] = 150
    cv2.imwrite(str(tmp_path / "photo.png"), photo)
    with pytest.raises(InputError, match=r"photo\.png.*colour"):
        read_input(tmp_path / "photo.png", load_limits())


@pytest.mark.parametrize("size", [(1, 1), (20, 64)])
def test_tiny_image_is_refused(tmp_path, size):
    cv2.imwrite(str(tmp_path / "tiny.png"), np.full(size, 128, np.uint8))
    with pytest.raises(InputError, match=r"tiny\.png.*not a CT slice.*pixels"):
        read_input(tmp_path / "tiny.png", load_limits())


@pytest.mark.parametrize("name", ["empty.nii.gz", "empty.png", "empty.zip", "empty.bin"])
def test_empty_file_is_refused(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(InputError, match=rf"{name.replace('.', '[.]')}.*empty"):
        read_input(tmp_path / name, load_limits())


def test_4d_nifti_is_refused(tmp_path):
    data = np.zeros((40, 40, 5, 3), np.int16)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "fmri.nii.gz"))
    with pytest.raises(InputError, match=r"fmri\.nii\.gz.*4D NIfTI \(3 volumes"):
        read_input(tmp_path / "fmri.nii.gz", load_limits())


def test_corrupt_and_unknown_files_are_refused(tmp_path):
    (tmp_path / "bad.nii.gz").write_bytes(gzip.compress(b"not a nifti header at all" * 10))
    with pytest.raises(InputError, match=r"bad\.nii\.gz.*(NIfTI|read)"):
        read_input(tmp_path / "bad.nii.gz", load_limits())
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(InputError, match=r"bad\.png.*not a readable"):
        read_input(tmp_path / "bad.png", load_limits())
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match=r"notes\.txt.*unknown input type"):
        read_input(tmp_path / "notes.txt", load_limits())
    with pytest.raises(InputError, match="no such file"):
        read_input(tmp_path / "missing.nii.gz", load_limits())
    (tmp_path / "no_dicom").mkdir()
    (tmp_path / "no_dicom" / "readme.txt").write_text("x")
    with pytest.raises(InputError, match="no DICOM image found"):
        read_input(tmp_path / "no_dicom", load_limits())


def test_dicom_series_gives_the_canonical_volume_and_grid(tmp_path):
    hu = _hu_volume()
    write_dicom_series(hu, SPACING, tmp_path / "series", origin_lps=(-100.0, -120.0, 40.0))
    volume, kind = read_input(tmp_path / "series", load_limits())
    assert kind == "hu"
    np.testing.assert_array_equal(volume.array, hu)  # slices sorted by position, not by file name
    np.testing.assert_allclose(volume.spacing, SPACING, rtol=1e-5)
    # RAS affine of an LPS series: x and y flipped, origin of the first slice in RAS.
    np.testing.assert_allclose(volume.affine[:3, 3], [100.0, 120.0, 40.0])
    assert nib.aff2axcodes(volume.affine) == ("L", "P", "S")


def test_zip_of_dicom_series(tmp_path):
    hu = _hu_volume(seed=3)
    paths = write_dicom_series(hu, SPACING, tmp_path / "series")
    with zipfile.ZipFile(tmp_path / "series.zip", "w") as zf:
        for p in paths:
            zf.write(p, arcname=f"study/{p.name}")
    volume, _ = read_input(tmp_path / "series.zip", load_limits())
    np.testing.assert_array_equal(volume.array, hu)


def test_two_dicom_series_take_the_largest_and_log_it(tmp_path, caplog):
    big, small = _hu_volume((7, 40, 40), 4), _hu_volume((3, 40, 40), 5)
    write_dicom_series(big, SPACING, tmp_path / "study" / "a", series_uid="1.2.3.7", description="big one")
    write_dicom_series(small, SPACING, tmp_path / "study" / "b", series_uid="1.2.3.3", description="scout")
    with caplog.at_level(logging.WARNING, logger="lungseg"):
        volume, _ = read_input(tmp_path / "study", load_limits())
    np.testing.assert_array_equal(volume.array, big)
    assert volume.meta["series_uid"] == "1.2.3.7" and volume.meta["n_series"] == 2
    text = caplog.text
    assert "2 DICOM series" in text and "1.2.3.7" in text and "big one" in text and "1.2.3.3" in text


def test_load_nifti_reads_gzip_through_isal_exactly_as_nibabel(tmp_path):
    """#24 item 4: .nii.gz decompressed by python-isal's igzip gives nibabel's own array, header and
    scaling; a plain .nii is nib.load's; a truncated .nii.gz is still a one-line InputError."""
    import nibabel as nib

    from lungseg.errors import InputError
    from lungseg.volume import load_nifti

    rng = np.random.default_rng(0)
    data = rng.integers(-1024, 2000, size=(40, 30, 7)).astype(np.int16)
    img = nib.Nifti1Image(data, np.diag([0.7, 0.8, 2.5, 1.0]))
    img.header.set_slope_inter(0.5, -10)  # scaled data must come back scaled
    for name in ("ct.nii.gz", "ct.nii"):
        nib.save(img, str(tmp_path / name))
        got = load_nifti(tmp_path / name)
        want = nib.load(str(tmp_path / name))
        np.testing.assert_array_equal(np.asanyarray(got.dataobj), np.asanyarray(want.dataobj))
        np.testing.assert_array_equal(got.affine, want.affine)
        assert got.header.get_zooms() == want.header.get_zooms()
    assert type(load_nifti(tmp_path / "ct.nii.gz").file_map["image"].fileobj).__module__.startswith("isal")
    raw = (tmp_path / "ct.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="cut.nii.gz"):
        read_input(tmp_path / "cut.nii.gz", load_limits())
