"""Pure page logic of the web UI (lungseg.app.logic), without Streamlit."""

from __future__ import annotations

import gzip
import io
import zipfile

import cv2
import nibabel as nib
import numpy as np
import pytest

from lungseg.app import logic
from lungseg.errors import DataValidationError, InputError, LungsegError
from lungseg.inference.ground_truth import normalise_labels
from lungseg.inference.segment import Segmentation


def _png(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return buf.tobytes()


def _ct_slice(size: int = 48) -> np.ndarray:
    """A gray body with two dark lungs: left lung at the larger column index."""
    img = np.full((size, size), 20, np.uint8)
    yy, xx = np.mgrid[:size, :size]
    body = ((yy - size / 2) / (0.45 * size)) ** 2 + ((xx - size / 2) / (0.45 * size)) ** 2 < 1
    img[body] = 170
    img[(np.abs(yy - size / 2) < size / 5) & (np.abs(xx - size * 0.3) < size / 9)] = 40
    img[(np.abs(yy - size / 2) < size / 5) & (np.abs(xx - size * 0.7) < size / 9)] = 40
    return img


def _nifti_bytes(arr_xyz: np.ndarray, affine: np.ndarray | None = None) -> bytes:
    img = nib.Nifti1Image(arr_xyz, np.eye(4) if affine is None else affine)
    return gzip.compress(img.to_bytes())


# ------------------------------------------------------------------------------------ settings


def test_settings_from_env():
    assert logic.default_models_dir({}) == "data/06_models"
    assert logic.default_models_dir({"LUNGSEG_MODELS_DIR": "/m"}) == "/m"
    assert logic.upload_limit_mb({}) == 300.0
    assert logic.upload_limit_mb({"LUNGSEG_MAX_UPLOAD_MB": "0.5"}) == 0.5
    with pytest.raises(InputError, match="LUNGSEG_MAX_UPLOAD_MB"):
        logic.upload_limit_mb({"LUNGSEG_MAX_UPLOAD_MB": "lots"})
    with pytest.raises(InputError):
        logic.upload_limit_mb({"LUNGSEG_MAX_UPLOAD_MB": "-1"})
    assert logic.server_max_upload_mb({}) == 600
    assert logic.server_max_upload_mb({"LUNGSEG_MAX_UPLOAD_MB": "0.3"}) == 1


# ------------------------------------------------------------------------------------ uploads


def test_file_names():
    assert logic.file_suffix("Case_1.NII.GZ") == ".nii.gz"
    assert logic.file_suffix("a.b/slice.PNG") == ".png"
    assert logic.file_suffix("noext") == ""
    assert logic.file_stem("ct scan.nii.gz") == "ct_scan"
    assert logic.safe_file_name("../../etc/passwd") == "passwd"
    assert logic.safe_file_name("..") == "upload"


def test_check_upload_type_size_empty():
    assert logic.check_upload("x.nii.gz", 10) == ".nii.gz"
    with pytest.raises(InputError, match=r"unsupported image type \(\.txt\)"):
        logic.check_upload("notes.txt", 10)
    with pytest.raises(InputError, match="empty"):
        logic.check_upload("x.png", 0)
    with pytest.raises(InputError, match=r"2\.0 MB is over the upload limit of 1 MB"):
        logic.check_upload("x.png", 2_000_000, max_mb=1)


def test_read_upload_png_and_nifti_and_errors():
    img = _ct_slice()
    loaded = logic.read_upload("slice.png", _png(img))
    assert loaded.is_2d and loaded.shape == (1, 48, 48) and loaded.source_kind == "uint8"
    np.testing.assert_array_equal(loaded.volume.array[0], img)

    vol = np.random.default_rng(0).integers(-1000, 400, (40, 36, 5)).astype(np.int16)
    loaded3 = logic.read_upload("ct.nii.gz", _nifti_bytes(vol, np.diag([-1.0, -1.0, 2.0, 1.0])))
    assert not loaded3.is_2d and loaded3.shape == (5, 36, 40)
    assert loaded3.volume.spacing == (2.0, 1.0, 1.0)

    with pytest.raises(InputError, match="corrupt|not a readable"):
        logic.read_upload("broken.png", b"\x89PNG\r\n\x1a\nthis is not a png")
    rgb = np.dstack([img, np.roll(img, 5, axis=1), img[::-1]])
    with pytest.raises(InputError, match="colour"):
        logic.read_upload("photo.png", _png(rgb))
    with pytest.raises(InputError, match="unsupported"):
        logic.read_upload("ct.dcm.txt", b"abc")
    with pytest.raises(InputError, match="over the upload limit"):
        logic.read_upload("slice.png", _png(img), max_mb=1e-4)


def test_read_upload_zipped_dicom_series(tmp_path):
    from lungseg.inference.dicom_write import write_dicom_series

    hu = np.random.default_rng(2).integers(-1000, 300, (3, 40, 36)).astype(np.int16)
    files = write_dicom_series(hu, (2.0, 0.7, 0.7), tmp_path / "series")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in files:
            zf.write(f, f"series/{f.name}")
    loaded = logic.read_upload("series.zip", buf.getvalue())
    assert not loaded.is_2d and loaded.source_kind == "hu" and loaded.shape == (3, 40, 36)
    np.testing.assert_array_equal(loaded.volume.array, hu)
    data, name, _ = logic.mask_download(loaded, (loaded.volume.array > 0).astype(np.uint8), "Lungs")
    assert name == "series_lungs.nii.gz"
    out = nib.Nifti1Image.from_bytes(gzip.decompress(data))
    assert out.shape == (36, 40, 3)


def test_read_upload_zip_that_is_not_dicom():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("readme.txt", "no images here")
    with pytest.raises(LungsegError):
        logic.read_upload("series.zip", buf.getvalue())


# ------------------------------------------------------------------------------------ models


def test_missing_models_message_names_commands():
    assert logic.missing_tasks("Lungs", {"lung": [1]}) == []
    assert logic.missing_tasks("Infection", {"infection": [1]}) == ["lung"]
    assert logic.missing_tasks("Both", {}) == ["lung", "infection"]
    msg = logic.missing_model_message(["lung", "infection"], "/tmp/models")
    assert "make demo" in msg
    assert "kedro run --pipelines=lung_unet" in msg and "kedro run --pipelines=infection_unet" in msg
    assert "/tmp/models" in msg


# ------------------------------------------------------------------------------------ display


def _seg(lungs: np.ndarray, infection: np.ndarray | None) -> Segmentation:
    if infection is None:
        return Segmentation(lungs.astype(np.uint8), np.zeros(lungs.shape, np.uint8), tasks=("lung",))
    return Segmentation(lungs.astype(np.uint8), infection.astype(np.uint8))


def test_selected_mask_and_default_slice():
    lungs = np.zeros((4, 8, 8), np.uint8)
    lungs[1, 2:4, 5:7] = 1
    lungs[2, 1:7, 1:4] = 2  # most lung on slice 2
    infection = np.zeros_like(lungs)
    infection[2, 2, 2] = 1
    seg = _seg(lungs, infection)
    assert logic.default_slice(lungs) == 2
    assert logic.default_slice(np.zeros((5, 3, 3), np.uint8)) == 2
    np.testing.assert_array_equal(logic.selected_mask(seg, "Lungs"), lungs)
    np.testing.assert_array_equal(logic.selected_mask(seg, "Infection"), infection)
    both = logic.selected_mask(seg, "Both")
    assert both[2, 2, 2] == 3 and both[2, 1, 1] == 2 and both[1, 2, 5] == 1 and both.dtype == np.uint8
    # lungs-only segmentation: no infection output
    assert logic.selected_mask(_seg(lungs, None), "Both").max() == 2


def test_colour_mask_and_overlay():
    colours = logic.display_colours()
    assert colours[1] != colours[3]
    np.testing.assert_array_equal(logic.display_labels(np.array([[0, 1], [2, 3]]), "Both"), [[0, 1], [1, 3]])
    np.testing.assert_array_equal(logic.display_labels(np.array([[0, 1]]), "Infection"), [[0, 3]])
    rgb = logic.colour_mask(np.array([[0, 1], [1, 3]], np.uint8))
    assert tuple(rgb[0, 0]) == (0, 0, 0)
    assert tuple(rgb[0, 1]) == colours[1] == tuple(rgb[1, 0])  # both lungs in one colour
    assert tuple(rgb[1, 1]) == colours[3]

    gray = np.full((20, 20), 100, np.uint8)
    labels = np.zeros((20, 20), np.uint8)
    labels[2:10, 2:10] = 1
    labels[4:7, 4:7] = 3
    over = logic.overlay(gray, labels)
    assert over.shape == (20, 20, 3) and over.dtype == np.uint8
    assert tuple(over[15, 15]) == (100, 100, 100)  # unlabelled pixels keep the image
    r, g, b = (int(c) for c in over[5, 5])
    assert r > g and r > b  # infection is red
    r, g, b = (int(c) for c in over[8, 8])
    assert g > r  # lung is green
    with pytest.raises(ValueError):
        logic.overlay(gray, np.zeros((3, 3), np.uint8))


def test_downloads_png_and_nifti_on_input_grid():
    img = _ct_slice()
    loaded = logic.read_upload("slice.png", _png(img))
    mask = np.zeros((1, 48, 48), np.uint8)
    mask[0, 10:20, 30:40] = 1
    mask[0, 10:20, 5:15] = 2
    data, name, mime = logic.mask_download(loaded, mask, "Lungs")
    assert name == "slice_lungs.png" and mime == "image/png"
    back = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(back, (mask[0] > 0) * 255)
    # "Both": labels x 85, read back as labels by the ground-truth reader
    mask[0, 12:14, 32:34] = 3
    data, name, _ = logic.mask_download(loaded, mask, "Both")
    assert name == "slice_labels.png"
    np.testing.assert_array_equal(logic.read_ground_truth_upload("gt.png", data, loaded), mask)

    # a volume stored in RAS-ish orientation: the download must come back on the file's own grid
    vol = np.random.default_rng(1).integers(-1000, 400, (40, 36, 4)).astype(np.int16)
    affine = np.diag([1.0, 1.0, 2.5, 1.0])
    loaded3 = logic.read_upload("ct.nii.gz", _nifti_bytes(vol, affine))
    mask3 = (loaded3.volume.array > 0).astype(np.uint8)
    data, name, mime = logic.mask_download(loaded3, mask3, "Both")
    assert name == "ct_labels.nii.gz"
    out = nib.Nifti1Image.from_bytes(gzip.decompress(data))
    assert out.shape == vol.shape and out.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(out.dataobj), (vol > 0).astype(np.uint8))
    np.testing.assert_allclose(out.affine, affine)


