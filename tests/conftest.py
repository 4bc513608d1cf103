"""Shared fixtures: tiny hand-made datasets in the real dataset's layout."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")  # Debian's chromium, which `make test` installs as root


def running_in_ci() -> bool:
    """``CI=true`` (or 1/yes), as CI services set it."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "chromium: drives Debian's chromium; skipped without it, but a failure under CI=true")


#: The test files that take longest (the --durations of `make test`, 2026-12-07), scheduled first: under
#: `--dist loadfile` each xdist worker takes whole files in collection order, and with the longest last
#: (tests/ui/ sorts last) one worker ran them alone for minutes while the other had finished.
LONGEST_FIRST = (
    "tests/ui/test_ui_browser.py", "tests/test_pipelines.py", "tests/test_browser_tracking.py",
    "tests/pipelines/test_pipe_cv.py", "tests/test_fetch.py", "tests/test_notebook.py",
    "tests/tracking/test_tracking_runs.py", "tests/models/test_models_distribute.py", "tests/test_airflow.py",
    "tests/tracking/test_tracking_server.py", "tests/hardening/test_params_check.py",
)


def pytest_collection_modifyitems(config, items):
    """The files of :data:`LONGEST_FIRST` first (longest-processing-time first, so that the workers end
    together); every other file, and the tests inside each file, keep their order."""
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """A ``chromium`` test without /usr/bin/chromium: skipped with the reason on a developer's machine; a
    failure under ``CI=true``, where `make test` installs chromium, so that a failed install is not silent.
    Runs before any fixture of the test is set up."""
    if item.get_closest_marker("chromium") is None or CHROMIUM.exists():
        return
    reason = f"Debian's chromium is not installed at {CHROMIUM} (`make test` installs it when run as root)"
    if running_in_ci():
        pytest.fail(f"{reason}; CI=true, so the browser tests must run", pytrace=False)
    pytest.skip(reason)


def phantom(shape=(8, 48, 48), kind="hu", seed=0):
    """A crude chest phantom in canonical (z, y, x): body, two lungs, an infection blob.

    Returns (ct, lung labels 1 left / 2 right, infection 0/1).
    """
    rng = np.random.default_rng(seed)
    z, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    body = ((yy - h / 2) / (0.42 * h)) ** 2 + ((xx - w / 2) / (0.46 * w)) ** 2 < 1
    right = ((yy - h / 2) / (0.28 * h)) ** 2 + ((xx - 0.32 * w) / (0.12 * w)) ** 2 < 1  # column small = right
    left = ((yy - h / 2) / (0.28 * h)) ** 2 + ((xx - 0.68 * w) / (0.12 * w)) ** 2 < 1
    ct = np.full(shape, -1000.0, np.float32)
    lung = np.zeros(shape, np.uint8)
    inf = np.zeros(shape, np.uint8)
    for k in range(z):
        ct[k][body] = 40
        if 0 < k < z - 1:
            ct[k][left | right] = -850
            lung[k][left] = 1
            lung[k][right] = 2
    blob = ((yy - h / 2) / (0.08 * h)) ** 2 + ((xx - 0.70 * w) / (0.06 * w)) ** 2 < 1
    for k in range(2, max(3, z - 2)):
        inf[k][blob & left] = 1
        ct[k][blob & left] = -450
    ct += rng.normal(0, 10, shape).astype(np.float32)
    if kind == "hu":
        ct = ct.astype(np.int16)
    else:
        ct = np.clip((ct + 1250) / 1500 * 255, 0, 255).round().astype(np.uint8)
    return ct, lung, inf


def lps_affine(spacing=(2.0, 0.8, 0.8)):
    sz, sy, sx = spacing
    return np.diag([-sx, -sy, sz, 1.0])


def write_nifti(path: Path, arr_zyx: np.ndarray, affine=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(arr_zyx.transpose(2, 1, 0)), lps_affine() if affine is None else affine), str(path))
    return path


