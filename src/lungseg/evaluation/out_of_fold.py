"""Out-of-fold evaluation of a cross-validation.

Every case is scored by the one fold model that never saw it, so the per-case table covers every
patient once (``out-of-fold``). Two views:

* :func:`oof_case_metrics`: one task's model alone, on the crop its training protocol gives (the
  ground-truth lungs for the infection task, as in the paper).
* :func:`combined_case_metrics`: the combined system exactly as ``lungseg predict`` runs it (the
  lung model, 3D clean-up, then the infection model inside the *predicted* lungs), on the original
  grid, with the involvement it reports.

:func:`summarize_cv` gives the out-of-fold mean, the mean ± std over folds, the worst case and, for
the infection, the mean by involvement band, so that a mean cannot hide a failure on severe disease.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lungseg.evaluation.evaluate import evaluate_cases
from lungseg.evaluation.metrics import NSD_TOLERANCE_MM, volume_metrics

Lazy = Callable[[], dict[str, np.ndarray]]
#: Involvement bands (% of the lungs): under 10 %, 10-30 %, over 30 %.
BANDS = ((0.0, 10.0, "<10%"), (10.0, 30.0, "10-30%"), (30.0, 100.01, ">30%"))
#: Infection thresholds scored out of fold beside the models' own (the lungs do not depend on them).
THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6)


def involvement_percent(lung: np.ndarray, infection: np.ndarray) -> float:
    """Infection as a percentage of the lungs (the lungs counted with the infection inside them)."""
    lungs = (lung > 0) | (infection > 0)
    n = int(np.count_nonzero(lungs))
    return 100.0 * float(np.count_nonzero((infection > 0) & lungs)) / n if n else 0.0


def involvement_band(percent: float) -> str:
    return next(name for lo, hi, name in BANDS if lo <= percent < hi)


def oof_case_metrics(models: Mapping[str, Any], configs: Mapping[str, dict], folds: pd.DataFrame,
                     enhanced_cases: Mapping[str, Lazy], batch_size: int) -> pd.DataFrame:
    """Per-case metrics of each fold model on its own held-out cases, with ``fold`` and, for the
    infection task, the case's true involvement and band."""
    parts = []
    for name in sorted(models):
        config = configs[name]
        cases = sorted(folds.loc[folds["fold"] == int(config["fold"]), "case_id"])
        part = evaluate_cases(models[name], config, cases, enhanced_cases, batch_size)
        parts.append(part.assign(fold=int(config["fold"])))
    table = pd.concat(parts, ignore_index=True)
    if configs and next(iter(configs.values()))["task"] == "infection":
        true_pct = [involvement_percent(enhanced_cases[c]()["lung"], enhanced_cases[c]()["infection"])
                    for c in table["case_id"]]
        table["true_involvement_percent"] = true_pct
        table["band"] = [involvement_band(p) for p in true_pct]
    return table.sort_values("case_id").reset_index(drop=True)


def combined_case_row(case: str, rec: Mapping[str, np.ndarray], lung_labels: np.ndarray,
                      infection: np.ndarray, infection_prob: np.ndarray | None = None) -> dict[str, Any]:
    """Lung and infection metrics of one case of the combined system, on the case's own grid; with
    the infection probability, also the infection Dice at each of :data:`THRESHOLDS` (the infection
    searched, as the Segmenter does, inside the lungs' outline: their holes filled)."""
    from lungseg.evaluation.metrics import dice
    from lungseg.imaging import fill_holes_2d

    spacing = tuple(float(s) for s in rec["spacing"])
    lung_gt, inf_gt = rec["lung"] > 0, rec["infection"] > 0
    lung_m = volume_metrics(lung_labels > 0, lung_gt | inf_gt, spacing, NSD_TOLERANCE_MM["lung"])
    inf_m = volume_metrics(infection > 0, inf_gt, spacing, NSD_TOLERANCE_MM["infection"])
    true_pct = involvement_percent(rec["lung"], rec["infection"])
    outline = None if infection_prob is None else fill_holes_2d(lung_labels > 0).view(bool)
    return {
        "case_id": case,
        **{f"lung_{k}": lung_m[k] for k in ("dice", "nsd", "hd95")},
        **{f"infection_{k}": inf_m[k] for k in ("dice", "iou", "precision", "recall", "nsd", "hd95")},
        "true_involvement_percent": true_pct,
        "pred_involvement_percent": involvement_percent(lung_labels, infection),
        "band": involvement_band(true_pct),
        **({} if infection_prob is None else {
            f"infection_dice_t{t:.1f}": dice((infection_prob >= t) & outline, inf_gt) for t in THRESHOLDS}),
    }


def combined_oof_metrics(segment: Callable[[str, Mapping[str, np.ndarray], int], tuple[np.ndarray, ...]],
                         folds: pd.DataFrame, canonical_cases: Mapping[str, Lazy]) -> pd.DataFrame:
    """Per-case metrics of the combined system, each case segmented by its own fold's models.

    ``segment(case, record, fold)`` returns ``(lung_labels, infection[, infection_prob])`` on the
    record's grid.
    """
    rows = []
    for case, fold in tqdm(list(zip(folds["case_id"], folds["fold"])), desc="combined system, out of fold",
                           unit="case"):
        rec = canonical_cases[case]()
        rows.append({**combined_case_row(case, rec, *segment(case, rec, int(fold))), "fold": int(fold)})
    return pd.DataFrame(rows).sort_values("case_id").reset_index(drop=True)