# ------------------------------------------------------------------------------------ evaluation


def test_ground_truth_rule():
    label_map = np.array([0, 1, 2, 3], np.uint8)
    np.testing.assert_array_equal(logic.ground_truth_for(label_map, "lung", "lung"), [0, 1, 1, 1])
    np.testing.assert_array_equal(logic.ground_truth_for(label_map, "infection", "lung"), [0, 0, 0, 1])
    binary = np.array([0, 1, 1, 0], np.uint8)
    np.testing.assert_array_equal(logic.ground_truth_for(binary, "infection", "infection"), [0, 1, 1, 0])
    assert logic.ground_truth_for(binary, "infection", "lung") is None
    np.testing.assert_array_equal(normalise_labels(np.array([0, 255], np.uint8)), [0, 1])
    np.testing.assert_array_equal(normalise_labels(np.array([0, 85, 170, 255], np.uint8)), [0, 1, 2, 3])
    with pytest.raises(DataValidationError, match="file 'gt.png': unexpected mask values"):
        normalise_labels(np.array([0, 7], np.uint8), "gt.png")


def test_evaluate_known_scores():
    lungs = np.zeros((1, 4, 4), np.uint8)
    lungs[0, :2, :] = 1  # 8 lung pixels predicted
    infection = np.zeros_like(lungs)
    infection[0, 0, :2] = 1  # 2 infection pixels predicted
    seg = _seg(lungs, infection)
    gt = np.zeros((1, 4, 4), np.uint8)
    gt[0, :1, :] = 1  # 4 lung pixels (label 1) ...
    gt[0, 1, :2] = 3  # ... plus 2 infected lung pixels (label 3)
    scores = logic.evaluate(seg, gt, "Both")
    # lung: pred 8, gt 6, tp 6 -> dice 12/14; infection: pred 2 (row 0), gt 2 (row 1), tp 0
    assert scores["lung"]["dice"] == pytest.approx(12 / 14)
    assert scores["lung"]["precision"] == pytest.approx(6 / 8)
    assert scores["lung"]["recall"] == pytest.approx(1.0)
    assert scores["lung"]["iou"] == pytest.approx(6 / 8)
    assert scores["infection"]["dice"] == pytest.approx(0.0)
    # a binary mask is never assumed to be of a task: the task must be given
    binary = (gt > 0).astype(np.uint8)
    for choice in ("Lungs", "Infection", "Both"):
        with pytest.raises(InputError, match="binary mask .* choose whether it is a lung mask or an infection"):
            logic.evaluate(seg, binary, choice)
    only_lung = logic.evaluate(seg, binary, "Lungs", binary_task="lung")
    assert list(only_lung) == ["lung"] and only_lung["lung"]["dice"] == pytest.approx(12 / 14)
    assert "f1" not in only_lung["lung"]  # F1 is the Dice on binary masks: one tile
    inf_gt = np.zeros_like(gt)
    inf_gt[0, 0, :2] = 1
    assert logic.evaluate(seg, inf_gt, "Both", binary_task="infection")["infection"]["dice"] == 1.0
    with pytest.raises(InputError, match="binary ground truth"):
        logic.evaluate(_seg(lungs, None), inf_gt, "Lungs", binary_task="infection")


