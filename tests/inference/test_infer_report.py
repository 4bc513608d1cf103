"""lungseg.inference.report: severity grades, volumes, and atomic writing of the outputs."""

from __future__ import annotations

import json
import re

import cv2
import nibabel as nib
import numpy as np
import pytest

from lungseg.errors import InputError
from lungseg.inference import report as report_mod
from lungseg.inference.readers import read_input
from lungseg.inference.report import make_report, severity_grade, write_outputs
from lungseg.inference.segment import Segmentation
from lungseg.limits import load_limits
from lungseg.volume import from_canonical_array, load_canonical


@pytest.mark.parametrize(
    ("percent", "grade"),
    [(0, 0), (1e-6, 1), (4.99, 1), (5, 2), (25, 2), (25.01, 3), (25.5, 3), (50, 3), (50.5, 4), (75, 4), (75.1, 5), (100, 5)],
)
def test_severity_grade_boundaries(percent, grade):
    assert severity_grade(percent) == grade


def test_severity_grade_rejects_bad_percentages():
    for bad in (-1, 101, float("nan")):
        with pytest.raises(ValueError):
            severity_grade(bad)


def _segmentation(shape=(8, 10, 12)) -> Segmentation:
    """8 slices (at 4 mm: 32 mm, long enough for volumes, see inference.guard.partial_scan), lungs on 4."""
    lungs = np.zeros(shape, np.uint8)
    lungs[:4, 2:8, 7:11] = 1  # left lung: 4*6*4 = 96 voxels (larger column index)
    lungs[:4, 2:8, 1:4] = 2  # right lung: 4*6*3 = 72 voxels
    inf = np.zeros(shape, np.uint8)
    inf[1:3, 3:5, 8:10] = 1  # 8 voxels in the left lung
    inf[0, 2:8, 1:4] = 1  # 18 voxels: the right lung's first slice
    return Segmentation(lung_labels=lungs, infection=inf)


def test_report_volumes_are_voxel_counts_times_voxel_volume():
    seg = _segmentation()
    spacing = (4.0, 0.7, 0.8)
    rep = make_report(seg, spacing)
    voxel_ml = 4.0 * 0.7 * 0.8 / 1000
    assert rep["voxel_volume_ml"] == pytest.approx(voxel_ml)
    assert rep["voxels"] == {
        "left_lung": 96, "right_lung": 72, "lung": 168,
        "infection_left": 8, "infection_right": 18, "infection": 26,
    }
    assert rep["lung_volume_ml"] == pytest.approx({"left": 96 * voxel_ml, "right": 72 * voxel_ml, "total": 168 * voxel_ml})
    assert rep["infection_volume_ml"] == pytest.approx({"left": 8 * voxel_ml, "right": 18 * voxel_ml, "total": 26 * voxel_ml})
    assert rep["infection_percent"] == pytest.approx({"left": 100 * 8 / 96, "right": 25.0, "total": 100 * 26 / 168})
    assert rep["severity"] == {"left": 2, "right": 2, "total": 2}
    assert rep["no_lungs_found"] is False
    json.dumps(rep)  # plain Python types only


def test_report_of_empty_masks_says_no_lungs():
    empty = Segmentation(np.zeros((8, 8, 8), np.uint8), np.zeros((8, 8, 8), np.uint8))
    rep = make_report(empty, (4, 1, 1))
    assert rep["no_lungs_found"] is True and "No lungs" in rep["message"]
    assert rep["lung_volume_ml"]["total"] == 0 and rep["severity"]["total"] == 0


def test_report_without_the_infection_task():
    seg = _segmentation()
    seg.tasks = ("lung",)
    rep = make_report(seg, (4, 1, 1))
    assert rep["infection_volume_ml"] is None and rep["severity"] is None
    assert rep["lung_volume_ml"]["total"] == pytest.approx(0.672)  # 168 voxels of 4 mm3


@pytest.mark.parametrize(("slices", "spacing_z", "what"), [(1, 1.0, "a single slice"), (2, 2.5, "a slab of 2 slices"),
                                                           (12, 2.0, "a slab of 12 slices (24.0 mm")])
def test_a_slab_or_a_single_slice_gets_no_volumes_and_no_severity_and_says_so(slices, spacing_z, what):
    """#28 item 6: under 8 slices or 30 mm, no ml and no grade (statements about whole lungs)."""
    seg = _segmentation((slices, 10, 12))
    seg.lung_labels[:] = seg.lung_labels[0]
    seg.infection[:] = 0
    seg.infection[:, 3:5, 8:10] = 1  # 4 of the left lung's 24 pixels on every slice
    rep = make_report(seg, (spacing_z, 0.7, 0.8))
    assert rep["partial_scan"].startswith(what) and "no volumes in ml and no severity grade" in rep["partial_scan"]
    assert rep["lung_volume_ml"] is None and rep["infection_volume_ml"] is None
    assert rep["severity"] is None and rep["severity_label"] is None
    assert rep["infection_percent"]["left"] == pytest.approx(100 * 4 / 24)
    assert not re.search(r"\d ml", rep["message"]) and not re.search(r"severity \d", rep["message"])
    if slices == 1:  # a 2D image: its areas in pixels, as the web UI gives them (#29 item 5)
        left, right = int((seg.lung_labels == 1).sum()), int((seg.lung_labels == 2).sum())
        assert rep["area_pixels"]["lung"] == {"left": left, "right": right, "total": left + right}
        assert rep["area_pixels"]["infection"]["total"] == 4
        assert rep["message"].startswith(f"Lungs {left + right} pixels (left {left}, right {right}); infection 4 pixels")
        assert "no volumes in ml and no severity grade" in rep["message"]
    else:
        assert rep["message"].startswith(f"Lungs found in {what}") and "area_pixels" not in rep
    assert make_report(_segmentation(), (4.0, 0.7, 0.8))["partial_scan"] is None