def write_case(root: Path, case: str, kind="hu", shape=(8, 48, 48), seed=0, kaggle=False) -> dict:
    ct, lung, inf = phantom(shape, kind, seed)
    combined = lung.copy()
    combined[inf > 0] = 3
    rel = {
        "ct_scan": f"ct_scans/{case}_org.nii.gz",
        "lung_mask": f"lung_mask/{case}.nii.gz",
        "infection_mask": f"infection_mask/{case}.nii.gz",
        "lung_and_infection_mask": f"lung_and_infection_mask/{case}.nii.gz",
    }
    for key, arr in zip(rel, (ct, lung, inf, combined)):
        write_nifti(root / rel[key], arr)
    if kaggle:
        rel = {k: f"../input/covid19-ct-scans/{v}" for k, v in rel.items()}
    return rel


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    """Three cases: two HU (one in Kaggle path form), one 0-255."""
    root = tmp_path / "raw"
    rows = [
        write_case(root, "case_a", "hu", seed=1, kaggle=True),
        write_case(root, "case_b", "uint8", seed=2),
        write_case(root, "case_c", "hu", shape=(6, 40, 40), seed=3),
    ]
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


# ----------------------------------------------------------------------------- a Kedro project in tmp
import shutil  # noqa: E402

import yaml  # noqa: E402

TINY_PREPROCESSING = {
    "window": [-1250, 250], "clahe_clip_limit": 2.0, "clahe_tile_grid": 4, "image_size": 32, "crop_margin": 2,
    "body_threshold": None, "lung_crop_source": "body", "min_lung_fraction": 0.005,
    "infection_negative_fraction": 0.2, "seed": 0, "source_clahe_clip_limit": None, "context": 1,
}


def make_kedro_project(tmp_path: Path, raw_root: Path, extra_params: dict | None = None) -> Path:
    """A copy of this project's pyproject + conf/base in ``tmp_path/project``, with a ``test`` env
    whose raw data is ``raw_root``; data, MLflow database and reports stay inside tmp_path."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(PROJECT_ROOT / "pyproject.toml", project / "pyproject.toml")
    (project / "src").mkdir()  # the package itself is installed (editable)
    shutil.copytree(PROJECT_ROOT / "conf" / "base", project / "conf" / "base")
    test_env = project / "conf" / "test"
    test_env.mkdir()
    (project / "conf" / "local").mkdir()
    (test_env / "globals.yml").write_text(
        yaml.safe_dump({"dataset_name": "tiny", "raw_root": str(raw_root), "synthetic_root": str(raw_root)}))
    # an absolute tracking URI: MLflow caches one store per URI string, so a relative
    # sqlite:///mlflow.db would keep pointing at the first project's database within one process
    mlflow_conf = yaml.safe_load((project / "conf" / "base" / "mlflow.yml").read_text())
    mlflow_conf["server"]["mlflow_tracking_uri"] = f"sqlite:///{project / 'mlflow.db'}"
    (test_env / "mlflow.yml").write_text(yaml.safe_dump(mlflow_conf))
    params = {"preprocessing": TINY_PREPROCESSING, **(extra_params or {})}
    (test_env / "parameters.yml").write_text(yaml.safe_dump(params))
    for layer in ("01_raw", "02_intermediate", "03_primary", "05_model_input", "06_models", "07_model_output",
                  "08_reporting"):
        (project / "data" / layer).mkdir(parents=True)
    return project


_SESSION_SCRIPT = """
import sys
from pathlib import Path
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
project, env, pipeline, runner = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
nodes = [n for n in sys.argv[5].split(",") if n] if len(sys.argv) > 5 else None
bootstrap_project(project)
kwargs = {}
if runner == "parallel":
    from kedro.runner import ParallelRunner
    kwargs["runner"] = ParallelRunner(max_workers=2)
elif runner.startswith("dask"):  # dask: a LocalCluster of 2 one-thread workers in this process; dask=ADDRESS
    from lungseg.runner import DaskRunner
    address = runner.partition("=")[2] or None
    kwargs["runner"] = DaskRunner(address=address, n_workers=2, processes=False, connect_timeout=3)
with KedroSession.create(project_path=project, env=env) as session:
    session.run(pipeline_name=pipeline, node_names=nodes, **kwargs)
"""


def run_kedro(project: Path, pipeline: str, runner: str = "sequential", env: str = "test",
              nodes: list[str] | None = None) -> None:
    """Run a pipeline of the project at ``project`` through a KedroSession, in a fresh process
    (as ``kedro run`` does: MLflow and Kedro keep per-process state); ``nodes``: only these
    (``kedro run --nodes``)."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _SESSION_SCRIPT, str(project), env, pipeline, runner, ",".join(nodes or [])],
        cwd=project, capture_output=True, text=True, timeout=900,
        env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"},
    )
    if proc.returncode != 0:
        raise AssertionError(f"kedro session for {pipeline!r} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
