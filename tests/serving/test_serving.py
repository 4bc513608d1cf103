"""``lungseg-combined``: registered in a sqlite MLflow store, loaded in a fresh process, served over HTTP.

The models are deterministic "rule" models (fixed convolutions marking the phantom's lung and lesion
intensities, saved and loaded as ordinary ``.keras`` files), so every path must give the very same
masks as ``lungseg predict`` with the same two model files: voxel for voxel.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from rule_models import WINDOW, band_model, unit

from lungseg import cli
from lungseg.limits import load_limits
from lungseg.volume import from_canonical_array

BIN = Path(sys.executable).parent
NAME = "lungseg-combined"
SPACING = (2.5, 0.8, 0.8)
LUNG_HU, LESION_HU, BODY_HU, AIR_HU = -850, -300, 40, -1000


def chest(shape=(12, 64, 64), seed=0) -> np.ndarray:
    """A canonical (z, y, x) HU chest: body, two lungs tapering at both ends, a lesion in the left lung."""
    rng = np.random.default_rng(seed)
    z, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    body = ((yy - h / 2) / (0.40 * h)) ** 2 + ((xx - w / 2) / (0.45 * w)) ** 2 < 1
    ct = np.full(shape, AIR_HU, np.float32)
    for k in range(z):
        ct[k][body] = BODY_HU
        scale = np.sqrt(max(0.0, 1 - (((k + 0.5) / z - 0.5) / 0.45) ** 2))
        if scale > 0.2:
            for x0 in (0.7 * w, 0.3 * w):
                m = ((yy - h / 2) / (0.27 * h * scale)) ** 2 + ((xx - x0) / (0.15 * w * scale)) ** 2 < 1
                ct[k][m] = LUNG_HU
            blob = ((yy - h / 2) / (0.06 * w)) ** 2 + ((xx - 0.7 * w) / (0.06 * w)) ** 2 < 1
            ct[k][blob & (ct[k] == LUNG_HU)] = LESION_HU
    ct += rng.normal(0, 15, shape).astype(np.float32)
    return np.clip(np.round(ct), -1024, 3000).astype(np.int16)


def config(task: str, size: int) -> dict:
    return {"task": task, "architecture": "unet", "image_size": size, "window": list(WINDOW),
            "crop_mode": "body" if task == "lung" else "lung_mask", "clahe_clip_limit": 0.0, "clahe_tile_grid": 4,
            "crop_margin": 2, "threshold": 0.5}


@contextlib.contextmanager
def tracking(uri: str):
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield mlflow
    finally:
        mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two rule models as .keras files, registered once as lungseg-combined in a sqlite store; a CT."""
    from lungseg.inference.models import load_model_spec
    from lungseg.limits import inference_parameters
    from lungseg.serving.bundle import SETTINGS_KEYS
    from lungseg.serving.register import log_combined_model

    tmp = tmp_path_factory.mktemp("serving")
    bands = {"lung": (unit(LUNG_HU) - 0.05, unit(LUNG_HU) + 0.06),
             "infection": (unit(LESION_HU) - 0.08, unit(LESION_HU) + 0.08)}
    files = {}
    for task, (lo, hi) in bands.items():
        folder = tmp / "models" / task
        folder.mkdir(parents=True)
        band_model(64, lo, hi).save(folder / "model.keras")
        (folder / "model_config.json").write_text(json.dumps(config(task, 64)))
        files[task] = folder / "model.keras"
    ct = chest(seed=3)
    src = tmp / "chest.nii.gz"
    nib.save(from_canonical_array(ct, SPACING).to_nifti(ct, np.int16), str(src))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    settings = {k: inference_parameters()[k] for k in SETTINGS_KEYS}
    with tracking(uri) as mlflow:
        exp = mlflow.create_experiment("serving-test", artifact_location=(tmp / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=exp):
            info = log_combined_model(load_model_spec(files["lung"], "lung"),
                                      load_model_spec(files["infection"], "infection"), settings, NAME)
    out = tmp / "predict"
    assert cli.main(["predict", str(src), "-o", str(out), "--lung-model", str(files["lung"]),
                     "--infection-model", str(files["infection"]), "--no-progress"]) == 0
    return {"uri": uri, "version": info.registered_model_version, "ct": src, "files": files, "tmp": tmp,
            "expected": nib.load(str(out / "lung_and_infection_mask.nii.gz")),
            "report": json.loads((out / "report.json").read_text())}


def model_uri(store) -> str:
    return f"models:/{NAME}/{store['version']}"


def assert_same_as_predict(store, labels: nib.Nifti1Image, report: dict, with_lesions: bool = True) -> None:
    """The served labels and report are lungseg predict's (``with_lesions``: the report holds the lesion table,
    as report.json and the pyfunc's report_json do; a bare ``make_report`` does not)."""
    expected = store["expected"]
    np.testing.assert_array_equal(np.asarray(labels.dataobj), np.asarray(expected.dataobj))  # voxel for voxel
    np.testing.assert_allclose(labels.affine, expected.affine, atol=1e-6)
    assert labels.get_data_dtype() == np.uint8
    keys = ["voxels", "lung_volume_ml", "infection_volume_ml", "infection_percent", "severity", "severity_label"]
    if with_lesions:
        assert report["lesions"], "no lesion in the report: the comparison proves little"
        keys.append("lesions")
    for key in keys:
        assert report[key] == store["report"][key], key


def test_the_plumbing_is_checked_on_real_masks(store):
    labels = np.asarray(store["expected"].dataobj)
    assert {1, 2, 3} <= set(np.unique(labels))  # both lungs and some infection, or the comparison proves little
    assert store["report"]["severity"]["left"] >= 1 and store["report"]["implausible_input"] is None


def test_registered_version_has_a_signature_and_an_input_example(store):
    from mlflow.models import Model

    with tracking(store["uri"]) as mlflow:
        versions = mlflow.MlflowClient().search_model_versions(f"name = '{NAME}'")
        info = mlflow.models.get_model_info(model_uri(store))
        local = mlflow.artifacts.download_artifacts(model_uri(store))
    assert [str(v.version) for v in versions] == [str(store["version"])]
    assert [c.name for c in info.signature.inputs.inputs] == ["ct_nifti_base64"]
    assert [c.name for c in info.signature.outputs.inputs] == ["label_map_nifti_base64", "report_json"]
    example = Model.load(local).load_input_example(local)
    assert list(example.columns) == ["ct_nifti_base64"] and len(example.iloc[0, 0]) > 1000
    settings = json.loads((Path(local) / "artifacts" / "bundle" / "settings.json").read_text())
    assert settings["batch_size"] == 16 and settings["guard"]["enabled"] is True


_FRESH = """
import base64, gzip, json, sys
import mlflow, pandas as pd
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
text = base64.b64encode(open(sys.argv[3], "rb").read()).decode()
out = model.predict(pd.DataFrame({"ct_nifti_base64": [text]}))
open(sys.argv[4], "wb").write(gzip.decompress(base64.b64decode(out["label_map_nifti_base64"][0])))
open(sys.argv[5], "w").write(out["report_json"][0])
"""


def test_the_registered_model_predicts_in_a_fresh_process_as_lungseg_predict(store, tmp_path):
    labels, report = tmp_path / "labels.nii", tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-c", _FRESH, store["uri"], model_uri(store), str(store["ct"]),
                           str(labels), str(report)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_as_predict(store, nib.load(str(labels)), json.loads(report.read_text()))


def test_lungseg_predict_model_uri_and_load_segmenter(store, tmp_path, monkeypatch):
    from lungseg.inference.readers import read_input
    from lungseg.inference.report import make_report
    from lungseg.serving.bundle import load_segmenter

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    with tracking(store["uri"]):
        out = tmp_path / "out"
        assert cli.main(["predict", str(store["ct"]), "-o", str(out), "--model", model_uri(store), "--no-progress"]) == 0
        report = json.loads((out / "report.json").read_text())
        assert_same_as_predict(store, nib.load(str(out / "lung_and_infection_mask.nii.gz")), report)
        assert report["models"]["lung"].startswith(model_uri(store))

        segmenter = load_segmenter(model_uri(store))  # the Python entry point
        volume, kind = read_input(store["ct"], load_limits())
        seg = segmenter.segment(volume, kind, progress=False)
        labels = volume.to_nifti(seg.combined(), np.uint8)
        assert_same_as_predict(store, labels, make_report(seg, volume.spacing), with_lesions=False)

        missing = tmp_path / "missing"
        with pytest.raises(Exception, match="lungseg-combined/99"):
            load_segmenter(f"models:/{NAME}/99")
        assert cli.main(["predict", str(store["ct"]), "-o", str(missing), "--model", f"models:/{NAME}/99"]) == 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, payload: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_mlflow_models_serve_answers_with_the_masks_of_lungseg_predict(store):
    from lungseg.serving.pyfunc import decode_label_map, encode_nifti

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store["uri"], "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", model_uri(store), "--env-manager", "local",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = store["tmp"] / "serve.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 180
            while True:
                with contextlib.suppress(OSError):
                    with urllib.request.urlopen(f"{url}/ping", timeout=2) as r:
                        if r.status == 200:
                            break
                assert proc.poll() is None, f"mlflow models serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"no answer on {url}/ping:\n{log.read_text()[-3000:]}"
                time.sleep(1)
            payload = {"dataframe_split": {"columns": ["ct_nifti_base64"], "data": [[encode_nifti(store["ct"])]]}}
            status, answer = post(f"{url}/invocations", payload)
            assert status == 200, answer
            row = answer["predictions"][0]
            assert_same_as_predict(store, decode_label_map(row["label_map_nifti_base64"]), json.loads(row["report_json"]))

            bad = {"dataframe_split": {"columns": ["ct_nifti_base64"], "data": [["not a nifti file"]]}}
            status, answer = post(f"{url}/invocations", bad)
            assert status == 400 and "row 0" in answer.get("message", ""), answer
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_a_folder_that_is_no_combined_model_is_named(tmp_path):
    from lungseg.errors import ModelNotFoundError
    from lungseg.serving.bundle import load_combined_models

    with pytest.raises(ModelNotFoundError, match=r"not a lungseg combined model .*settings.json"):
        load_combined_models(tmp_path)


def test_the_loader_chooses_the_precision_and_the_report_names_it(store):
    """``model_config={"precision": ...}`` at load time: the models compute in bf16 (weights float32),
    the masks stay close to float32's, the report says which; the default is the bundle's (float32)."""
    import pandas as pd

    from lungseg.errors import ConfigError
    from lungseg.serving.pyfunc import decode_label_map, encode_nifti

    frame = pd.DataFrame({"ct_nifti_base64": [encode_nifti(store["ct"])]})
    with tracking(store["uri"]) as mlflow:
        default = mlflow.pyfunc.load_model(model_uri(store))
        bf16 = mlflow.pyfunc.load_model(model_uri(store), model_config={"precision": "mixed_bfloat16"})
        with pytest.raises(ConfigError, match="precision must be one of float32, mixed_bfloat16, auto, got 'half'"):
            mlflow.pyfunc.load_model(model_uri(store), model_config={"precision": "half"})
    inner = bf16.unwrap_python_model()._models
    conv = [layer for layer in inner.lung.model.layers if layer.weights][0]
    assert conv.dtype_policy.compute_dtype == "bfloat16" and conv.weights[0].dtype == "float32"
    assert json.loads(default.predict(frame)["report_json"][0])["precision"] == "float32"
    row = bf16.predict(frame).iloc[0]
    assert json.loads(row["report_json"])["precision"] == "mixed_bfloat16"
    got = np.asarray(decode_label_map(row["label_map_nifti_base64"]).dataobj)
    want = np.asarray(store["expected"].dataobj)
    for label in (1, 2, 3):
        a, b = got == label, want == label
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.97, label
