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
