"""The Streamlit page, driven by ``streamlit.testing.v1.AppTest`` with tiny models trained here.

Also home of the helpers the browser test reuses (synthetic case, tiny trained models).
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import tempfile
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pytest

import lungseg.app
from lungseg.app import logic
from lungseg.evaluation import metrics

APP_SCRIPT = Path(lungseg.app.__file__).resolve().parent / "streamlit_app.py"
VERSION = "2025-01-01T00.00.00.000Z"
IMAGE_SIZE = 32
RUN_TIMEOUT = 120


# ------------------------------------------------------------------------------------ helpers


def synthetic_case(size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 0-255 chest slice and its label map (1 left lung at the larger column, 2 right, 3 infection)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    img = np.full((size, size), 20.0, np.float32)
    body = ((yy - size / 2) / (0.46 * size)) ** 2 + ((xx - size / 2) / (0.42 * size)) ** 2 < 1
    img[body] = 170
    labels = np.zeros((size, size), np.uint8)
    for label, centre in ((2, 0.31), (1, 0.69)):
        cy = size * (0.5 + rng.uniform(-0.05, 0.05))
        cx = size * (centre + rng.uniform(-0.03, 0.03))
        ay, ax = size * rng.uniform(0.2, 0.27), size * rng.uniform(0.1, 0.14)
        lung = ((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2 < 1
        img[lung] = 40
        labels[lung] = label
    ys, xs = np.nonzero(labels == 1)
    k = rng.integers(len(ys))
    r = size * rng.uniform(0.05, 0.08)
    infection = ((yy - ys[k]) ** 2 + (xx - xs[k]) ** 2 < r * r) & (labels == 1)
    img[infection] = 115
    labels[infection] = 3
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), labels


def png_bytes(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return buf.tobytes()


def _save(models_dir: Path, task: str, model, cfg) -> None:
    """Save a model and its config in the training pipeline's versioned layout."""
    variant = f"{task}_unet"
    model_path = models_dir / variant / "model.keras" / VERSION / "model.keras"
    config_path = models_dir / variant / "model_config.json" / VERSION / "model_config.json"
    model_path.parent.mkdir(parents=True)
    config_path.parent.mkdir(parents=True)
    model.save(model_path)
    config = {"task": task, "architecture": "unet", **cfg.to_dict(), "threshold": 0.5}
    config_path.write_text(json.dumps(config))


def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory, trained_infection: bool = False) -> Path:
    """Tiny U-Nets trained on synthetic slices, saved in the training layout.

    The lung model is trained (12 short epochs). By default the infection model is the same
    weights with the infection config (crop inside the lungs): the page does not care about its
    quality and one training keeps the tests fast (most of a fit's time on CPU is tracing the train
    step). ``trained_infection=True`` trains a real one too (longer; for the README screenshot).
    Made once per pytest session, under the session's base temp folder, so the browser test reuses it.
    """
    root = tmp_path_factory.getbasetemp() / ("ui_tiny_models_inf" if trained_infection else "ui_tiny_models")
    done = root / ".complete"
    if done.is_file():
        return root
    import keras

    from lungseg.imaging import PreprocessConfig, prepare_masks, prepare_slices, to_unit_float
    from lungseg.models import build_model, compile_model

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    keras.utils.set_random_seed(0)

    def train(task: str, epochs: int):
        cfg = PreprocessConfig(image_size=IMAGE_SIZE, crop_mode="body" if task == "lung" else "lung_mask")
        xs, ys = [], []
        for size, seeds in ((64, range(16)), (128, range(100, 108))):
            cases = [synthetic_case(size, seed=s) for s in seeds]
            ct = np.stack([c for c, _ in cases])
            labels = np.stack([lab for _, lab in cases])
            lung_mask = (labels > 0) if task == "infection" else None
            images, records = prepare_slices(ct, "uint8", cfg, lung_mask=lung_mask)
            target = (labels > 0) if task == "lung" else (labels == 3)
            xs.append(to_unit_float(images)[..., None].astype("float32"))
            ys.append(prepare_masks(target.astype(np.uint8), records)[..., None].astype("float32"))
        x, y = np.concatenate(xs), np.concatenate(ys)
        params = {"base_filters": 8, "depth": 3} if trained_infection else {"base_filters": 4, "depth": 2}
        model = build_model("unet", IMAGE_SIZE, params)
        compile_model(model, loss="bce" if task == "lung" else "bce_dice", learning_rate=1e-2)
        model.fit(x, y, batch_size=8, epochs=epochs, verbose=0)
        return model, cfg

    lung, lung_cfg = train("lung", 40 if trained_infection else 12)
    _save(root, "lung", lung, lung_cfg)
    if trained_infection:
        _save(root, "infection", *train("infection", 80))
    else:
        _save(root, "infection", lung, PreprocessConfig(image_size=IMAGE_SIZE, crop_mode="lung_mask"))
    done.write_text("ok")
    return root


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return tiny_models_dir(tmp_path_factory)


