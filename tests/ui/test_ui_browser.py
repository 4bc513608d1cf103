"""The web UI in a real browser: Streamlit server + headless Chromium driven by Playwright.

Skipped when Debian's Chromium (/usr/bin/chromium; ``apt-get install -y chromium``) is absent; a failure
instead under ``CI=true``.
Set ``LUNGSEG_UI_SCREENSHOT=src/lungseg/app/assets/ui-screenshot.png`` to also write the README's screenshot
(optimised, 1200 px wide).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import CHROMIUM  # /usr/bin/chromium

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# skipped without chromium, a failure under CI=true (conftest.pytest_runtest_setup)
pytestmark = pytest.mark.chromium

# the helpers of the AppTest module (pytest puts this folder on sys.path)
from test_ui_app import APP_SCRIPT, png_bytes, synthetic_case, tiny_models_dir  # noqa: E402

SERVER_START_TIMEOUT = 120.0
STEP_TIMEOUT_MS = 180_000


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the Streamlit server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"the Streamlit server did not answer within {SERVER_START_TIMEOUT:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    # the README screenshot shows a trained infection model; the plain test does not need one
    return tiny_models_dir(tmp_path_factory, trained_infection=bool(os.environ.get("LUNGSEG_UI_SCREENSHOT")))


@pytest.fixture
def server(models_dir, tmp_path):
    """The app served as ``lungseg ui`` serves it, on a free local port; stopped at teardown."""
    port = _free_port()
    log = tmp_path / "streamlit.log"
    # served from a folder where data/06_models holds the tiny models, as in a project checkout
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "06_models").symlink_to(models_dir, target_is_directory=True)
    env = {
        **os.environ,
        "LUNGSEG_MODELS_DIR": "data/06_models",
        "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    env.pop("LUNGSEG_MAX_UPLOAD_MB", None)
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(APP_SCRIPT),
        "--server.address", "127.0.0.1", "--server.port", str(port), "--server.headless", "true",
    ]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def _expected_dice(models_dir: Path, image: bytes, labels) -> float:
    """The lung Dice the page must show, computed here with the same models and functions."""
    from lungseg.app import logic
    from lungseg.evaluation import metrics

    loaded = logic.read_upload("slice.png", image)
    choices = logic.model_choices(models_dir)
    lung = logic.load_model(choices["lung"][0].path, "lung", models_dir)
    infection = logic.load_model(choices["infection"][0].path, "infection", models_dir)
    seg = logic.segment(loaded, lung, infection, "Both")
    return metrics.dice(seg.lung_labels > 0, labels[None] > 0)


def _save_docs_screenshot(png: Path, target: Path) -> None:
    """Resize to 1200 px wide and quantise to a small PNG for the README."""
    from PIL import Image

    with Image.open(png) as im:
        im = im.convert("RGB")
        if im.width > 1200:
            im = im.resize((1200, round(im.height * 1200 / im.width)), Image.LANCZOS)
        target.parent.mkdir(parents=True, exist_ok=True)
        im.quantize(colors=96, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
    assert target.stat().st_size < 300_000, f"{target} is {target.stat().st_size} bytes"


def test_upload_slice_and_mask_in_a_browser(server, models_dir, tmp_path):
    from playwright.sync_api import sync_playwright

    img, labels = synthetic_case(size=64, seed=11)
    ct_path, gt_path = tmp_path / "slice.png", tmp_path / "slice_gt.png"
    ct_path.write_bytes(png_bytes(img))
    gt_path.write_bytes(png_bytes(labels * 85))  # the "labels x 85" PNG the CLI writes
    shot = tmp_path / "ui.png"

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1560})
            page.set_default_timeout(STEP_TIMEOUT_MS)
            page.goto(server)
            page.get_by_text("Upload a CT image to segment it.").wait_for()
            page.locator("input[type=file]").first.set_input_files(str(ct_path))
            page.get_by_text("Overlay", exact=True).wait_for()
            images = page.locator("[data-testid=stImage] img")
            images.nth(2).wait_for()  # Streamlit renders progressively: wait, then count
            assert images.count() == 3
            page.get_by_text("Severity grade").wait_for()
            download = page.locator("[data-testid=stDownloadButton]")
            download.first.wait_for()
            assert download.count() == 1

            page.locator("input[type=file]").nth(1).set_input_files(str(gt_path))
            dice = page.locator("[data-testid=stMetric]", has_text="Dice (lung)")
            dice.wait_for()
            shown = re.search(r"\d\.\d{4}", dice.inner_text())
            assert shown is not None, dice.inner_text()
            assert page.locator("[data-testid=stAlertContentError]").count() == 0
            assert page.locator("[data-testid=stException]").count() == 0
            page.locator("[data-testid=stStatusWidget]").wait_for(state="hidden")  # the run is over
            page.wait_for_timeout(500)  # let the images finish painting
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()

    assert shot.stat().st_size > 10_000
    assert float(shown.group()) == pytest.approx(_expected_dice(models_dir, png_bytes(img), labels), abs=1e-4)
    target = os.environ.get("LUNGSEG_UI_SCREENSHOT")
    if target:
        _save_docs_screenshot(shot, Path(target))
