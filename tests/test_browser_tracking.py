"""Real-browser checks (Playwright + Debian's chromium): the MLflow UI shows the runs and their
metrics, and kedro-viz shows the variant namespaces."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import CHROMIUM, make_kedro_project

# skipped without chromium, a failure under CI=true (conftest.pytest_runtest_setup)
pytestmark = pytest.mark.chromium
BIN = Path(sys.executable).parent
VARIANTS = ("lung_unet", "lung_deeplabv3plus", "infection_unet", "infection_deeplabv3plus")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status < 500:
                    return
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


@contextlib.contextmanager
def server(cmd: list[str], url: str, cwd: Path, log: Path):
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        try:
            wait_http(url)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextlib.contextmanager
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            yield b.new_page(viewport={"width": 1400, "height": 900})
        finally:
            b.close()


def test_mlflow_ui_shows_runs_and_metrics(tmp_path):
    import mlflow

    db = tmp_path / "mlflow.db"
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    exp = mlflow.set_experiment("lungseg")
    for variant, dice in (("lung_unet", 0.91), ("infection_unet", 0.62)):
        with mlflow.start_run(run_name=variant, tags={"task": variant.split("_")[0]}):
            mlflow.log_param(f"{variant}.training.learning_rate", 5e-4)
            for step, v in enumerate((0.5, 0.3)):
                mlflow.log_metric(f"{variant}.val_loss", v, step=step)
            mlflow.log_metric(f"{variant}.eval_slice_dice", dice)
    mlflow.set_tracking_uri(None)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(BIN / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{db}", "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    with server(cmd, url, tmp_path, tmp_path / "mlflow.log"), browser() as page:
        page.goto(f"{url}/#/experiments/{exp.experiment_id}/runs", wait_until="domcontentloaded")
        page.get_by_text("infection_unet").first.wait_for(timeout=60_000)
        page.get_by_text("lung_unet").first.wait_for(timeout=30_000)
        page.get_by_text("infection_unet").first.click()
        page.get_by_text("infection_unet.eval_slice_dice").first.wait_for(timeout=60_000)
        assert page.get_by_text("0.62").count() >= 1
        page.screenshot(path=str(tmp_path / "mlflow.png"))


def test_kedro_viz_shows_variant_namespaces(tmp_path):
    project = make_kedro_project(tmp_path, tmp_path / "raw")
    subprocess.run([str(BIN / "kedro"), "viz", "build"], cwd=project, check=True, timeout=300,
                   env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"},
                   capture_output=True)
    build = project / "build"
    assert (build / "index.html").exists()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(build)]
    api = json.loads((build / "api" / "main").read_text())
    assert set(api["modular_pipelines"]) >= {"ingestion", "preprocessing", "evaluation", *VARIANTS}
    with server(cmd, url, tmp_path, tmp_path / "http.log"), browser() as page:
        page.goto(url, wait_until="domcontentloaded")
        for name in ("ingestion", "preprocessing", *VARIANTS):  # the collapsible namespaces in the sidebar tree
            page.locator(f"text='{name}' >> visible=true").first.wait_for(timeout=60_000)
        page.screenshot(path=str(tmp_path / "viz.png"))
