"""The web UI's pure parts added for the viewer (#15): model ranking, display, lesions, error maps,
per-lung / per-slice scores, 2D reports and the left-out dense tissue check. No Streamlit, no model."""

from __future__ import annotations

import gzip
import json
import os
import time

import nibabel as nib
import numpy as np
import pytest

from lungseg.app import logic, report_view, viewer
from lungseg.errors import InputError
from lungseg.inference.choice import is_finished, rank_models
from lungseg.inference.segment import Segmentation
from lungseg.volume import from_canonical_array, load_canonical

# ------------------------------------------------------------------------------------ model choice


def _model(models, variant: str, version: str, config: bool = True) -> None:
    (models / variant / "model.keras" / version).mkdir(parents=True)
    (models / variant / "model.keras" / version / "model.keras").write_bytes(b"keras")
    if config:
        (models / variant / "model_config.json" / version).mkdir(parents=True)
        (models / variant / "model_config.json" / version / "model_config.json").write_text("{}")


def _folds(models, variant: str, n: int, configs: int) -> None:
    (models / variant).mkdir(parents=True)
    for k in range(n):
        (models / variant / f"fold_{k}.keras").write_bytes(b"keras")
        if k < configs:
            (models / variant / f"fold_{k}.json").write_text("{}")


def _score(reports, variant: str, file: str, key: str, value) -> None:
    (reports / variant).mkdir(parents=True, exist_ok=True)
    (reports / variant / file).write_text(json.dumps({key: value}))


def test_rank_models_finished_only_best_score_first(tmp_path):
    models, reports = tmp_path / "data" / "06_models", tmp_path / "data" / "08_reporting"
    v1, v2, v3 = "2025-01-01T00.00.00.000Z", "2025-02-01T00.00.00.000Z", "2025-03-01T00.00.00.000Z"
    _model(models, "lung_deeplabv3plus", v3, config=False)  # still being trained: never offered
    _model(models, "lung_deeplabv3plus", v2)
    _model(models, "lung_unet", v1)
    _model(models, "lung_unet", v2)
    _folds(models, "lung_unet_cv", 3, configs=3)
    _folds(models, "infection_unet_cv", 3, configs=2)  # a fold without config: not finished
    _model(models, "infection_unet", v1)
    _score(reports, "lung_deeplabv3plus", "metrics.json", "case_dice", 0.80)
    _score(reports, "lung_unet", "metrics.json", "case_dice", 0.95)  # the newest lung_unet's evaluation
    _score(reports, "lung_unet_cv", "cv_summary.json", "case_dice_oof_mean", 0.90)
    ranked = rank_models(models)
    lung = [(m.variant, m.version, m.score) for m in ranked["lung"]]
    assert lung == [
        ("lung_unet", v2, 0.95),
        ("lung_unet_cv", lung[1][1], 0.90),
        ("lung_deeplabv3plus", v2, 0.80),
        ("lung_unet", v1, None),  # an older version: the metrics file is not about it
    ]
    assert ranked["lung"][1].ensemble and ranked["lung"][1].score_name == "out-of-fold case Dice"
    assert ranked["lung"][0].label == f"lung_unet ({v2}) - validation case Dice 0.950"
    assert ranked["lung"][3].label.endswith("no recorded score")
    assert [m.variant for m in ranked["infection"]] == ["infection_unet"]  # the unfinished folds are left out
    assert ranked["lung"][0].describe() == {
        "variant": "lung_unet",
        "version": v2,
        "fold_ensemble": False,
        "score": 0.95,
        "score_name": "validation case Dice",
    }


def test_rank_models_ignores_stale_or_bad_scores(tmp_path):
    models, reports = tmp_path / "06_models", tmp_path / "08_reporting"
    v1 = "2025-01-01T00.00.00.000Z"
    _score(reports, "lung_unet", "metrics.json", "case_dice", 0.99)
    old = time.time() - 3600
    os.utime(reports / "lung_unet" / "metrics.json", (old, old))  # evaluated before this model was saved
    _model(models, "lung_unet", v1)
    _model(models, "lung_deeplabv3plus", v1)
    _score(reports, "lung_deeplabv3plus", "metrics.json", "case_dice", "nan")
    assert [m.score for m in rank_models(models)["lung"]] == [None, None]
    assert rank_models(tmp_path / "missing") == {"lung": [], "infection": []}
    entry = {"path": models / "lung_unet" / "model.keras" / v1 / "model.keras", "ensemble": False}
    assert is_finished(entry)
    os.remove(models / "lung_unet" / "model_config.json" / v1 / "model_config.json")
    assert not is_finished(entry)


# ------------------------------------------------------------------------------------ display