def _app(monkeypatch, models_dir: Path, **env: str):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("LUNGSEG_MODELS_DIR", str(models_dir))
    monkeypatch.delenv("LUNGSEG_MAX_UPLOAD_MB", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    at = AppTest.from_file(str(APP_SCRIPT), default_timeout=RUN_TIMEOUT)
    return at.run()


def _upload(at, key_prefix: str, name: str, data: bytes):
    widget = next(w for w in at.file_uploader if str(w.key).startswith(key_prefix))
    return widget.set_value((name, data, "application/octet-stream")).run()


def _errors(at) -> list[str]:
    return [e.value for e in at.error]


def _metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _assert_no_exception(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


# ------------------------------------------------------------------------------------ tests


def test_no_model_names_the_training_command(monkeypatch, tmp_path):
    at = _app(monkeypatch, tmp_path / "no_models")
    _assert_no_exception(at)
    errors = [e.value for e in at.sidebar.error]
    assert len(errors) == 1
    assert "make demo" in errors[0] and "kedro run --pipelines=lung_unet" in errors[0]
    assert "kedro run --pipelines=infection_unet" in errors[0]
    # the app keeps working: an upload still shows the image, with a warning
    img, _ = synthetic_case()
    at = _upload(at, "ct_upload", "slice.png", png_bytes(img))
    _assert_no_exception(at)
    assert len(at.image) == 1 and at.warning and "No segmentation" in at.warning[0].value
    # choosing "Lungs" asks for the lung model only
    at.sidebar.radio(key="choice").set_value("Lungs").run()
    errors = [e.value for e in at.sidebar.error]
    assert "lung_unet" in errors[0] and "infection_unet" not in errors[0]


def test_png_flow_images_report_download_and_dice(monkeypatch, models_dir):
    at = _app(monkeypatch, models_dir)
    _assert_no_exception(at)
    assert not at.sidebar.error
    img, labels = synthetic_case(seed=101)
    at = _upload(at, "ct_upload", "slice.png", png_bytes(img))
    _assert_no_exception(at)
    assert not _errors(at)
    captions = [c for im in at.image for c in im.captions]
    assert any(c.startswith("Original") for c in captions)
    assert any(c.startswith("Predicted mask") for c in captions)
    assert "Overlay" in captions
    shown = _metrics(at)
    # a 2D slice: areas in pixels and percentages, no ml and no severity grade
    assert shown["Lung area"].endswith(" px") and shown["Lung area involved"].endswith(" %")
    assert not any(v.endswith("ml") for v in shown.values()) and "Severity grade" not in shown
    report = at.session_state["_seg"][2]
    assert not [k for k in report if k.endswith("_ml")] and "severity" not in report
    assert "ml" not in report["message"]
    assert any("View: slice images" in c.value for c in at.caption)
    assert [b.label for b in at.download_button] == ["Download the mask (PNG)", "Download the report (JSON)"]
    assert not at.slider  # 2D input: no slice slider

    # ground truth (a label map 1/2/3): Dice, IoU, precision, recall per task (F1 = Dice: one tile)
    at = _upload(at, "gt_upload", "gt.png", png_bytes(labels))
    _assert_no_exception(at)
    assert not _errors(at)
    shown = _metrics(at)
    seg = at.session_state["_seg"][1]
    gt = labels[None]
    for task, truth, pred in (
        ("lung", gt > 0, seg.lung_labels > 0),
        ("infection", gt == 3, seg.infection > 0),
    ):
        for name in logic.METRIC_NAMES:
            expected = getattr(metrics, name)(pred, truth)
            assert shown[f"{logic.METRIC_LABELS[name]} ({task})"] == f"{expected:.4f}"
    assert float(shown["Dice (lung)"]) > 0.3  # the tiny model learnt something
    assert not any(label.startswith("F1") for label in shown)
    assert any("false negative" in m.value for m in at.markdown)  # the error map's legend
    assert any(c == "Error map (infection)" for im in at.image for c in im.captions)

    # "Lungs": no infection output, no severity, lung scores only; "Infection": infection scores only
    at.sidebar.radio(key="choice").set_value("Lungs").run()
    _assert_no_exception(at)
    shown = _metrics(at)
    assert "Dice (lung)" in shown and "Dice (infection)" not in shown and "Severity grade" not in shown
    assert at.session_state["_seg"][1].tasks == ("lung",)
    at.sidebar.radio(key="choice").set_value("Infection").run()
    _assert_no_exception(at)
    shown = _metrics(at)
    assert "Dice (infection)" in shown and "Dice (lung)" not in shown
    assert any(c == "Predicted mask (infection)" for im in at.image for c in im.captions)


def test_bad_inputs_show_an_error_and_the_app_keeps_working(monkeypatch, models_dir):
    at = _app(monkeypatch, models_dir)
    img, labels = synthetic_case(seed=7)
    rgb = np.dstack([img, np.roll(img, 9, axis=1), 255 - img])
    bad = [
        ("notes.txt", b"hello", "unsupported image type"),
        ("slice.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not a readable PNG"),
        ("ct.nii.gz", b"\x1f\x8b\x08\x00garbage", "not a readable NIfTI"),
        ("photo.png", png_bytes(rgb), "colour image"),
        ("tiny.png", png_bytes(np.zeros((1, 1), np.uint8)), "1x1 pixels"),
        ("empty.png", b"", "empty"),
    ]
    for name, data, phrase in bad:
        at = _upload(at, "ct_upload", name, data)
        _assert_no_exception(at)
        errors = _errors(at)
        assert len(errors) == 1 and phrase in errors[0], (name, errors)
        assert not at.image
        # the file by its own name: no server path, no exception class name
        assert name in errors[0] and "lungseg-upload" not in errors[0] and tempfile.gettempdir() not in errors[0]
        assert not re.search(r"\b[A-Z]\w*(Error|Exception)\b", errors[0]), errors[0]

    # then a good image works, and a ground truth of another size is refused
    at = _upload(at, "ct_upload", "slice.png", png_bytes(img))
    _assert_no_exception(at)
    assert not _errors(at) and len(at.image) == 3
    at = _upload(at, "gt_upload", "gt.png", png_bytes(labels[:40, :50]))
    _assert_no_exception(at)
    errors = _errors(at)
    assert len(errors) == 1 and "40x50 pixels" in errors[0] and "64x64 pixels" in errors[0]
    at = _upload(at, "gt_upload", "gt.nii.gz", b"whatever")
    assert "unsupported ground-truth mask type" in _errors(at)[0]
    at = _upload(at, "gt_upload", "gt.png", png_bytes(np.dstack([labels * 80, labels, labels])))
    assert "colour image" in _errors(at)[0]
    at = _upload(at, "gt_upload", "gt.png", png_bytes(labels))
    _assert_no_exception(at)
    assert not _errors(at) and "Dice (lung)" in _metrics(at)


def test_oversized_upload_is_refused(monkeypatch, models_dir):
    at = _app(monkeypatch, models_dir, LUNGSEG_MAX_UPLOAD_MB="0.001")
    img, _ = synthetic_case(seed=3)
    data = png_bytes(img)
    assert len(data) > 1000
    at = _upload(at, "ct_upload", "big.png", data)
    _assert_no_exception(at)
    errors = _errors(at)
    assert len(errors) == 1 and "over the upload limit of 0.001 MB" in errors[0]
    assert "LUNGSEG_MAX_UPLOAD_MB" in errors[0]
    assert not at.image


def _nii(arr_zyx: np.ndarray, affine=None) -> bytes:
    affine = np.diag([-0.8, -0.8, 4.0, 1.0]) if affine is None else affine  # LPS: canonical already
    return gzip.compress(nib.Nifti1Image(np.ascontiguousarray(arr_zyx.transpose(2, 1, 0)), affine).to_bytes())


def _volume_case(seeds=(201, 202, 203, 204, 205, 206, 207)):
    """A HU volume of len(seeds) + 1 slices (8 at 4 mm: 32 mm, whole lungs for ml and severity)."""
    cases = [synthetic_case(seed=s) for s in seeds]
    ct = np.stack([np.zeros_like(cases[0][0])] + [c for c, _ in cases])  # slice 0 holds no lung
    labels = np.stack([np.zeros_like(cases[0][1])] + [lab for _, lab in cases])
    hu = (ct.astype(np.int16) * 6 - 1250).astype(np.int16)  # back to HU through the training window
    return np.maximum(hu, -1000).astype(np.int16), labels  # air at -1000 HU, as a CT has it


def test_nifti_volume_flow_views_download_and_dice(monkeypatch, models_dir):
    from lungseg.app import page_viewer, viewer

    hu, labels = _volume_case()
    at = _app(monkeypatch, models_dir)
    at = _upload(at, "ct_upload", "ct.nii.gz", _nii(hu))
    _assert_no_exception(at)
    assert not _errors(at)
    seg = at.session_state["_seg"][1]
    assert at.radio(key="view_mode").value == page_viewer.NIIVUE  # the multiplanar viewer by default
    assert any(f"View in use: {page_viewer.NIIVUE}" in c.value for c in at.caption)
    assert "window" not in [s.key for s in at.selectbox]  # NiiVue holds the CT in HU and windows it itself
    assert _metrics(at)["Lung volume"].endswith(" ml")
    labels_dl = [b.label for b in at.download_button]
    assert labels_dl == ["Download the mask (NIfTI, input grid)", "Download the report (JSON)"]

    # the PNG views (no WebGL): axial, coronal, sagittal through the start point, with L/R marks
    at.radio(key="view_mode").set_value(page_viewer.PNG_VIEWS).run()
    _assert_no_exception(at)
    assert [c for im in at.image for c in im.captions] == ["Axial", "Coronal", "Sagittal"]
    assert at.selectbox(key="window").value == "Lung (-600/1500)"  # the slice images' window
    start = viewer.start_point(seg.lung_labels, seg.infection)
    assert at.slider(key=f"z_point_{at.session_state['_input'].digest[:12]}").value == start[0]
    assert any("scanner x" in c.value and "mm" in c.value for c in at.caption)
    found = viewer.lesion_points(seg.infection)
    assert found  # the tiny infection model finds something
    at.button(key="next_lesion").click().run()
    _assert_no_exception(at)
    key = f"point_{at.session_state['_input'].digest[:12]}"
    assert at.session_state[key] == found[0] and at.slider(key=f"z_{key}").value == found[0][0]
    assert any(f"lesion 1 of {len(found)}" in c.value for c in at.caption)

    at = _upload(at, "gt_upload", "gt.nii.gz", _nii(labels))
    _assert_no_exception(at)
    assert not _errors(at)
    expected = metrics.dice(seg.lung_labels > 0, labels > 0)
    assert _metrics(at)["Dice (lung)"] == f"{expected:.4f}"
    assert any("Per-slice Dice" in m.value for m in at.markdown)
    assert any("false positive" in m.value for m in at.markdown)
    assert len(at.dataframe) == 3  # the lesions; Dice per lung; predicted and ground-truth volumes
    # a PNG ground truth for a volume is refused with a message
    at = _upload(at, "gt_upload", "gt.png", png_bytes(labels[1]))
    assert "unsupported ground-truth mask type (.png)" in _errors(at)[0]


def test_a_slab_shows_no_volume_and_no_severity(monkeypatch, models_dir):
    hu, _ = _volume_case(seeds=(201, 202, 203))  # 4 slices of 4 mm: a slab
    at = _upload(_app(monkeypatch, models_dir), "ct_upload", "slab.nii.gz", _nii(hu))
    _assert_no_exception(at)
    report = at.session_state["_seg"][2]
    assert report["partial_scan"].startswith("a slab of 4 slices") and report["lung_volume_ml"] is None
    shown = _metrics(at)
    assert "Lung volume" not in shown and "Severity grade" not in shown and "Lungs involved" in shown


def test_implausible_input_shows_the_warning_instead_of_numbers(monkeypatch, models_dir):
    at = _app(monkeypatch, models_dir)
    air = np.full((4, 64, 64), -1000, np.int16)  # nothing but air: no chest, no lungs
    at = _upload(at, "ct_upload", "air.nii.gz", _nii(air))
    _assert_no_exception(at)
    seg = at.session_state["_seg"][1]
    assert seg.implausible_input
    assert not _metrics(at)  # no volume, involvement or severity
    report = at.session_state["_seg"][2]
    assert report["implausible_input"] == seg.implausible_input
    assert report["message"] in [w.value for w in at.warning]  # the guard's words, in place of the figures


def test_binary_ground_truth_needs_a_task_choice(monkeypatch, models_dir):
    at = _app(monkeypatch, models_dir)
    img, labels = synthetic_case(seed=31)
    at = _upload(at, "ct_upload", "slice.png", png_bytes(img))
    infection_only = (labels == 3).astype(np.uint8) * 255  # a binary infection mask
    at = _upload(at, "gt_upload", "infection.png", png_bytes(infection_only))
    _assert_no_exception(at)
    assert not [k for k in _metrics(at) if k.startswith("Dice")]  # nothing scored yet
    assert any("nothing is scored until you do" in w.value for w in at.warning)
    radio = next(r for r in at.radio if str(r.key).startswith("binary_task_"))
    assert radio.value is None
    radio.set_value("infection").run()
    _assert_no_exception(at)
    shown = _metrics(at)
    seg = at.session_state["_seg"][1]
    assert shown["Dice (infection)"] == f"{metrics.dice(seg.infection > 0, labels[None] == 3):.4f}"
    assert "Dice (lung)" not in shown


def test_default_model_is_the_best_finished_one(monkeypatch, models_dir, tmp_path):
    """Three lung models: the newest is unfinished (no config), the alphabetically first scores lower."""
    root = tmp_path / "data"
    models = root / "06_models"
    shutil.copytree(models_dir, models)
    src = models / "lung_unet"
    newer, newest = "2025-03-01T00.00.00.000Z", "2025-09-01T00.00.00.000Z"
    deeplab = models / "lung_deeplabv3plus"
    for version in (newer, newest):
        shutil.copytree(src / "model.keras" / VERSION, deeplab / "model.keras" / version)
    shutil.copytree(src / "model_config.json" / VERSION, deeplab / "model_config.json" / newer)  # newest: none
    reports = root / "08_reporting"
    for variant, dice in (("lung_unet", 0.93), ("lung_deeplabv3plus", 0.71)):
        (reports / variant).mkdir(parents=True)
        (reports / variant / "metrics.json").write_text(json.dumps({"variant": variant, "case_dice": dice}))
    at = _app(monkeypatch, models)
    _assert_no_exception(at)
    box = at.sidebar.selectbox(key="model_lung")
    assert list(box.options) == [
        f"lung_unet ({VERSION}) - validation case Dice 0.930",
        f"lung_deeplabv3plus ({newer}) - validation case Dice 0.710",
    ]
    assert box.value == box.options[0]
    img, _ = synthetic_case(seed=5)
    at = _upload(at, "ct_upload", "slice.png", png_bytes(img))
    _assert_no_exception(at)
    assert any(f"lung: lung_unet (version {VERSION}), validation case Dice 0.930" in c.value for c in at.caption)
    report = at.session_state["_seg"][2]
    assert report["models"]["lung"] == {
        "variant": "lung_unet",
        "version": VERSION,
        "fold_ensemble": False,
        "score": 0.93,
        "score_name": "validation case Dice",
    }


def test_model_selector_when_several_versions(monkeypatch, models_dir, tmp_path):
    many = tmp_path / "models"
    shutil.copytree(models_dir, many)
    newer = "2025-06-01T00.00.00.000Z"
    for sub in ("model.keras", "model_config.json"):
        shutil.copytree(many / "lung_unet" / sub / VERSION, many / "lung_unet" / sub / newer)
    at = _app(monkeypatch, many)
    _assert_no_exception(at)
    box = at.sidebar.selectbox(key="model_lung")
    unscored = " - no recorded score"  # no reports folder: newest first
    assert list(box.options) == [f"lung_unet ({newer}){unscored}", f"lung_unet ({VERSION}){unscored}"]
    assert box.value == f"lung_unet ({newer}){unscored}"
    box.set_value(f"lung_unet ({VERSION}){unscored}").run()
    _assert_no_exception(at)
    img, _ = synthetic_case(seed=5)
    at = _upload(at, "ct_upload", "slice.png", png_bytes(img))
    _assert_no_exception(at)
    assert not _errors(at) and len(at.image) == 3
    key = at.session_state["_seg"][0]
    assert VERSION in dict(key[3])["lung"]  # (digest, spacing, choice, models, precision)


def test_the_sidebar_precision_reloads_the_models_in_bf16_and_the_report_says_so(monkeypatch, models_dir):
    at = _app(monkeypatch, models_dir)
    img, _ = synthetic_case(seed=103)
    at = _upload(at, "ct_upload", "slice.png", png_bytes(img))
    _assert_no_exception(at)
    assert at.sidebar.selectbox(key="precision").value == "float32"
    float32_seg, float32_report = at.session_state["_seg"][1:]
    assert float32_report["precision"] == "float32"
    at = at.sidebar.selectbox(key="precision").set_value("mixed_bfloat16").run()
    _assert_no_exception(at)
    assert not _errors(at)
    seg, report = at.session_state["_seg"][1:]
    assert report["precision"] == "mixed_bfloat16"
    a, b = seg.lung_labels > 0, float32_seg.lung_labels > 0
    assert a.any() and 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.9  # the same tiny model, in bf16


def test_load_model_sets_the_prediction_precision(models_dir):
    choices = logic.model_choices(models_dir)
    loaded = logic.load_ui_model(choices["lung"][0].path, "lung", models_dir, "mixed_bfloat16")
    conv = [layer for layer in loaded.model.layers if layer.weights][0]
    assert loaded.precision == "mixed_bfloat16" and conv.dtype_policy.compute_dtype == "bfloat16"
    assert conv.weights[0].dtype == "float32"
    from lungseg.errors import ConfigError

    with pytest.raises(ConfigError, match="precision must be one of"):
        logic.load_ui_model(choices["lung"][0].path, "lung", models_dir, "fp16")
