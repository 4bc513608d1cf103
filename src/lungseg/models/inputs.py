"""Model inputs and patient splits: the library side of the preprocessing pipeline.

* :func:`build_model_input`: the slices of one task, filtered, cropped, padded and resized with
  :mod:`lungseg.imaging` (the same functions inference and the UI use), with their masks, case ids,
  slice indices and the crop records that :func:`lungseg.imaging.restore_slices` inverts.
* :func:`split_cases`: every case (patient) to ``train`` or ``val``, never one patient on both sides.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lungseg.config import check_section
from lungseg.errors import ConfigError, TrainingDataError
from lungseg.imaging import (
    PreprocessConfig,
    crop_and_resize,
    informative_slices,
    prepare_masks,
    select_infection_slices,
)
from lungseg.layout import TASKS, check_task
from lungseg.parallel import case_map, on_cluster

logger = logging.getLogger(__name__)

Lazy = Callable[[], dict[str, np.ndarray]]
LUNG_CROP_SOURCES = ("body", "lung_mask")
#: The infection model's input: ``lung_mask`` (the lungs' box, the paper's protocol; at inference the predicted
#: lungs) or ``body`` (the whole body, so it sees the context a tight lung box cuts off); either way its
#: prediction is kept only inside the lungs (the ground truth's when evaluated alone, the lung model's combined).
INFECTION_CROP_SOURCES = ("lung_mask", "body")
#: Keys of the ``preprocessing`` parameters (conf/base/parameters_preprocessing.yml).
PREPROCESSING_KEYS = (
    "window", "clahe_clip_limit", "clahe_tile_grid", "image_size", "crop_margin", "body_threshold",
    "lung_crop_source", "min_lung_fraction", "infection_negative_fraction", "seed", "source_clahe_clip_limit",
    "context",
)
#: Keys that may be left out (their default in brackets): ``infection_crop_source`` [lung_mask].
PREPROCESSING_OPTIONAL_KEYS = ("infection_crop_source",)
#: Keys of the ``split`` parameters.
SPLIT_KEYS = ("method", "val_fraction", "n_folds", "fold", "seed")


def check_preprocessing_params(params: Any) -> dict[str, Any]:
    """The ``preprocessing`` parameters, refused by name when a key is missing or unknown."""
    params = check_section(params, "preprocessing", PREPROCESSING_KEYS, PREPROCESSING_OPTIONAL_KEYS)
    params.setdefault("infection_crop_source", "lung_mask")
    if params["infection_crop_source"] not in INFECTION_CROP_SOURCES:
        raise ConfigError(f"preprocessing.infection_crop_source is {params['infection_crop_source']!r}; "
                          f"expected one of {INFECTION_CROP_SOURCES}")
    return params


def per_task(params: dict[str, Any], key: str, task: str) -> Any:
    """``preprocessing.<key>`` of ``task``: one value for both tasks, or a mapping per task
    (``image_size: {lung: 192, infection: 128}``)."""
    value = params[key]
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(TASKS))
        if unknown or task not in value:
            raise ConfigError(f"parameter 'preprocessing.{key}': give one value or one per task "
                              f"({', '.join(TASKS)}), got {dict(value)!r}")
        return value[task]
    return value


def image_size_for(params: dict[str, Any], task: str) -> Any:
    """``preprocessing.image_size`` of ``task`` (see :func:`per_task`)."""
    return per_task(params, "image_size", task)


def source_equalised(params: dict[str, Any]) -> bool:
    """True when the dataset declares that its images already carry CLAHE (``source_clahe_clip_limit``)."""
    return check_preprocessing_params(params)["source_clahe_clip_limit"] is not None


def enhance_config(params: dict[str, Any]) -> PreprocessConfig:
    """What :func:`lungseg.imaging.enhance` applies to this dataset's cases: the window, and CLAHE
    unless the source already applied it (then equalising again would apply it twice)."""
    params = check_preprocessing_params(params)
    clip = 0.0 if params["source_clahe_clip_limit"] is not None else params["clahe_clip_limit"]
    size = image_size_for(params, TASKS[0])  # enhancing does not resize or stack; any task's values do
    return PreprocessConfig.from_dict({**params, "clahe_clip_limit": clip, "image_size": size,
                                       "context": per_task(params, "context", TASKS[0])})


def preprocess_config(params: dict[str, Any], task: str) -> PreprocessConfig:
    """The preprocessing config a task's model is trained with and saved with (inference repeats it).

    When the source is declared equalised (``source_clahe_clip_limit``), that is the CLAHE the model
    has seen, so it is the one recorded: new scans get it once at inference, as the training data did.
    """
    check_task(task)
    params = check_preprocessing_params(params)
    source = params["lung_crop_source"]
    if source not in LUNG_CROP_SOURCES:
        raise ConfigError(
            f"preprocessing.lung_crop_source is {source!r}; expected one of {LUNG_CROP_SOURCES}"
        )
    crop_mode = params["infection_crop_source"] if task == "infection" else source
    clip = params["source_clahe_clip_limit"]
    clip = params["clahe_clip_limit"] if clip is None else clip
    return PreprocessConfig.from_dict({**params, "crop_mode": crop_mode, "clahe_clip_limit": clip,
                                       "image_size": image_size_for(params, task),
                                       "context": per_task(params, "context", task)})


def build_model_input(
    task: str, case_table: pd.DataFrame, enhanced_cases: dict[str, Lazy], params: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Model input of ``task``: informative slices (for the infection task, every slice with
    infection and a share ``infection_negative_fraction`` of the others), cropped and resized.

    Returns ``images`` (N, S, S) uint8, ``masks``, ``case_ids``, ``slice_index``, ``records`` and
    ``config_json`` (the task and its :class:`PreprocessConfig`, which the model config inherits); the
    infection task also ``lungs``, the lung masks on the same grid (where ``augment.paint`` paints).
    """
    config = preprocess_config(params, task)
    rng = np.random.default_rng(int(params["seed"]))
    min_fraction, negatives = float(params["min_lung_fraction"]), float(params["infection_negative_fraction"])
    cases = list(case_table["case_id"])
    if on_cluster():  # one task per case, twice: the slice flags, then (after the seeded draw here) the slices
        flags = case_map(_flags_task, [(c, enhanced_cases[c]) for c in cases], min_fraction)
        chosen = [_chosen(task, *f, negatives, rng) for f in flags]
        parts = case_map(_slices_task, [(c, enhanced_cases[c], i) for c, i in zip(cases, chosen)], task, config)
    else:  # one case in memory at a time, read once
        parts = (_serial_case(task, c, enhanced_cases[c](), min_fraction, negatives, rng, config) for c in cases)
    images, masks, case_ids, slice_idx, records, lungs = [], [], [], [], [], []
    kept = {}
    for case, part in tqdm(zip(cases, parts), total=len(cases), desc=f"{task} model input", unit="case"):
        kept[case] = 0 if part is None else len(part["images"])
        if part is None:
            logger.warning("%s task: case %s has no informative slice (empty lung mask?); skipped", task, case)
            continue
        if part["one_lung"]:
            logger.info("%s task: case %s has %d slice(s) with one lung only", task, case, part["one_lung"])
        images.append(part["images"])
        masks.append(part["masks"])
        records.append(part["records"])
        if "lungs" in part:
            lungs.append(part["lungs"])
        case_ids.append(np.full(kept[case], case))
        slice_idx.append(part["slice_index"])
    if not images:
        raise TrainingDataError(
            f"{task} task: 0 slices left after filtering (min_lung_fraction="
            f"{params['min_lung_fraction']}); check the lung masks"
        )
    out = {
        "images": np.concatenate(images),
        "masks": np.concatenate(masks),
        "case_ids": np.concatenate(case_ids).astype(str),
        "slice_index": np.concatenate(slice_idx),
        "records": np.concatenate(records),
        "config_json": np.array(json.dumps({"task": task, **config.to_dict()})),
    }
    if lungs:
        out["lungs"] = np.concatenate(lungs)
    pos = float(out["masks"].mean())
    logger.info(
        "%s task: %d slices kept from %d cases (%s); positive pixels %.2f%%",
        task, len(out["images"]), len(kept), ", ".join(f"{k}: {v}" for k, v in kept.items()), 100 * pos,
    )
    return out


