"""The evaluation that lands in metrics.json, checked against hand-counted oracles.

A model that returns the ground truth must score Dice 1 and HD95 0; a model whose prediction is the
ground truth shifted by one slice must score the Dice, IoU, HD95 and NSD counted by hand below, on
the original grid and with the case's own spacing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lungseg.evaluation import evaluate as ev
from lungseg.pipelines.evaluation.nodes import eval_metrics, evaluate_model

SPACING = (5.0, 1.0, 1.0)  # z, y, x in mm: one slice is 5 mm, more than the 3 mm NSD tolerance of lesions
PARAMS = {"batch_size": 4, "baseline_lung": {}, "baseline_infection": {}, "flip_tta": False, "lung_fill_holes": False}


class ReplayModel:
    """A stand-in for a Keras model: ``predict_on_batch`` returns the given masks, batch by batch,
    in the order evaluation asks for them (as probabilities 0 / 1)."""

    def __init__(self, masks: np.ndarray):
        self.masks, self.cursor = masks.astype(np.float32), 0

    def predict_on_batch(self, batch):
        out = self.masks[self.cursor : self.cursor + len(batch)]
        self.cursor += len(batch)
        return out[..., None]


def _case() -> dict[str, np.ndarray]:
    """A 8 x 16 x 16 case: lungs everywhere in the middle, a 2 x 2 lesion on slices 2, 3 and 4.

    A 2-voxel-wide lesion has no interior voxel, so all 12 of its voxels are surface voxels.
    """
    lung = np.zeros((8, 16, 16), np.uint8)
    lung[1:7, 3:13, 3:13] = 1
    infection = np.zeros_like(lung)
    infection[2:5, 7:9, 7:9] = 1
    image = np.full(lung.shape, 40, np.uint8)
    return {"image": image, "lung": lung, "infection": infection, "spacing": np.array(SPACING)}


def _inputs():
    rec = _case()
    n = 4  # four held-out model-input slices of case "p1"; "p0" is the training patient
    masks = np.zeros((n, 16, 16), np.uint8)
    masks[1:3, 4:10, 4:10] = 1
    model_input = {
        "images": np.full((n + 2, 16, 16), 40, np.uint8),
        "masks": np.concatenate([np.ones((2, 16, 16), np.uint8), masks]),
        "case_ids": np.array(["p0", "p0"] + ["p1"] * n),
        "slice_index": np.array([0, 1, 1, 2, 3, 4], np.int32),
    }
    split = pd.DataFrame({"case_id": ["p0", "p1"], "subset": ["train", "val"], "fold": 0, "method": "grouped",
                          "val_fraction": 0.5, "seed": 0})
    config = {"task": "infection", "architecture": "unet", "image_size": 16, "crop_mode": "lung_mask",
              "threshold": 0.5, "dataset": "oracle"}
    return rec, masks, model_input, split, config


def _evaluate(monkeypatch, case_prediction):
    rec, masks, model_input, split, config = _inputs()
    monkeypatch.setattr(ev, "predict_case", lambda model, cfg, image, lung, batch: case_prediction(rec))
    summary, per_slice, per_case, overlay = evaluate_model(
        ReplayModel(masks), config, model_input, split, {"p1": lambda: rec}, PARAMS)
    return summary, per_slice, per_case, overlay


def test_a_model_that_returns_the_ground_truth_scores_perfectly(monkeypatch):
    summary, per_slice, per_case, overlay = _evaluate(monkeypatch, lambda rec: rec["infection"].copy())
    assert summary["n_val_cases"] == 1 and summary["n_val_slices"] == 4
    assert summary["slice_dice"] == 1.0 and summary["slice_iou"] == 1.0
    assert list(per_case["case_id"]) == ["p1"]
    assert summary["case_dice"] == 1.0 and summary["case_iou"] == 1.0
    assert summary["case_hd95"] == 0.0 and summary["case_nsd"] == 1.0
    assert per_case["gt_volume_ml"].iloc[0] == pytest.approx(12 * 5.0 / 1000)  # 12 voxels of 5 mm^3
    logged = eval_metrics(summary)
    assert logged["eval_case_dice"] == [{"value": 1.0, "step": 0}]
    assert "eval_variant" not in logged and "eval_empty_slice_rule" not in logged
    assert overlay["images"].shape == (3, 16, 16)


def test_a_prediction_shifted_by_one_slice_scores_the_hand_counted_figures(monkeypatch):
    def shifted(rec):
        return np.roll(rec["infection"], 1, axis=0)  # the lesion on slices 3, 4, 5 instead of 2, 3, 4

    summary, _, per_case, _ = _evaluate(monkeypatch, shifted)
    row = per_case.iloc[0]
    # overlap: slices 3 and 4, 2 x 2 voxels each = 8 voxels; each mask holds 12
    assert row["dice"] == pytest.approx(2 * 8 / (12 + 12))
    assert row["iou"] == pytest.approx(8 / 16)
    assert row["precision"] == pytest.approx(8 / 12) and row["recall"] == pytest.approx(8 / 12)
    # every voxel is a surface voxel; 8 of 12 lie on the other surface (0 mm), 4 are one slice away (5 mm):
    # the 95th percentile of [0 x 8, 5 x 4] is 5 mm each way, and 16 of 24 points are within 3 mm
    assert row["hd95"] == pytest.approx(5.0)
    assert row["nsd"] == pytest.approx(16 / 24)
    assert summary["case_dice"] == pytest.approx(row["dice"]) and summary["case_hd95"] == pytest.approx(5.0)
    assert summary["case_nsd"] == pytest.approx(16 / 24)
    assert summary["nsd_tolerance_mm"] == 3.0
