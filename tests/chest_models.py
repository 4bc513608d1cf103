"""A chest CT drawn here (not by the synthetic generator) and rule models saved in the training layout with
a provenance (training dataset, environment, recorded score): shared by the #29 tests of the CLI and of the web UI.

Importable as ``chest_models`` (``tests/`` is on ``sys.path`` through its ``conftest.py``).
"""

from __future__ import annotations

import json
import os
import time

import nibabel as nib
import numpy as np
from rule_models import WINDOW, band_model, unit

from lungseg.layout import SYNTHETIC_PHANTOM_DESCRIP
from lungseg.volume import from_canonical_array

SPACING = (2.5, 0.8, 0.8)  # (sz, sy, sx) mm
LUNG_HU, LESION_HU, BODY_HU, AIR_HU = -850, -300, 40, -1000
VERSION = "2025-06-01T12.00.00.000Z"
SCORES = {"lung": 0.955, "infection": 0.72}


def chest(shape=(12, 64, 64), seed=0, lesions=((1, 0.0),)):
    """A canonical (z, y, x) HU chest drawn here (not by the synthetic generator): body, two lungs
    tapering at both ends (1 left at the larger column index, 2 right), round lesions ``(lung, dy)``."""
    rng = np.random.default_rng(seed)
    z, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    body = ((yy - h / 2) / (0.40 * h)) ** 2 + ((xx - w / 2) / (0.45 * w)) ** 2 < 1
    ct = np.full(shape, AIR_HU, np.float32)
    lung = np.zeros(shape, np.uint8)
    centres = {1: (h / 2, w / 2 + 0.20 * w), 2: (h / 2, w / 2 - 0.20 * w)}
    for k in range(z):
        ct[k][body] = BODY_HU
        scale = np.sqrt(max(0.0, 1 - (((k + 0.5) / z - 0.5) / 0.45) ** 2))
        if scale > 0.2:
            for label, (y0, x0) in centres.items():
                m = ((yy - y0) / (0.27 * h * scale)) ** 2 + ((xx - x0) / (0.15 * w * scale)) ** 2 < 1
                ct[k][m] = LUNG_HU
                lung[k][m] = label
            for side, dy in lesions:
                y0, x0 = centres[side]
                blob = (((yy - y0 - dy) / (0.06 * w)) ** 2 + ((xx - x0) / (0.06 * w)) ** 2 < 1) & (lung[k] == side)
                ct[k][blob] = LESION_HU
    ct += rng.normal(0, 15, shape).astype(np.float32)
    return np.clip(np.round(ct), -1024, 3000).astype(np.int16), lung


def save(path, ct_zyx, spacing=SPACING, phantom_marker=False):
    img = from_canonical_array(ct_zyx, spacing).to_nifti(ct_zyx, ct_zyx.dtype)
    if phantom_marker:  # as the synthetic generator marks its files (lungseg.synthetic.nifti.make_image)
        img.header["descrip"] = SYNTHETIC_PHANTOM_DESCRIP.encode()
    nib.save(img, str(path))
    return path


def config(task: str, **extra) -> dict:
    return {"task": task, "architecture": "unet", "image_size": 64, "window": list(WINDOW),
            "crop_mode": "body" if task == "lung" else "lung_mask", "clahe_clip_limit": 0.0, "clahe_tile_grid": 4,
            "crop_margin": 2, "threshold": 0.5, **extra}


def write_models(root, dataset: str, environment: str | None = "demo", scores=SCORES):
    """Rule models in ``root/06_models`` (versioned layout) and their scores in ``root/08_reporting``."""
    models = root / "06_models"
    bands = {"lung": (unit(LUNG_HU) - 0.05, unit(LUNG_HU) + 0.06),
             "infection": (unit(LESION_HU) - 0.08, unit(LESION_HU) + 0.08)}
    for task, (lo, hi) in bands.items():
        path = models / f"{task}_unet" / "model.keras" / VERSION / "model.keras"
        path.parent.mkdir(parents=True)
        band_model(64, lo, hi).save(path)
        cfg = models / f"{task}_unet" / "model_config.json" / VERSION / "model_config.json"
        cfg.parent.mkdir(parents=True)
        extra = {"dataset": dataset, "trained_at": "2025-06-01T12:00:00+00:00"}
        if environment:
            extra["environment"] = environment
        cfg.write_text(json.dumps(config(task, **extra)))
        if scores:
            report = root / "08_reporting" / f"{task}_unet" / "metrics.json"
            report.parent.mkdir(parents=True)
            report.write_text(json.dumps({"case_dice": scores[task]}))
            later = time.time() + 5
            os.utime(report, (later, later))  # evaluated after the model was saved
    return models
