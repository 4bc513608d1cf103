"""Preprocessing nodes.

Every image operation is a call into :mod:`lungseg.imaging` (the same functions inference and the
UI use); the nodes only stream cases through them and assemble the model inputs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lungseg.errors import ConfigError, TrainingDataError
from lungseg.imaging import (
    PreprocessConfig,
    crop_and_resize,
    enhance,
    informative_slices,
    prepare_masks,
    select_infection_slices,
)

logger = logging.getLogger(__name__)

Lazy = Callable[[], dict[str, np.ndarray]]
TASKS = ("lung", "infection")
LUNG_CROP_SOURCES = ("body", "lung_mask")


def preprocess_config(params: dict[str, Any], task: str) -> PreprocessConfig:
    """The preprocessing config of a task, built from the ``preprocessing`` parameters."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; expected one of {TASKS}")
    source = params.get("lung_crop_source", "body")
    if source not in LUNG_CROP_SOURCES:
        raise ConfigError(
            f"preprocessing.lung_crop_source is {source!r}; expected one of {LUNG_CROP_SOURCES}"
        )
    crop_mode = "lung_mask" if task == "infection" else source
    return PreprocessConfig.from_dict({**params, "crop_mode": crop_mode})


def enhance_cases(
    case_table: pd.DataFrame, canonical_cases: dict[str, Lazy], params: dict[str, Any]
) -> dict[str, Lazy]:
    """Window (HU cases) and CLAHE every case once; both tasks reuse the result.

    Returns lazy per-case records ``{image (Z,H,W) uint8, lung, infection, spacing}`` that the
    catalog writes one at a time.
    """
    config = PreprocessConfig.from_dict(params)
    kinds = dict(zip(case_table["case_id"], case_table["source_kind"]))

    def make(case: str) -> Lazy:
        def run() -> dict[str, np.ndarray]:
            rec = canonical_cases[case]()
            return {
                "image": enhance(rec["ct"], kinds[case], config),
                "lung": rec["lung"],
                "infection": rec["infection"],
                "spacing": rec["spacing"],
            }

        return run

    missing = [c for c in case_table["case_id"] if c not in canonical_cases]
    if missing:
        raise TrainingDataError(f"canonical cases missing for {missing}; run the ingestion pipeline")
    return {case: make(case) for case in case_table["case_id"]}


def _build_model_input(
    task: str, case_table: pd.DataFrame, enhanced_cases: dict[str, Lazy], params: dict[str, Any]
) -> dict[str, np.ndarray]:
    config = preprocess_config(params, task)
    rng = np.random.default_rng(int(params.get("seed", 42)))
    images, masks, case_ids, slice_idx, records = [], [], [], [], []
    kept = {}
    for case in tqdm(list(case_table["case_id"]), desc=f"{task} model input", unit="case"):
        rec = enhanced_cases[case]()
        lung, infection = rec["lung"], rec["infection"]
        keep = informative_slices(lung, float(params.get("min_lung_fraction", 0.005)))
        if task == "infection":
            keep = select_infection_slices(keep, infection, float(params.get("infection_negative_fraction", 0.1)), rng)
        idx = np.flatnonzero(keep)
        kept[case] = int(idx.size)
        if idx.size == 0:
            logger.warning("%s task: case %s has no informative slice (empty lung mask?); skipped", task, case)
            continue
        one_lung = (lung[idx] == 1).any(axis=(1, 2)) ^ (lung[idx] == 2).any(axis=(1, 2))
        if one_lung.any():
            logger.info("%s task: case %s has %d slice(s) with one lung only", task, case, int(one_lung.sum()))
        lung_sel = lung[idx]
        imgs, recs = crop_and_resize(rec["image"][idx], config, lung_mask=lung_sel)
        target = (lung_sel > 0) if task == "lung" else (infection[idx] > 0)
        masks.append(prepare_masks(target.astype(np.uint8), recs))
        images.append(imgs)
        records.append(np.stack([r.to_array() for r in recs]))
        case_ids.append(np.full(idx.size, case))
        slice_idx.append(idx.astype(np.int32))
        del rec
    if not images:
        raise TrainingDataError(
            f"{task} task: 0 slices left after filtering (min_lung_fraction="
            f"{params.get('min_lung_fraction', 0.005)}); check the lung masks"
        )
    out = {
        "images": np.concatenate(images),
        "masks": np.concatenate(masks),
        "case_ids": np.concatenate(case_ids).astype(str),
        "slice_index": np.concatenate(slice_idx),
        "records": np.concatenate(records),
        "config_json": np.array(json.dumps({"task": task, **config.to_dict()})),
    }
    pos = float(out["masks"].mean())
    logger.info(
        "%s task: %d slices kept from %d cases (%s); positive pixels %.2f%%",
        task, len(out["images"]), len(kept), ", ".join(f"{k}: {v}" for k, v in kept.items()), 100 * pos,
    )
    return out


def build_lung_input(case_table, enhanced_cases, params):
    """Model input of the lung task: body-cropped slices (or lung-mask-cropped, the paper's protocol)."""
    return _build_model_input("lung", case_table, enhanced_cases, params)


def build_infection_input(case_table, enhanced_cases, params):
    """Model input of the infection task: slices cropped to the two largest lung components."""
    return _build_model_input("infection", case_table, enhanced_cases, params)


SPLIT_METHODS = ("grouped", "kfold", "slice_level_leaky")


def split_cases(case_table: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """Assign every case (patient) to ``train`` or ``val``; never split one patient's slices.

    Methods:
        ``grouped``: a seeded shuffle of cases, ``val_fraction`` of them held out (70/30 default).
        ``kfold``: ``n_folds`` case-level folds; fold ``fold`` is held out (as in the
            COVID-19-CT-Seg benchmark's 5-fold cross-validation).
        ``slice_level_leaky``: reproduces the paper's leaky protocol: slices of one patient land
            on both sides. Every case is marked ``mixed``; the training node then splits slices.
    """
    method = params.get("method", "grouped")
    if method not in SPLIT_METHODS:
        raise ConfigError(f"split.method is {method!r}; expected one of {SPLIT_METHODS}")
    seed = int(params.get("seed", 42))
    val_fraction = float(params.get("val_fraction", 0.3))
    cases = np.array(sorted(case_table["case_id"]))
    n = len(cases)
    rng = np.random.default_rng(seed)
    order = cases[rng.permutation(n)]
    fold = np.zeros(n, dtype=int)
    if method == "slice_level_leaky":
        logger.warning("split.method=slice_level_leaky reproduces the paper's leaky slice-level split: "
                       "validation figures will be optimistic")
        subset = np.full(n, "mixed")
    else:
        if n < 2:
            raise TrainingDataError(f"a split by patient needs at least 2 cases, got {n}")
        if method == "grouped":
            n_val = min(n - 1, max(1, int(round(val_fraction * n))))
            subset = np.where(np.arange(n) < n_val, "val", "train")
        else:
            k = int(params.get("n_folds", 5))
            which = int(params.get("fold", 0))
            if not 2 <= k <= n or not 0 <= which < k:
                raise ConfigError(f"split.n_folds={k}, split.fold={which} do not suit {n} cases")
            fold = np.arange(n) % k
            subset = np.where(fold == which, "val", "train")
    table = pd.DataFrame({"case_id": order, "subset": subset, "fold": fold, "method": method,
                          "val_fraction": val_fraction, "seed": seed})
    table = table.sort_values("case_id").reset_index(drop=True)
    logger.info("Split (%s): train %s | val %s", method,
                list(table.case_id[table.subset == "train"]), list(table.case_id[table.subset == "val"]))
    return table