def _reoriented_volume(tmp_path, shape=(8, 10, 12)):
    """A volume read from a RAS file (non-LPS affine), so the canonical and file grids differ."""
    ct = np.random.default_rng(0).integers(-1000, 400, size=shape).astype(np.int16)
    lps = from_canonical_array(ct, (2.0, 0.9, 0.8)).to_nifti(ct, np.int16)
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(lps.affine), [[0, 1], [1, 1], [2, 1]])
    ras = lps.as_reoriented(ornt)
    nib.save(ras, str(tmp_path / "ct_ras.nii.gz"))
    return load_canonical(nib.load(str(tmp_path / "ct_ras.nii.gz"))), ras


def test_write_outputs_on_the_input_grid(tmp_path):
    volume, ras = _reoriented_volume(tmp_path)
    seg = _segmentation()
    out = tmp_path / "out"
    written = write_outputs(volume, seg, make_report(seg, volume.spacing), out)
    names = {p.relative_to(out).as_posix() for p in written.values()}
    assert {"lung_mask.nii.gz", "infection_mask.nii.gz", "lung_and_infection_mask.nii.gz", "report.json"} <= names
    assert any(n.startswith("overlays/slice_") for n in names)
    for name, expected in (
        ("lung_mask.nii.gz", seg.lung_labels),
        ("infection_mask.nii.gz", seg.infection),
        ("lung_and_infection_mask.nii.gz", seg.combined()),
    ):
        img = nib.load(str(out / name))
        assert img.shape == ras.shape and img.get_data_dtype() == np.uint8
        np.testing.assert_allclose(img.affine, ras.affine)
        np.testing.assert_array_equal(load_canonical(img).array, expected)
    assert set(np.unique(nib.load(str(out / "lung_and_infection_mask.nii.gz")).dataobj)) == {0, 1, 2, 3}
    rep = json.loads((out / "report.json").read_text())
    assert rep["voxels"]["lung"] == 168 and rep["outputs"]["lung_mask"] == "lung_mask.nii.gz"
    assert rep["overlays"]["most_infection"] in names
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_write_outputs_is_atomic(tmp_path, monkeypatch):
    volume, _ = _reoriented_volume(tmp_path)
    seg = _segmentation()
    calls = []

    def failing_save(img, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        nib.Nifti1Image.to_filename(img, path)

    monkeypatch.setattr(report_mod.nib, "save", failing_save)
    with pytest.raises(InputError, match=r"cannot write the outputs to .*out' \(OSError: disk full\)"):
        write_outputs(volume, seg, make_report(seg, volume.spacing), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct_ras.nii.gz"]


def test_write_outputs_replaces_a_previous_output_but_not_a_foreign_folder(tmp_path):
    volume, _ = _reoriented_volume(tmp_path)
    seg = _segmentation()
    rep = make_report(seg, volume.spacing)
    out = tmp_path / "out"
    write_outputs(volume, Segmentation(np.zeros_like(seg.lung_labels), np.zeros_like(seg.infection)), rep, out)
    (out / "notes.txt").write_text("the user's, not in the manifest")
    (out / "overlays" / "slice_999.png").write_bytes(b"an old overlay")
    write_outputs(volume, seg, rep, out)
    assert (out / "notes.txt").read_text() == "the user's, not in the manifest"  # only what lungseg wrote is replaced
    assert not (out / "overlays" / "slice_999.png").exists()  # the listed overlays folder was replaced whole
    np.testing.assert_array_equal(load_canonical(nib.load(str(out / "lung_mask.nii.gz"))).array, seg.lung_labels)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.docx").write_text("precious")
    with pytest.raises(InputError, match="not empty"):
        write_outputs(volume, seg, rep, foreign)
    assert (foreign / "thesis.docx").read_text() == "precious"


def test_png_input_also_gets_png_masks(tmp_path):
    img = np.full((40, 48), 30, np.uint8)
    cv2.imwrite(str(tmp_path / "slice.png"), img)
    volume, _ = read_input(tmp_path / "slice.png", load_limits())
    lungs = np.zeros((1, 40, 48), np.uint8)
    lungs[0, 10:30, 28:40] = 1
    lungs[0, 10:30, 6:18] = 2
    inf = np.zeros_like(lungs)
    inf[0, 12:16, 30:34] = 1
    seg = Segmentation(lungs, inf)
    out = tmp_path / "out"
    write_outputs(volume, seg, make_report(seg, volume.spacing), out)
    lung_png = cv2.imread(str(out / "lung_mask.png"), cv2.IMREAD_UNCHANGED)
    combined_png = cv2.imread(str(out / "lung_and_infection_mask.png"), cv2.IMREAD_UNCHANGED)
    assert lung_png.shape == (40, 48)
    np.testing.assert_array_equal(lung_png > 0, lungs[0] > 0)
    np.testing.assert_array_equal(combined_png // 85, seg.combined()[0])
    assert (out / "lung_mask.nii.gz").is_file()