def test_display_windows_and_nifti_on_the_input_grid(tmp_path):
    hu = np.array([[[-1350, -600, 40, 150, 240]]], np.int16)
    lung = viewer.display_volume(hu, "hu", "Lung (-600/1500)")
    np.testing.assert_array_equal(lung[0, 0, [0, 1, 3]], [0, 128, 255])
    media = viewer.display_volume(hu, "hu", "Mediastinum (40/400)")
    np.testing.assert_array_equal(media[0, 0, [1, 2, 4]], [0, 128, 255])
    u8 = np.array([[[3, 200]]], np.uint8)
    np.testing.assert_array_equal(viewer.display_volume(u8, "uint8", None), u8)  # no window on 0-255 input

    affine = np.diag([0.7, -0.7, 2.5, 1.0])  # RAS-ish stored file: not the canonical LPS
    data = np.zeros((6, 5, 4), np.int16)
    data[5, 0, 3] = 7
    volume = load_canonical(nib.Nifti1Image(data, affine))
    mask = np.asarray(volume.array == 7)
    img = nib.Nifti1Image.from_bytes(gzip.decompress(viewer.nifti_gz(volume, mask, 1)))
    np.testing.assert_allclose(img.affine, affine, atol=1e-6)  # NiiVue gets the scanner geometry of the input
    assert np.asarray(img.dataobj)[5, 0, 3] == 1 and np.asarray(img.dataobj).sum() == 1
    assert (float(img.header["cal_min"]), float(img.header["cal_max"])) == (0.0, 1.0)
    point = tuple(int(i) for i in np.argwhere(mask)[0])
    np.testing.assert_allclose(viewer.position_mm(volume, point), (5 * 0.7, 0.0, 3 * 2.5))