def _case_flags(rec: dict[str, np.ndarray], min_lung_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """A case's informative slices and its slices with infection, ``bool (Z,)`` each."""
    return informative_slices(rec["lung"], min_lung_fraction), (rec["infection"] > 0).any(axis=(1, 2))


def _chosen(task: str, keep: np.ndarray, has_infection: np.ndarray, negative_fraction: float,
            rng: np.random.Generator) -> np.ndarray:
    """The slice indices a task keeps; the infection task draws its negatives from the one seeded ``rng``,
    case after case in the case table's order, serial or on a cluster."""
    if task == "infection":
        keep = select_infection_slices(keep, has_infection, negative_fraction, rng)
    return np.flatnonzero(keep)


def _case_slices(task: str, case: str, rec: dict[str, np.ndarray], idx: np.ndarray,
                 config: PreprocessConfig) -> dict[str, Any] | None:
    """The model-input slices ``idx`` of one case, cropped and resized, with their masks and crop records
    (None without a slice)."""
    if idx.size == 0:
        return None
    lung, infection = rec["lung"], rec["infection"]
    one_lung = (lung[idx] == 1).any(axis=(1, 2)) ^ (lung[idx] == 2).any(axis=(1, 2))
    imgs, recs = crop_and_resize(rec["image"], config, lung_mask=lung, index=idx)
    target = (lung[idx] > 0) if task == "lung" else (infection[idx] > 0)
    part = {"images": imgs, "masks": prepare_masks(target.astype(np.uint8), recs),
            "records": np.stack([r.to_array() for r in recs]), "slice_index": idx.astype(np.int32),
            "one_lung": int(one_lung.sum())}
    if task == "infection":  # the lungs on the same grid: where training may paint extensive disease (augment.paint)
        part["lungs"] = prepare_masks((lung[idx] > 0).astype(np.uint8), recs)
    return part


def _serial_case(task: str, case: str, rec: dict[str, np.ndarray], min_lung_fraction: float,
                 negative_fraction: float, rng: np.random.Generator, config: PreprocessConfig) -> dict[str, Any] | None:
    idx = _chosen(task, *_case_flags(rec, min_lung_fraction), negative_fraction, rng)
    return _case_slices(task, case, rec, idx, config)


def _flags_task(job: tuple[str, Lazy], min_lung_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    return _case_flags(job[1](), min_lung_fraction)


def _slices_task(job: tuple[str, Lazy, np.ndarray], task: str, config: PreprocessConfig) -> dict[str, Any] | None:
    case, load, idx = job
    return _case_slices(task, case, load(), idx, config)


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
    params = check_section(params, "split", SPLIT_KEYS)
    method = params["method"]
    if method not in SPLIT_METHODS:
        raise ConfigError(f"split.method is {method!r}; expected one of {SPLIT_METHODS}")
    seed = int(params["seed"])
    val_fraction = float(params["val_fraction"])
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
            k = int(params["n_folds"])
            which = int(params["fold"])
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