def summarize_cv(table: pd.DataFrame, metric: str, prefix: str = "") -> dict[str, Any]:
    """Out-of-fold mean of ``metric``, mean ± std of the per-fold means, the worst case and, when
    the table has bands, the mean and count per involvement band."""
    values = table[metric].replace([np.inf, -np.inf], np.nan)
    per_fold = values.groupby(table["fold"]).mean()
    worst = int(values.idxmin()) if values.notna().any() else None
    out: dict[str, Any] = {
        f"{prefix}{metric}_oof_mean": float(values.mean()),
        f"{prefix}{metric}_fold_mean": float(per_fold.mean()),
        f"{prefix}{metric}_fold_std": float(per_fold.std(ddof=0)),
        f"{prefix}{metric}_worst": float(values.min()),
        f"{prefix}{metric}_worst_case": None if worst is None else str(table.loc[worst, "case_id"]),
        f"{prefix}n_cases": int(len(table)),
    }
    if "band" in table:
        for _, _, band in BANDS:
            sel = values[table["band"] == band]
            key = band.replace("<", "lt").replace(">", "gt").replace("%", "pct").replace("-", "_")
            out[f"{prefix}{metric}_band_{key}"] = float(sel.mean()) if len(sel) else None
            out[f"{prefix}n_cases_band_{key}"] = int(len(sel))
    return out


def fold_segmenter(lung_folds: Mapping[str, dict], infection_folds: Mapping[str, dict],
                   source_kinds: Mapping[str, str], batch_size: int, input_equalised: bool = False,
                   flip_tta: bool = False, lung_fill_holes: bool = False, *, guard, infection_margin_mm: float = 0.0,
                   infection_min_lesion_mm3: float = 0.0):
    """``segment(case, record, fold)`` for :func:`combined_oof_metrics`: the fold's lung and
    infection models in a :class:`lungseg.inference.segment.Segmenter`, as ``lungseg predict`` runs them
    (``input_equalised``: the dataset's images already carry CLAHE; see ``source_clahe_clip_limit``;
    ``guard``: the plausibility guard's bounds, ``inference.guard``; ``infection_margin_mm``,
    ``infection_min_lesion_mm3``: see
    :class:`lungseg.inference.settings.InferenceSettings`)."""
    from lungseg.inference.loaded_model import LoadedModel
    from lungseg.inference.segment import Segmenter
    from lungseg.inference.settings import InferenceSettings

    settings = InferenceSettings(guard=guard, batch_size=batch_size, input_equalised=input_equalised,
                                 flip_tta=flip_tta, lung_fill_holes=lung_fill_holes,
                                 infection_margin_mm=infection_margin_mm,
                                 infection_min_lesion_mm3=infection_min_lesion_mm3)
    from lungseg.models.folds import fold_name
    from lungseg.volume import from_canonical_array

    segmenters: dict[str, Segmenter] = {}

    def segment(case: str, rec: Mapping[str, np.ndarray], fold: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        name = fold_name(fold)
        if name not in segmenters:
            lung, inf = lung_folds[name], infection_folds[name]
            segmenters[name] = Segmenter.from_models(LoadedModel(lung["model"], lung["config"], f"lung {name}"),
                                                     LoadedModel(inf["model"], inf["config"], f"infection {name}"),
                                                     settings)
        volume = from_canonical_array(rec["ct"], tuple(float(s) for s in rec["spacing"]), source=case)
        seg = segmenters[name].segment(volume, source_kinds[case], progress=False, keep_probabilities=True)
        return seg.lung_labels, seg.infection, seg.infection_prob

    return segment


def join_fold_members(folds: Mapping[str, dict], others: Mapping[str, Mapping[str, dict]]) -> dict[str, dict]:
    """Each fold's model averaged with the same fold's model of other runs of the same folds.

    ``folds`` and every value of ``others`` are ``{fold_name: {"model", "config"}}`` (a
    :class:`lungseg.datasets.FoldModelsDataset`); ``others`` is keyed by where each came from (its
    folder), for the errors. A seed or recipe ensemble scored out of fold: fold ``k``'s members must
    have held out the same cases (else a member would score cases it trained on) and prepare their
    input alike (:func:`lungseg.inference.ensemble.ensemble_config`). Returns ``{fold_name: {"model":
    EnsembleModel, "config": shared config}}``; with no ``others``, ``folds`` itself.
    """
    from lungseg.errors import ConfigError
    from lungseg.inference.ensemble import ensemble_config
    from lungseg.inference.wrappers import EnsembleModel

    if not others:
        return dict(folds)
    joined = {}
    for name, main in sorted(folds.items()):
        members, configs = [main["model"]], {name: main["config"]}  # sorted first: its values lead the errors
        for source, run in others.items():
            if name not in run:
                raise ConfigError(f"folder {source!r} has no {name} (it has {', '.join(sorted(run)) or 'no folds'}); "
                                  f"an out-of-fold ensemble needs every fold of the same split")
            member = run[name]
            held, other_held = sorted(main["config"].get("val_cases", [])), sorted(member["config"].get("val_cases", []))
            if held != other_held:
                raise ConfigError(f"folder {source!r}: {name} held out {other_held}, this run's {name} held out {held}; "
                                  f"an out-of-fold ensemble needs the same folds (split.n_folds, split.seed)")
            members.append(member["model"])
            configs[f"{name} of {source}"] = member["config"]
        config = ensemble_config(configs, ", ".join(others))
        joined[name] = {"model": EnsembleModel(members),
                        "config": {**config, "val_cases": main["config"].get("val_cases"),
                                   "fold": main["config"].get("fold")}}
    return joined
