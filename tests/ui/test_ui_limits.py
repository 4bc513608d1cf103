"""The web UI gets the CLI's resource limits: a zip bomb, a header bomb, huge DICOM dimensions and an
oversize upload are refused with an ``st.error`` within a second or so, and the app keeps working."""

from __future__ import annotations

import gzip
import io
import time
import zipfile

import nibabel as nib
import numpy as np
import pytest
from test_ui_app import _app, _assert_no_exception, _errors, _upload, png_bytes, synthetic_case

from lungseg.app.uploads import read_upload
from lungseg.errors import InputError

#: A refusal's budget in the page: the check itself takes milliseconds, but AppTest reruns the whole script,
#: which took 4.5 s on a 2-core machine under a load of 8; inflating the 1 GiB bomb would take far longer.
FAST = 10.0


@pytest.fixture(scope="module")
def zip_bomb() -> bytes:
    """About 1 MB that expands to 1 GiB of zeros, named like a DICOM slice."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("IM00001.dcm", "w", force_zip64=True) as fh:
            chunk = bytes(16 << 20)
            for _ in range(64):
                fh.write(chunk)
    return buf.getvalue()


def header_bomb() -> bytes:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((1500, 1500, 1500))
    hdr.set_data_dtype(np.int16)
    hdr["vox_offset"] = 352
    return gzip.compress(hdr.binaryblock + b"\0" * 4)


def test_read_upload_applies_the_limits(zip_bomb):
    for name, data, phrase in (("scan.zip", zip_bomb, "compression ratio"), ("ct.nii.gz", header_bomb(), "max_voxels")):
        start = time.perf_counter()
        with pytest.raises(InputError, match=phrase):
            read_upload(name, data)
        assert time.perf_counter() - start < 1.0


def test_bombs_and_oversize_uploads_are_refused_and_the_app_keeps_working(monkeypatch, tmp_path, zip_bomb):
    at = _app(monkeypatch, tmp_path / "no_models", LUNGSEG_MAX_UPLOAD_MB="5")
    _assert_no_exception(at)
    bad = [
        ("scan.zip", zip_bomb, "compression ratio"),
        ("ct.nii.gz", header_bomb(), "1500x1500x1500"),
        ("big.png", b"\x89PNG\r\n\x1a\n" + bytes(6_000_000), "over the upload limit of 5 MB"),
    ]
    for name, data, phrase in bad:
        start = time.perf_counter()
        at = _upload(at, "ct_upload", name, data)
        seconds = time.perf_counter() - start
        _assert_no_exception(at)
        errors = [e for e in _errors(at) if "No trained" not in e]  # the missing models are said apart
        assert len(errors) == 1 and phrase in errors[0], (name, errors)
        assert not at.image and seconds < FAST, (name, seconds)
    img, _ = synthetic_case(seed=3)
    at = _upload(at, "ct_upload", "slice.png", png_bytes(img))
    _assert_no_exception(at)
    assert not [e for e in _errors(at) if "No trained" not in e]
    assert len(at.image) == 1  # the image is shown (no models here: no segmentation)


# ------------------------------------------------------------------------------------ in a browser
# the browser test's server and models (pytest puts this folder on sys.path); reused, not redefined
import test_ui_browser as _browser  # noqa: E402

server = _browser.server
models_dir = _browser.models_dir


@pytest.mark.chromium
def test_a_zip_bomb_upload_in_a_browser_is_refused_and_the_page_keeps_working(server, tmp_path, zip_bomb):
    from playwright.sync_api import sync_playwright

    bomb, good = tmp_path / "scan.zip", tmp_path / "slice.png"
    bomb.write_bytes(zip_bomb)
    good.write_bytes(png_bytes(synthetic_case(size=64, seed=12)[0]))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(_browser.CHROMIUM), headless=True, args=_browser.CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1200})
            page.set_default_timeout(_browser.STEP_TIMEOUT_MS)
            page.goto(server)
            page.get_by_text("Upload a CT image to segment it.").wait_for()
            start = time.perf_counter()
            page.locator("input[type=file]").first.set_input_files(str(bomb))
            error = page.locator("[data-testid=stAlertContentError]", has_text="compression ratio")
            error.wait_for(timeout=10_000)
            seconds = time.perf_counter() - start
            assert "max_zip_ratio" in error.inner_text()
            assert page.locator("[data-testid=stException]").count() == 0
            page.locator("input[type=file]").first.set_input_files(str(good))
            page.get_by_text("Overlay", exact=True).wait_for()
            assert page.locator("[data-testid=stAlertContentError]").count() == 0
        finally:
            browser.close()
    assert seconds < 10, seconds  # upload through the browser + the refusal (the check itself: milliseconds)
