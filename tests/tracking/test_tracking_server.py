"""conf/server (#27 item 4): a ``kedro run`` against a shared ``mlflow server``, read back through its REST API.

The test starts ``mlflow server`` on a free loopback port (SQLite store and an artifacts folder in tmp),
points conf/server/mlflow.yml at it, runs the demo-sized ``lung_unet`` pipeline with
``registry.register: true`` (the infection part of lungseg-combined is a saved band model), and reads the
run, its metrics, its logged model and the registered ``lungseg-combined`` back over HTTP. The server is
stopped at the end.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import PROJECT_ROOT, make_kedro_project, run_kedro
from test_browser_tracking import free_port, server
from test_pipelines import tiny_raw_dataset, tiny_variant_params

pytestmark = pytest.mark.timeout(600)


def _get(base: str, path: str, **query) -> dict:
    from urllib.parse import urlencode

    with urllib.request.urlopen(f"{base}{path}?{urlencode(query)}", timeout=10) as resp:
        return json.loads(resp.read())


def _post(base: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _save_infection_model(models: Path) -> None:
    """A band model in the training pipeline's versioned layout: the infection half of lungseg-combined."""
    from rule_models import WINDOW, band_model, unit

    version = "2025-06-01T12.00.00.000Z"
    path = models / "infection_unet" / "model.keras" / version / "model.keras"
    path.parent.mkdir(parents=True)
    band_model(32, unit(-450) - 0.08, unit(-450) + 0.08).save(path)
    cfg = models / "infection_unet" / "model_config.json" / version / "model_config.json"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(json.dumps({"task": "infection", "architecture": "unet", "image_size": 32, "crop_mode": "lung_mask",
                               "window": list(WINDOW), "clahe_clip_limit": 0.0, "clahe_tile_grid": 4,
                               "crop_margin": 2, "threshold": 0.5}))


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
           f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination", str(tmp_path / "artifacts"),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with server(cmd, f"{base}/health", tmp_path, tmp_path / "mlflow-server.log"):  # stopped on exit
        yield base


def test_kedro_run_against_an_mlflow_server(tmp_path, mlflow_server):
    raw = tiny_raw_dataset(tmp_path / "raw")
    project = make_kedro_project(tmp_path, raw, {**tiny_variant_params("lung_unet"),
                                                  "registry": {"register": True}})
    server_conf = yaml.safe_load((PROJECT_ROOT / "conf" / "server" / "mlflow.yml").read_text())
    assert server_conf["server"]["mlflow_tracking_uri"] == "http://127.0.0.1:5000"
    server_conf["server"]["mlflow_tracking_uri"] = mlflow_server  # the same file, on this test's free port
    (project / "conf" / "test" / "mlflow.yml").write_text(yaml.safe_dump(server_conf))
    _save_infection_model(project / "data" / "06_models")

    run_kedro(project, "lung_unet")
    assert not (project / "mlflow.db").exists()  # nothing went to a local store

    experiment = _get(mlflow_server, "/api/2.0/mlflow/experiments/get-by-name", experiment_name="lungseg")["experiment"]
    runs = _post(mlflow_server, "/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    assert len(runs) == 1
    run = runs[0]
    assert run["info"]["status"] == "FINISHED"
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["variant"] == "lung_unet"
    keys = {m["key"] for m in run["data"]["metrics"]}
    assert {"loss", "val_loss", "eval_case_dice"} <= keys
    history = _get(mlflow_server, "/api/2.0/mlflow/metrics/get-history", run_id=run["info"]["run_id"], metric_key="loss")
    assert len(history["metrics"]) == 2  # one point per epoch
    logged = _post(mlflow_server, "/api/2.0/mlflow/logged-models/search",
                   {"experiment_ids": [experiment["experiment_id"]]}).get("models", [])  # MLflow 3: LoggedModel entities
    assert any(m["info"].get("source_run_id") == run["info"]["run_id"] and m["info"]["name"] == "lung_unet_model"
               for m in logged), [m["info"].get("name") for m in logged]
    registered = _get(mlflow_server, "/api/2.0/mlflow/registered-models/get", name="lungseg-combined")
    versions = registered["registered_model"]["latest_versions"]
    assert versions and versions[0]["run_id"] == run["info"]["run_id"]