def test_read_ground_truth_upload_checks(tmp_path):
    img = _ct_slice()
    loaded = logic.read_upload("slice.png", _png(img))
    gt = np.zeros((48, 48), np.uint8)
    gt[5:10, 5:10] = 255
    out = logic.read_ground_truth_upload("gt.png", _png(gt), loaded)
    assert out.shape == (1, 48, 48) and set(np.unique(out)) == {0, 1}
    with pytest.raises(InputError, match=r"shape 40x48 pixels .* 48x48 pixels"):
        logic.read_ground_truth_upload("gt.png", _png(gt[:40]), loaded)
    with pytest.raises(InputError, match="colour"):
        logic.read_ground_truth_upload("gt.png", _png(np.dstack([gt, gt * 0, gt])), loaded)
    with pytest.raises(InputError, match="corrupt"):
        logic.read_ground_truth_upload("gt.png", b"garbage", loaded)
    with pytest.raises(InputError, match="unsupported ground-truth mask type"):
        logic.read_ground_truth_upload("gt.nii.gz", b"garbage", loaded)

    vol = np.zeros((40, 36, 4), np.int16)
    loaded3 = logic.read_upload("ct.nii.gz", _nifti_bytes(vol + 100, np.diag([1.0, 1.0, 2.5, 1.0])))
    labels = np.zeros_like(vol, dtype=np.uint8)
    labels[30:, :, 1] = 3  # right-most voxels in x of a RAS file: the patient's left
    out3 = logic.read_ground_truth_upload("gt.nii.gz", _nifti_bytes(labels, np.diag([1.0, 1.0, 2.5, 1.0])), loaded3)
    assert out3.shape == loaded3.shape and out3.sum() == labels.sum()
    np.testing.assert_array_equal(loaded3.volume.to_original(out3), labels)
    with pytest.raises(InputError, match="cannot read"):
        logic.read_ground_truth_upload("gt.nii.gz", b"\x1f\x8b not gzip", loaded3)
    with pytest.raises(InputError, match=r"file 'gt.nii.gz': .*non-integer values"):
        logic.read_ground_truth_upload(
            "gt.nii.gz", _nifti_bytes(labels * np.float32(0.5), np.diag([1.0, 1.0, 2.5, 1.0])), loaded3
        )


