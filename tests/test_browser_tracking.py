"""Real-browser checks (Playwright + Debian's chromium): the MLflow UI's Compare lines up the runs of
two variants (the same metric keys, the Dataset column filled), and kedro-viz shows the variant
namespaces."""

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


TINY_UNET = {"architecture": "unet", "base_filters": 4, "depth": 2, "bn_momentum": 0.9}
TINY_TRAINING = {"epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "loss": "bce_dice", "seed": 0,
                 "reduce_lr": None, "augment": None, "verbose": 0,
                 "run_eagerly": True}  # no graph traced: seconds per tiny fit


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    """What `make demo` leaves in MLflow, at a tiny size: a `kedro run` of infection_unet, then one of
    lung_unet, on a dataset named synthetic_demo (conf/demo's name)."""
    import pandas as pd
    import yaml
    from conftest import run_kedro, write_case

    tmp = tmp_path_factory.mktemp("demo_store")
    raw = tmp / "raw"
    rows = [write_case(raw, f"case_{i}", "hu" if i % 2 else "uint8", shape=(10, 48, 48), seed=i) for i in range(4)]
    pd.DataFrame(rows).to_csv(raw / "metadata.csv", index=False)
    params = {v: {"model": TINY_UNET, "training": {**TINY_TRAINING, "backup_dir": f"data/06_models/{v}/backup"}}
              for v in ("infection_unet", "lung_unet")}
    project = make_kedro_project(tmp, raw, params)
    globals_yml = project / "conf" / "test" / "globals.yml"
    globals_yml.write_text(yaml.safe_dump({**yaml.safe_load(globals_yml.read_text()), "dataset_name": "synthetic_demo"}))
    for variant in ("infection_unet", "lung_unet"):
        run_kedro(project, variant)
    return project


#: The cells of one metric's row in MLflow 3.17's Compare page: the metric names and the values are two
#: virtualised grids side by side; a row's cells share the name cell's ``top`` offset.
METRIC_ROW_JS = """(name) => {
  const link = [...document.querySelectorAll("a[title='Plot chart']")].find(a => a.textContent.trim() === name);
  if (!link) return null;
  const cell = link.closest("div[style*='position: absolute']");
  const grids = [...document.querySelectorAll("[role='grid']")];
  const values = grids[grids.indexOf(cell.closest("[role='grid']")) + 1];
  return [...values.querySelectorAll("div[style*='position: absolute']")]
    .filter(d => d.style.top === cell.style.top).map(d => d.innerText.trim());
}"""


def test_mlflow_compare_lines_up_two_variant_runs(demo_store, tmp_path):
    import mlflow

    db = demo_store / "mlflow.db"
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    try:
        runs = {r.info.run_name: r for r in mlflow.search_runs(experiment_names=["lungseg"], output_format="list")}
        experiment_id = runs["lung_unet"].info.experiment_id
    finally:
        mlflow.set_tracking_uri(None)
    assert set(runs) == {"infection_unet", "lung_unet"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(BIN / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{db}", "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    with server(cmd, url, tmp_path, tmp_path / "mlflow.log"), browser() as page:
        page.goto(f"{url}/#/experiments/{experiment_id}/runs", wait_until="domcontentloaded")
        for name in ("infection_unet", "lung_unet"):
            row = page.get_by_role("row").filter(has_text=name)
            row.first.wait_for(timeout=60_000)
            # the runs table's Dataset column: the dataset's name and digest, context Training
            row.get_by_text("synthetic_demo (").first.wait_for(timeout=30_000)
            row.get_by_role("checkbox").first.click()
        page.screenshot(path=str(tmp_path / "mlflow-runs.png"))
        page.get_by_role("button", name="Compare").first.click()
        page.wait_for_url("**/compare-runs**", timeout=30_000)
        # the metrics table: one row per key, one cell per run; a variant prefix would leave cells empty
        page.locator("a[title='Plot chart']", has_text="eval_case_dice").first.wait_for(timeout=60_000)
        values = page.evaluate(METRIC_ROW_JS, "eval_case_dice")
        assert values is not None and len(values) == 2 and all(values), values  # a value for both runs
        expected = sorted(r.data.metrics["eval_case_dice"] for r in runs.values())
        assert sorted(float(v) for v in values) == pytest.approx(expected, abs=6e-3), values
        page.get_by_text("Parallel Coordinates Plot").first.wait_for(timeout=30_000)
        page.screenshot(path=str(tmp_path / "mlflow-compare.png"))


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