def test_large_volumes_go_to_niivue_at_half_resolution_in_plane(monkeypatch):
    affine = np.array([[0.0, 0.0, -2.5, 10.0], [0.8, 0.0, 0.0, -5.0], [0.0, -0.8, 0.0, 3.0], [0, 0, 0, 1.0]])
    data = np.zeros((4, 8, 6), np.int16)  # an oblique-free but permuted file grid
    volume = load_canonical(nib.Nifti1Image(data, affine))
    arr = np.zeros(volume.array.shape, np.uint8)
    arr[1, 2:4, 4:6] = [[10, 20], [30, 41]]  # one 2 x 2 block
    mask = np.zeros_like(arr)
    mask[2, 3, 1] = 1  # a one-voxel lesion
    assert viewer.viewer_factor(arr.shape) == 1
    monkeypatch.setattr(viewer, "MAX_VIEWER_VOXELS", arr.size - 1)
    assert viewer.viewer_factor(arr.shape) == 2
    img = nib.Nifti1Image.from_bytes(gzip.decompress(viewer.viewer_nifti(volume, arr, 255, 2)))
    small = np.asarray(img.dataobj)  # canonical (x, y, z)
    assert small.shape == (arr.shape[2] // 2, arr.shape[1] // 2, arr.shape[0])
    assert small[2, 1, 1] == 25  # the block's mean, rounded
    # the block's centre in scanner space: the mean of its four voxels' positions
    corners = [viewer.position_mm(volume, (1, y, x)) for y in (2, 3) for x in (4, 5)]
    np.testing.assert_allclose((img.affine @ [2, 1, 1, 1])[:3], np.mean(corners, axis=0), atol=1e-5)
    lesion = np.asarray(
        nib.Nifti1Image.from_bytes(gzip.decompress(viewer.viewer_nifti(volume, mask, 1, 2, True))).dataobj
    )
    assert lesion.sum() == 1 and lesion[0, 1, 2] == 1  # kept by the block maximum


def test_orthogonal_views_radiological_with_markers():
    gray = np.zeros((10, 20, 30), np.uint8)
    codes = np.zeros_like(gray)
    codes[4, 10, 25] = 1  # a voxel in the patient's left (large column index)
    views = viewer.orthogonal_views(gray, [(codes, {1: (0, 255, 0)}, 1.0)], (4, 10, 25), (2.0, 1.0, 1.0), width=300)
    assert list(views) == ["Axial", "Coronal", "Sagittal"]
    axial = views["Axial"]
    assert axial.shape == (200, 300, 3)  # 20 x 30 mm
    assert views["Coronal"].shape == (200, 300, 3)  # 10 slices x 2 mm = 20 mm high, 30 mm wide
    ys, xs = np.nonzero(axial[..., 1] == 255)
    assert xs.mean() > 200  # the patient's left drawn on the right of the picture
    assert (axial[:, :40] != 0).any() and (axial[:, -40:] != 0).any()  # the R and L markers


def test_lesions_and_start_point():
    inf = np.zeros((8, 20, 20), np.uint8)
    inf[1:3, 2:4, 2:4] = 1  # 8 voxels
    inf[5, 10:15, 10:15] = 1  # 25 voxels, one slice
    lungs = np.ones_like(inf)
    assert viewer.lesion_points(inf) == [(5, 12, 12), (2, 2, 2)]  # largest first: 25 voxels, then 8
    assert viewer.start_point(lungs, inf) == (5, 12, 12)  # the slice with the most infection
    assert viewer.start_point(lungs, np.zeros_like(inf))[0] == 0  # else the most lung (ties: first)


# ------------------------------------------------------------------------------------ evaluation


def _seg(lungs, infection) -> Segmentation:
    tasks = ("lung",) if infection is None else ("lung", "infection")
    inf = np.zeros_like(lungs) if infection is None else infection
    return Segmentation(lung_labels=lungs, infection=inf, tasks=tasks)


def test_error_map_per_slice_and_per_lung_scores():
    gt = np.zeros((3, 4, 8), np.uint8)
    gt[:2, :, 4:] = 1  # the left lung (larger column index), slices 0-1
    gt[:2, :, :4] = 2  # the right lung
    gt[1, 0, 6:] = 3  # infection in the left lung
    lungs = np.zeros_like(gt)
    lungs[0, :, 4:] = 1
    lungs[0, :, :4] = 2
    lungs[1, :, 4:] = 2  # slice 1: the left lung labelled right (a laterality error)
    infection = np.zeros_like(gt)
    infection[1, 0, 7] = 1
    infection[1, 3, 0] = 1
    seg = _seg(lungs, infection)

    codes = logic.task_error_map(seg, gt, "infection")
    assert codes[1, 0, 7] == 1 and codes[1, 3, 0] == 2 and codes[1, 0, 6] == 3
    assert np.count_nonzero(codes) == 3
    per_slice = logic.per_slice_dice(seg, gt, "lung")
    assert per_slice[0] == 1.0 and per_slice[1] == pytest.approx(2 * 16 / (16 + 32)) and np.isnan(per_slice[2])
    per_lung = logic.per_lung_dice(seg, gt, ["lung", "infection"])
    assert per_lung["lung"]["left"] == pytest.approx(2 * 16 / (16 + 32))  # slice 1's left lung was called right
    assert per_lung["infection"]["left"] == pytest.approx(2 / 3)  # tp 1, fn 1, inside the left lung
    assert per_lung["infection"]["right"] == 0.0  # a false positive, no truth

    rows = logic.volume_rows(seg, gt, ["lung", "infection"], None, (2.0, 1.0, 1.0), is_2d=False)
    assert rows[0] == {
        "what": "lung",
        "predicted (ml)": pytest.approx(0.096),
        "ground truth (ml)": pytest.approx(0.128),
    }
    assert [r["what"] for r in rows] == ["lung", "left lung", "right lung", "infection"]
    binary = (gt > 0).astype(np.uint8)
    with pytest.raises(InputError, match="binary mask"):
        logic.task_error_map(seg, binary, "lung")
    assert logic.per_lung_dice(seg, binary, ["lung"]) == {}  # no sides in a binary mask
    rows_2d = logic.volume_rows(seg, binary, ["lung"], "lung", (1.0, 1.0, 1.0), is_2d=True)
    assert rows_2d == [{"what": "lung", "predicted (pixels)": 48.0, "ground truth (pixels)": 64.0}]
    assert logic.scored_tasks(binary, "Both", "infection") == ["infection"]


# ------------------------------------------------------------------------------------ 2D report


def test_slice_report_in_pixels_and_the_left_out_dense_tissue_warning():
    size = 64
    ct = np.full((1, size, size), 170, np.uint8)  # soft tissue (0-255 input through the model window)
    lungs = np.zeros((1, size, size), np.uint8)
    lungs[0, 16:48, 36:56] = 1
    lungs[0, 16:48, 8:28] = 2
    ct[lungs > 0] = 30  # aerated lung
    infection = np.zeros_like(lungs)
    infection[0, 20:24, 40:44] = 1
    seg = _seg(lungs, infection)
    from lungseg.inference.report import make_report

    report = report_view.slice_report(make_report(seg, (1.0, 1.0, 1.0)), seg)
    assert report["lung_area_pixels"] == {"left": 640, "right": 640, "total": 1280}
    assert report["infection_percent_of_lung_area"]["left"] == pytest.approx(100 * 16 / 640)
    assert not [k for k in report if "ml" in k] and "ml" not in report["message"]
    assert report_view.left_out_dense(ct, "uint8", lungs, (1.0, 1.0, 1.0), is_2d=True) == 0.0

    # dense consolidation at the edge of each lung (about 0 HU): the lung model left it out
    size = 128
    ct = np.full((1, size, size), 170, np.uint8)
    lungs = np.zeros((1, size, size), np.uint8)
    lungs[0, 44:84, 72:96] = 1
    lungs[0, 44:84, 32:56] = 2
    ct[lungs > 0] = 30
    for cols in (slice(86, 96), slice(32, 42)):  # the left lung, then the right
        lungs[0, 58:70, cols] = 0  # a 12 x 10 pixel bite out of the lung's outer edge
        ct[0, 58:70, cols] = 215
    fraction = report_view.left_out_dense(ct, "uint8", lungs, (1.0, 1.0, 1.0), is_2d=True)
    bites = 240 / int(np.count_nonzero(lungs))
    assert 0.4 * bites < fraction <= bites  # the closing finds the inner part of each bite
    assert fraction > report_view.LEFT_OUT_WARN_FRACTION
    loaded = logic.LoadedInput("slice.png", from_canonical_array(ct), "uint8", True, "digest")
    report = logic.ui_report(_seg(lungs, np.zeros_like(lungs)), loaded)
    assert "leave out dense tissue" in report["warning"] and report["dense_tissue_left_out_percent_of_lung"] > 5
