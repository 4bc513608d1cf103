"""#29 in the web UI: the lesion table and its points, the models' provenance and the banner for
synthetic-trained models on other CT, and the voxel-size field for a placeholder spacing.

The models are the rule models of ``chest_models`` (an intensity band each, no training), recorded as
trained on ``synthetic_demo`` in the ``demo`` environment; the CT is a chest drawn there, not by the
synthetic generator, so it is not one of the generator's phantoms unless marked as one.
"""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from chest_models import SPACING, chest, save, write_models
from test_ui_app import _app, _assert_no_exception, _errors, _metrics, _upload

from lungseg.app import logic, page_viewer, viewer
from lungseg.app.lesions_view import lesion_frame, selected_row
from lungseg.app.provenance_view import provenance_lines, sidebar_provenance, spacing_note, synthetic_banner
from lungseg.errors import InputError
from lungseg.inference.export import lesion_table
from lungseg.inference.segment import Segmentation
from lungseg.volume import from_canonical_array


@pytest.fixture(scope="module")
def synthetic_models(tmp_path_factory):
    return write_models(tmp_path_factory.mktemp("ui_synthetic"), "synthetic_demo")


def _nii_bytes(path) -> bytes:
    data = path.read_bytes()
    return data if path.name.endswith(".gz") else gzip.compress(data)


# -------------------------------------------------------------------------------------- lesions


def test_lesion_points_follow_the_lesion_table_and_a_joined_region_is_one_lesion():
    inf = np.zeros((6, 20, 20), np.uint8)
    inf[1:4, 2:12, 2:4] = 1  # a U in 3D: two walls joined by a floor, its centroid off the lesion
    inf[1:4, 2:12, 10:12] = 1
    inf[3, 10:12, 2:12] = 1
    inf[4, 12, 12] = 1  # touches the U only by a corner (26-connected): still the same lesion
    inf[1, 16:18, 16:18] = 1  # a separate small lesion
    lungs = np.ones_like(inf)
    lungs[:, :, 10:] = 2
    ct = np.where(inf > 0, -300, -850).astype(np.int16)
    seg = Segmentation(lung_labels=lungs, infection=inf, source_kind="hu")
    rows = lesion_table(from_canonical_array(ct, (2.0, 1.0, 1.0)), seg)
    points = viewer.lesion_points(inf)
    assert [r["voxels"] for r in rows] == [int(inf.sum()) - 4, 4]  # the U with its corner voxel, then the small one
    assert len(points) == len(rows) == 2
    for row, point in zip(rows, points):
        assert inf[point] == 1  # on a lesion, even where the centroid is not
        assert row["slice_first"] <= point[0] <= row["slice_last"]
    assert points[1][1:] in {(16, 16), (16, 17), (17, 16), (17, 17)}  # the small lesion's own voxels
    assert rows[0]["lung"] == "both" and rows[1]["lung"] == "right"
    assert viewer.lesion_points(np.zeros_like(inf)) == []

    frame = lesion_frame(rows)
    assert list(frame["lesion"]) == [1, 2] and list(frame["voxels"]) == [r["voxels"] for r in rows]
    assert frame["mean HU"].tolist() == [-300.0, -300.0]
    assert frame["volume (ml)"].tolist() == pytest.approx([r["voxels"] * 0.002 for r in rows])
    u8_rows = lesion_table(from_canonical_array(ct.clip(0, 255).astype(np.uint8), (2.0, 1.0, 1.0)),
                           Segmentation(lung_labels=lungs, infection=inf, source_kind="uint8"))
    assert "mean HU" not in lesion_frame(u8_rows).columns  # no HU for 0-255 input

    assert selected_row({"selection": {"rows": [1], "columns": []}}) == 1
    assert selected_row({"selection": {"rows": []}}) is None and selected_row(None) is None


# ----------------------------------------------------------------------------------- provenance


def _segment(models, path):
    loaded = logic.read_upload(path.name, path.read_bytes())
    choices = logic.model_choices(models)
    lung = logic.load_ui_model(choices["lung"][0].path, "lung", models)
    infection = logic.load_ui_model(choices["infection"][0].path, "infection", models)
    seg = logic.segment_upload(loaded, lung, infection, "Both")
    return loaded, seg, logic.ui_report(seg, loaded)


def test_synthetic_models_on_other_ct_get_the_banner_and_a_phantom_does_not(tmp_path, synthetic_models):
    ct, _ = chest()
    loaded, seg, report = _segment(synthetic_models, save(tmp_path / "chest.nii.gz", ct))
    banner = synthetic_banner(seg, report)
    assert banner is not None and report["severity"] is None  # withheld, as the CLI withholds it
    assert report["severity_withheld"] in banner and "synthetic_demo" in banner
    lines = provenance_lines(report["provenance"])
    assert lines[0].startswith("Lung model lung_unet: trained on synthetic_demo (env demo")
    assert "validation case Dice 0.955 on synthetic phantoms" in lines[0]
    assert "validation case Dice 0.720 on synthetic phantoms" in lines[1]
    choice = logic.model_choices(synthetic_models)["infection"][0]
    assert sidebar_provenance(choice).startswith("trained on synthetic_demo (env demo")
    assert report["lesions"] and report["lesions"] == lesion_table(loaded.volume, seg)  # what lesions.csv gets

    _, seg, report = _segment(synthetic_models, save(tmp_path / "phantom.nii.gz", ct, phantom_marker=True))
    assert synthetic_banner(seg, report) is None and report["severity"] is not None


# -------------------------------------------------------------------------------------- spacing


