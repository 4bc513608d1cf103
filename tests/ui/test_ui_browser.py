"""The web UI in a real browser: Streamlit server + headless Chromium driven by Playwright.

Skipped when Debian's Chromium (/usr/bin/chromium; ``apt-get install -y chromium``) is absent; a failure
instead under ``CI=true``. The NiiVue viewer renders with WebGL in software (SwiftShader), offline.

The README's screenshot (optimised, 1000 px wide) is written by the volume test when
``LUNGSEG_UI_SCREENSHOT=src/lungseg/app/assets/ui-screenshot.png``; then the case is a larger synthetic
phantom (256 x 256 x 74) and ``LUNGSEG_UI_SCREENSHOT_MODELS`` may name the models folder to use
(default: tiny models trained here).
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
    if os.environ.get("LUNGSEG_UI_SCREENSHOT_MODELS"):
        return Path(os.environ["LUNGSEG_UI_SCREENSHOT_MODELS"]).resolve()
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
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP_SCRIPT),
        "--server.address",
        "127.0.0.1",
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--client.toolbarMode",  # as lungseg ui runs it: no "Deploy" button
        "minimal",
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
    lung = logic.load_ui_model(choices["lung"][0].path, "lung", models_dir)
    infection = logic.load_ui_model(choices["infection"][0].path, "infection", models_dir)
    seg = logic.segment_upload(loaded, lung, infection, "Both")
    return metrics.dice(seg.lung_labels > 0, labels[None] > 0)


def _save_docs_screenshot(png: Path, target: Path) -> None:
    """Resize to 1000 px wide and quantise to a small PNG (under 300 KB) for the README."""
    import numpy as np
    from PIL import Image

    with Image.open(png) as im:
        im = im.convert("RGB")
        main = np.asarray(im)[:, im.width // 4 :]  # right of the sidebar: cut the blank page end
        rows = np.flatnonzero((main < 245).any(axis=(1, 2)))
        if rows.size:
            im = im.crop((0, 0, im.width, min(im.height, int(rows[-1]) + 40)))
        if im.width > 1000:
            im = im.resize((1000, round(im.height * 1000 / im.width)), Image.LANCZOS)
        target.parent.mkdir(parents=True, exist_ok=True)
        im.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
    assert target.stat().st_size < 300_000, f"{target} is {target.stat().st_size} bytes"


def test_upload_slice_and_mask_in_a_browser(server, models_dir, tmp_path):
    from playwright.sync_api import sync_playwright

    img, labels = synthetic_case(size=64, seed=11)
    ct_path, gt_path = tmp_path / "slice.png", tmp_path / "slice_gt.png"
    ct_path.write_bytes(png_bytes(img))
    gt_path.write_bytes(png_bytes(labels * 85))  # the "labels x 85" PNG the CLI writes
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
            page.get_by_text("Lung area involved", exact=True).wait_for()  # a 2D slice: areas, not ml
            assert page.get_by_text("Severity grade").count() == 0
            download = page.locator("[data-testid=stDownloadButton]")
            download.first.wait_for()
            assert download.count() == 2  # the mask and the report

            page.locator("input[type=file]").nth(1).set_input_files(str(gt_path))
            dice = page.locator("[data-testid=stMetric]", has_text="Dice (lung)")
            dice.wait_for()
            shown = re.search(r"\d\.\d{4}", dice.inner_text())
            assert shown is not None, dice.inner_text()
            assert page.locator("[data-testid=stAlertContentError]").count() == 0
            assert page.locator("[data-testid=stException]").count() == 0
        finally:
            browser.close()

    assert float(shown.group()) == pytest.approx(_expected_dice(models_dir, png_bytes(img), labels), abs=1e-4)


# ------------------------------------------------------------------------------- the NiiVue viewer


def _phantom(tmp_path: Path, large: bool) -> tuple[Path, Path]:
    """A synthetic chest CT phantom (HU) and its label map, as NIfTI files."""
    import gzip

    from lungseg.synthetic import case_images, generate_case

    case = generate_case(0, "demo" if large else "tiny", seed=0)
    images = case_images(case)
    ct, gt = tmp_path / "phantom_ct.nii.gz", tmp_path / "phantom_labels.nii.gz"
    ct.write_bytes(gzip.compress(images["ct_scans"].to_bytes()))
    gt.write_bytes(gzip.compress(images["lung_and_infection_mask"].to_bytes()))
    return ct, gt


def _canvas_rgb(canvas):
    import cv2
    import numpy as np

    png = np.frombuffer(canvas.screenshot(), np.uint8)
    return cv2.imdecode(png, cv2.IMREAD_COLOR)[..., ::-1].astype(np.int16)


def _crosshair_centres(rgb, min_run: int = 40) -> int:
    """How many crosshair centres the canvas holds: NiiVue draws its crosshair in red, one
    horizontal and one vertical line in each 2D view (axial, coronal, sagittal) and none in the 3D
    rendering. A centre is where a red run at least ``min_run`` long across meets one along."""
    import cv2
    import numpy as np

    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    red = (r > 200) & (g < 90) & (b < 90) & (np.abs(g - b) < 20)  # anti-aliased lines are (252, 44, 44)

    def long_runs(mask):
        out = np.zeros_like(mask)
        for i, line in enumerate(mask):
            idx = np.flatnonzero(line)
            if idx.size < min_run:
                continue
            breaks = np.flatnonzero(np.diff(idx) > 1)
            for start, end in zip(np.r_[idx[0], idx[breaks + 1]], np.r_[idx[breaks], idx[-1]]):
                if end - start + 1 >= min_run:
                    out[i, start : end + 1] = True
        return out

    centres = long_runs(red) & long_runs(red.T).T
    n, _ = cv2.connectedComponents(centres.astype(np.uint8), connectivity=8)
    return n - 1


#: Counts what NiiVue decodes in its iframe: niivue-streamlit 0.3.0 turns each image it loads (the CT, each
#: overlay) from base64 with the frame's ``atob``; a fingerprint of each long string goes to the page's
#: ``window.__niivueDecodes``, kept in the top window so that a reloaded iframe cannot reset it.
COUNT_NIIVUE_LOADS = """
(() => {
  if (window === window.top) return;
  const decode = window.atob.bind(window);
  window.atob = (s) => {
    if (s.length > 1000) {
      const top = window.top, mid = Math.floor(s.length / 2);
      (top.__niivueDecodes = top.__niivueDecodes || []).push(`${s.length}:${s.slice(mid, mid + 32)}`);
    }
    return decode(s);
  };
})();
"""


def _decodes(page) -> list[str]:
    return page.evaluate("window.__niivueDecodes || []")


def _wait_idle(page) -> None:
    page.locator("[data-testid=stStatusWidget]").wait_for(state="hidden")  # the run is over
    page.wait_for_timeout(4000)  # NiiVue (re)loads the images and draws


def test_volume_in_the_niivue_viewer(server, models_dir, tmp_path):
    """The multiplanar viewer draws the CT (three 2D views), follows the opacity slider, and a ground
    truth brings the error map's legend and the per-slice Dice; NiiVue gets the CT once: neither the
    opacity change nor the ground-truth upload loads it again (counted in the browser). The page
    shows the models' provenance and the lesion table, and no Deploy button."""
    import numpy as np
    from playwright.sync_api import expect, sync_playwright

    target = os.environ.get("LUNGSEG_UI_SCREENSHOT")
    ct_path, gt_path = _phantom(tmp_path, large=bool(target))
    shot = tmp_path / "ui.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            # the README's screenshot shows the whole page, down to the per-slice Dice
            page = browser.new_page(viewport={"width": 1280, "height": 3400 if target else 1500})
            page.set_default_timeout(STEP_TIMEOUT_MS)
            page.add_init_script(COUNT_NIIVUE_LOADS)
            page.goto(server)
            page.get_by_text("Upload a CT image to segment it.").wait_for()
            page.locator("input[type=file]").first.set_input_files(str(ct_path))
            page.get_by_text("View in use: Multiplanar viewer (NiiVue, WebGL).").wait_for()
            canvas = page.frame_locator("iframe[title='niivue_component.niivue_viewer']").locator("canvas")
            canvas.wait_for()
            _wait_idle(page)
            before = _canvas_rgb(canvas)
            # not blank: the CT is drawn (many grey levels over a large part of the canvas)
            assert before.std() > 20 and np.mean(before.sum(axis=2) > 60) > 0.15, before.std()
            assert len(np.unique(before[..., 0])) > 50
            assert _crosshair_centres(before) == 3  # axial, coronal and sagittal views
            assert page.get_by_text("Lung volume").count() == 1
            assert page.locator("[data-testid=stAppDeployButton]").count() == 0  # toolbarMode minimal
            page.get_by_text("trained on", exact=False).first.wait_for()  # the models' provenance
            page.get_by_text(re.compile(r"Lesions \(\d+: 3D connected regions")).wait_for()  # the lesion table
            loaded = _decodes(page)
            ct = loaded[0]  # the base image loads first, then the overlays
            assert loaded.count(ct) == 1 and len(loaded) >= 2, loaded  # the CT and the lung / infection overlays

            slider = page.locator("[data-testid=stSlider]", has_text="Lungs opacity").get_by_role("slider")
            slider.focus()
            slider.press("End")  # opacity 0.2 -> 1.0
            expect(slider).to_have_attribute("aria-valuetext", "1.00")
            _wait_idle(page)
            after = _canvas_rgb(canvas)
            changed = np.mean(np.abs(after - before).sum(axis=2) > 30)
            assert changed > 0.01, changed  # the lungs are drawn opaque now

            page.locator("input[type=file]").nth(1).set_input_files(str(gt_path))
            page.get_by_text("Per-slice Dice").wait_for()
            for words in ("true positive", "false positive", "false negative"):
                page.get_by_text(words).first.wait_for()
            page.locator("[data-testid=stVegaLiteChart]").first.wait_for()
            assert page.locator("[data-testid=stMetric]", has_text="Dice (infection)").count() == 1
            _wait_idle(page)
            # the opacity change and the ground truth reloaded overlays only: the CT went to NiiVue once
            since = _decodes(page)[len(loaded) :]
            assert since and ct not in since, (ct, since)
            with_errors = _canvas_rgb(canvas)
            assert np.mean(np.abs(with_errors - after).sum(axis=2) > 30) > 0.005  # the error map is drawn
            # a click moves the crosshair; the page reads its position and the CT's HU there from NiiVue
            box = canvas.bounding_box()
            canvas.click(position={"x": box["width"] * 0.22, "y": box["height"] * 0.3})
            readout = page.get_by_text(re.compile(r"Crosshair: x -?\d+\.\d, .* CT value -?\d+ HU"))
            readout.wait_for()
            hu = int(re.search(r"CT value (-?\d+) HU", readout.inner_text()).group(1))
            assert -1024 <= hu <= 3071
            assert ct not in _decodes(page)[len(loaded) :]  # nor did the crosshair's rerun
            assert page.locator("[data-testid=stAlertContentError]").count() == 0
            assert page.locator("[data-testid=stException]").count() == 0
            page.screenshot(path=str(shot), full_page=True)

            # the slice images, and a lesion chosen in the lesion table moves them to it
            page.get_by_text("Slice images (PNG, no WebGL needed)", exact=True).click()
            page.get_by_text("View in use: Slice images (PNG, no WebGL needed).").wait_for()
            table = page.locator("[data-testid=stDataFrame]").first  # the lesion table, above the report
            table.wait_for()
            box = table.bounding_box()
            page.mouse.click(box["x"] + 16, box["y"] + 35 + 17)  # the first row's selection box, under the header
            page.get_by_text(re.compile(r"Position: lesion 1 of \d+")).wait_for()
            page.get_by_text(re.compile(r"Lesion 1: x -?\d+\.\d, y")).wait_for()
            assert page.locator("[data-testid=stException]").count() == 0
        finally:
            browser.close()
    if target:
        _save_docs_screenshot(shot, Path(target))