def test_report_headline():
    report = {
        "lung_volume_ml": {"left": 1.0, "right": 2.0, "total": 3.0},
        "infection_percent": {"left": 10.0, "right": 0.0, "total": 10 / 3},
        "severity": {"left": 2, "right": 0, "total": 1},
        "severity_label": {"left": "mild", "right": "none", "total": "minimal"},
    }
    rows = dict(logic.report_headline(report, is_2d=False))
    assert rows == {
        "Lung volume": "3.0 ml",
        "Left lung involved": "10.0 %",
        "Right lung involved": "0.0 %",
        "Lungs involved": "3.3 %",
        "Severity grade": "1/5",
    }
    lungs_only = {"lung_volume_ml": {"total": 5.0}, "infection_percent": None, "severity": None}
    assert logic.report_headline(lungs_only) == [("Lung volume", "5.0 ml")]

    # an implausible input: no figures at all (the page shows the warning instead)
    assert logic.report_headline({**report, "implausible_input": "not a chest CT"}) == []
    # a 2D slice: pixels and percentages, never ml nor a severity grade
    slice_report = {
        "lung_area_pixels": {"total": 900},
        "lung_percent_of_image": 22.0,
        "infection_percent_of_lung_area": {"left": 5.0, "right": 0.0, "total": 2.5},
    }
    rows = dict(logic.report_headline(slice_report, is_2d=True))
    assert rows == {
        "Lung area": "900 px",
        "Lungs in the image": "22.0 %",
        "Left lung area involved": "5.0 %",
        "Right lung area involved": "0.0 %",
        "Lung area involved": "2.5 %",
    }


def test_describe_error_names_the_upload_not_the_server_path():
    import tempfile

    assert logic.describe_error(InputError("file 'x': bad"), "Reading") == "Reading: file 'x': bad"
    msg = logic.describe_error(ValueError("boom\n" + "trace" * 100), "Segmentation")
    assert msg == "Segmentation failed. See the server log for details."  # no class name, no detail
    temp = f"{tempfile.gettempdir()}/lungseg-upload-abc123/my_scan_1_.nii.gz"
    exc = InputError(f"file {temp!r}: not a readable NIfTI (ImageFileError: bad header)")
    msg = logic.describe_error(exc, "Reading", {"my_scan_1_.nii.gz": "my scan (1).nii.gz"})
    assert msg == "Reading: file 'my scan (1).nii.gz': not a readable NIfTI (bad header)"
    assert "lungseg-upload" not in msg and "Error" not in msg