def test_a_placeholder_spacing_is_flagged_and_the_field_takes_the_cli_path(tmp_path):
    from lungseg.imaging import window_to_uint8

    ct, _ = chest(shape=(40, 64, 64))
    u8 = np.asarray(window_to_uint8(ct, "hu", (-1250.0, 250.0)))
    path = save(tmp_path / "converted.nii.gz", u8, spacing=(1.0, 1.0, 1.0))
    loaded = logic.read_upload(path.name, _nii_bytes(path))
    assert "placeholder" in spacing_note(loaded.volume)
    fixed = logic.with_spacing(loaded, " 0.8, 0.8 ,2.5")
    assert fixed.volume.spacing == (2.5, 0.8, 0.8) and spacing_note(fixed.volume) is None
    assert fixed.volume.meta["spacing_source"] == "--spacing"  # lungseg predict --spacing's own code path
    np.testing.assert_allclose(viewer.position_mm(fixed.volume, (4, 0, 0))[2] - viewer.position_mm(fixed.volume, (0, 0, 0))[2],
                               4 * 2.5, atol=1e-6)  # the views and mm positions use the given size
    with pytest.raises(InputError, match="converted.nii.gz.*three positive numbers"):
        logic.with_spacing(loaded, "0.8,0.8")
    hu = save(tmp_path / "hu.nii.gz", ct, spacing=SPACING)
    assert spacing_note(logic.read_upload(hu.name, _nii_bytes(hu)).volume) is None


# ---------------------------------------------------------------------------------- the page


def test_page_shows_provenance_banner_lesion_table_and_takes_a_voxel_size(monkeypatch, tmp_path, synthetic_models):
    from lungseg.imaging import window_to_uint8

    ct, _ = chest()
    at = _app(monkeypatch, synthetic_models)
    sidebar = " ".join(c.value for c in at.sidebar.caption)
    assert "Lung model lung_unet: trained on synthetic_demo (env demo" in sidebar
    assert "validation case Dice 0.955 on synthetic phantoms" in sidebar

    at = _upload(at, "ct_upload", "chest.nii.gz", _nii_bytes(save(tmp_path / "chest.nii.gz", ct)))
    _assert_no_exception(at)
    assert not _errors(at)
    seg, report = at.session_state["_seg"][1], at.session_state["_seg"][2]
    banners = [w.value for w in at.warning if "Not for interpretation" in w.value]
    assert len(banners) == 1 and report["severity_withheld"] in banners[0]
    assert "Severity grade" not in _metrics(at)
    assert any("trained on synthetic_demo" in c.value for c in at.caption)  # the provenance line above the viewer
    table = at.dataframe[0].value
    assert len(table) == len(report["lesions"]) > 0 and list(table["voxels"]) == [r["voxels"] for r in report["lesions"]]

    at.radio(key="view_mode").set_value(page_viewer.PNG_VIEWS).run()
    at.button(key="next_lesion").click().run()
    _assert_no_exception(at)
    points = viewer.lesion_points(seg.infection)
    key = f"point_{at.session_state['_input'].digest[:12]}"
    assert tuple(at.session_state[key]) == points[0] and at.slider(key=f"z_{key}").value == points[0][0]
    assert any(f"lesion 1 of {len(points)}" in c.value and " HU here" in c.value for c in at.caption)
    at.selectbox(key="window").set_value(page_viewer.FREE_WINDOW).run()
    at.number_input(key="window_level").set_value(40.0).run()
    _assert_no_exception(at)
    assert (at.session_state["_viewer_cache"]["display"][0][1]) == (40.0, 1500.0)  # the free window drew the views

    u8 = np.asarray(window_to_uint8(chest(shape=(40, 64, 64))[0], "hu", (-1250.0, 250.0)))
    at = _upload(at, "ct_upload", "converted.nii.gz", _nii_bytes(save(tmp_path / "c.nii.gz", u8, spacing=(1, 1, 1))))
    _assert_no_exception(at)
    assert any("probably not the scan's" in w.value for w in at.warning)
    nominal = at.session_state["_seg"][2]
    assert nominal["volumes_nominal"] is True
    spacing = next(t for t in at.text_input if str(t.key).startswith("spacing_"))
    at = spacing.set_value("0.8,0.8,2.5").run()
    _assert_no_exception(at)
    fixed = at.session_state["_seg"][2]
    assert fixed["spacing_source"] == "--spacing" and fixed["volumes_nominal"] is False
    assert fixed["lung_volume_ml"]["total"] == pytest.approx(fixed["voxels"]["lung"] * 2.5 * 0.8 * 0.8 / 1000)
    assert not any("probably not the scan's" in w.value for w in at.warning)
    spacing = next(t for t in at.text_input if str(t.key).startswith("spacing_"))
    at = spacing.set_value("0.8,0.8").run()
    assert any("converted.nii.gz" in e and "three positive numbers" in e for e in _errors(at))


# ------------------------------------------------------------------------------------- NiiVue


def test_niivue_gets_the_ct_in_hu_as_the_same_bytes_every_time():
    import nibabel as nib

    ct, _ = chest(shape=(4, 32, 32))
    volume = from_canonical_array(ct, SPACING)
    data = viewer.viewer_ct(volume, "hu")
    assert viewer.viewer_ct(volume, "hu") == data  # no time stamp: NiiVue sees an unchanged CT as unchanged
    img = nib.Nifti1Image.from_bytes(gzip.decompress(data))
    assert img.get_data_dtype() == np.int16  # HU, so NiiVue's footer reads HU at the crosshair
    np.testing.assert_array_equal(volume.to_original(ct), np.asarray(img.dataobj))
    assert (float(img.header["cal_min"]), float(img.header["cal_max"])) == (-1350.0, 150.0)  # the lung window
    u8 = nib.Nifti1Image.from_bytes(gzip.decompress(viewer.viewer_ct(volume, "uint8")))
    assert u8.get_data_dtype() == np.uint8
