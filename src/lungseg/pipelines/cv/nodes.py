"""Cross-validation nodes: wiring only. The work is in :mod:`lungseg.models.folds` (folds, one model
per fold) and :mod:`lungseg.evaluation.out_of_fold` (out-of-fold metrics); MLflow logging in
:mod:`lungseg.tracking`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from lungseg.config import check_section
from lungseg.evaluation.out_of_fold import (
    combined_oof_metrics,
    fold_segmenter,
    join_fold_members,
    oof_case_metrics,
    summarize_cv,
)
from lungseg.limits import load_guard
from lungseg.models.folds import fold_table, train_folds
from lungseg.models.inputs import source_equalised
from lungseg.pipelines.evaluation.nodes import EVALUATION_KEYS, EVALUATION_OPTIONAL
from lungseg.tracking import history_to_steps, log_child_run, split_inputs, summary_to_metrics

Lazy = Callable[[], dict[str, np.ndarray]]
CASE_METRICS = ("dice", "iou", "precision", "recall", "nsd", "hd95")


def make_folds(case_table: pd.DataFrame, split_params: dict[str, Any]) -> pd.DataFrame:
    """Every case's fold (``split.n_folds`` folds, seeded by ``split.seed``)."""
    return fold_table(case_table, split_params)


def train_fold_models(model_input: dict[str, np.ndarray], folds: pd.DataFrame, model_params: dict[str, Any],
                      training_params: dict[str, Any], dataset_name: str):
    """One model per fold; returns ``{fold: {model, config}}`` and ``{fold: history}``."""
    results = train_folds(model_input, folds, model_params, training_params, dataset_name)
    return ({k: {"model": r.model, "config": r.config} for k, r in results.items()},
            {k: r.history for k, r in results.items()})


def evaluate_fold_models(fold_models: dict[str, dict], folds: pd.DataFrame, enhanced_cases: dict[str, Lazy],
                         params: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Each fold model on its own held-out cases: the out-of-fold table and its summary."""
    params = check_section(params, "evaluation", EVALUATION_KEYS, EVALUATION_OPTIONAL)
    models = {k: v["model"] for k, v in fold_models.items()}
    configs = {k: v["config"] for k, v in fold_models.items()}
    table = oof_case_metrics(models, configs, folds, enhanced_cases, int(params["batch_size"]))
    config = next(iter(configs.values()))
    summary = {"variant": f"{config['task']}_{config['architecture']}", "task": config["task"],
               "dataset": config.get("dataset"), "n_folds": len(configs)}
    for metric in CASE_METRICS:
        summary.update(summarize_cv(table, metric, prefix="case_"))
    return table, summary


def evaluate_combined(lung_folds: dict[str, dict], infection_folds: dict[str, dict], folds: pd.DataFrame,
                      canonical_cases: dict[str, Lazy], case_table: pd.DataFrame,
                      params: dict[str, Any], preprocessing: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The combined system (predicted lungs, then infection inside them) out of fold, per case."""
    params = check_section(params, "evaluation", EVALUATION_KEYS, EVALUATION_OPTIONAL)
    kinds = dict(zip(case_table["case_id"], case_table["source_kind"]))
    others = load_fold_runs(params.get("infection_ensemble_with"))
    infection_folds = join_fold_members(infection_folds, others)
    # the guard's bounds of conf/base (what the out-of-fold Segmenter read for itself before #26)
    segment = fold_segmenter(lung_folds, infection_folds, kinds, int(params["batch_size"]),
                             input_equalised=source_equalised(preprocessing), flip_tta=bool(params["flip_tta"]),
                             lung_fill_holes=bool(params["lung_fill_holes"]), guard=load_guard(),
                             infection_margin_mm=params.get("infection_margin_mm", 0.0),
                             infection_min_lesion_mm3=params.get("infection_min_lesion_mm3", 0.0))
    table = combined_oof_metrics(segment, folds, canonical_cases)
    summary = {"n_folds": int(folds["fold"].nunique()),
               # the infection models per fold (1, or an ensemble with the runs of evaluation.infection_ensemble_with)
               "infection_models_per_fold": 1 + len(others), "infection_ensemble_with": sorted(others),
               "involvement_abs_error_mean": float((table["pred_involvement_percent"]
                                                    - table["true_involvement_percent"]).abs().mean())}
    for metric in ("infection_dice", "lung_dice", "infection_recall", "infection_precision"):
        summary.update(summarize_cv(table, metric, prefix="combined_"))
    sweep = {c: float(table[c].mean()) for c in table if c.startswith("infection_dice_t")}
    summary["infection_dice_by_threshold"] = sweep  # out of fold; picking the best one on it is optimistic
    return table, summary


def load_fold_runs(folders: str | list[str] | None) -> dict[str, dict[str, dict]]:
    """``evaluation.infection_ensemble_with``: fold folders of other runs of the same folds (one
    folder, or a list), each loaded as a :class:`lungseg.datasets.FoldModelsDataset`."""
    from lungseg.datasets import FoldModelsDataset
    from lungseg.errors import ConfigError

    if not folders:
        return {}
    folders = [folders] if isinstance(folders, str) else list(folders)
    if not all(isinstance(f, str) and f for f in folders):
        raise ConfigError(f"evaluation.infection_ensemble_with: expected a folder or a list of folders, got {folders!r}")
    return {folder: FoldModelsDataset(path=folder).load() for folder in folders}


def stress_cases(canonical_cases: dict[str, Lazy], params: dict[str, Any]) -> dict[str, Lazy]:
    """The extensive-disease stress set: every case with consolidation and ground glass painted into
    ``evaluation.stress.coverage`` of each lung (:func:`lungseg.imaging.paint.paint_extensive_disease`),
    the painted pixels added to its infection mask, its lungs unchanged. Lazy, one seed per case."""
    from lungseg.imaging.paint import paint_from_dict

    params = check_section(params, "evaluation", EVALUATION_KEYS, EVALUATION_OPTIONAL)
    paint, seed = paint_from_dict(params.get("stress"))

    def painted(case: str, load: Lazy) -> Lazy:
        def _load() -> dict[str, np.ndarray]:
            rec = dict(load())
            rng = np.random.default_rng([seed, *case.encode()])
            rec["ct"], rec["infection"] = paint(rec["ct"], rec["lung"], rec["infection"], rng, source=case)
            return rec
        return _load

    return {case: painted(case, load) for case, load in canonical_cases.items()}


def stress_metrics(summary: dict[str, Any]) -> dict[str, list[dict[str, float]]]:
    """The stress set's summary as metrics of the parent MLflow run (keys ``stress_combined_*``)."""
    return summary_to_metrics(summary, prefix="stress_")


def log_fold_runs(fold_models: dict[str, dict], histories: dict[str, dict], table: pd.DataFrame,
                  model_params: dict[str, Any], training_params: dict[str, Any],
                  model_input: dict[str, np.ndarray], folds: pd.DataFrame, dataset_name: str) -> pd.DataFrame:
    """One nested MLflow run per fold (same keys in every fold): its settings, its epochs, its
    held-out cases' mean metrics and its training and validation cases (``mlflow.log_input``).
    Returns the fold -> run id table."""
    from lungseg.models.folds import fold_split

    rows = []
    for name, item in sorted(fold_models.items()):
        fold = int(item["config"]["fold"])
        held_out = table[table["fold"] == fold]
        final = {f"case_{m}": float(held_out[m].replace([np.inf, -np.inf], np.nan).mean()) for m in CASE_METRICS}
        metrics = {**history_to_steps(histories[name]), **summary_to_metrics(final, prefix="eval_")}
        inputs = split_inputs(dataset_name, fold_split(folds, fold), model_input["case_ids"])
        run_id = log_child_run(f"{item['config']['task']}_{item['config']['architecture']} {name}",
                               {"model": model_params, "training": training_params, "fold": fold}, metrics,
                               {"fold": str(fold)}, inputs)
        rows.append({"fold": fold, "name": name, "mlflow_run_id": run_id, "n_val_cases": len(held_out)})
    return pd.DataFrame(rows)


def cv_inputs(model_input: dict[str, np.ndarray], folds: pd.DataFrame, dataset_name: str) -> dict[str, Any]:
    """Every case of the cross-validation (each is held out once), for ``mlflow.log_input`` on the
    variant's run (context ``cross_validation``)."""
    split = folds.assign(subset="all")
    return split_inputs(dataset_name, split, model_input["case_ids"], {"cross_validation": ("all",)})


def cv_metrics(summary: dict[str, Any]) -> dict[str, list[dict[str, float]]]:
    """The cross-validation summary as metrics of the variant's MLflow run (``cv_<key>``), and the
    out-of-fold means under the names a trained variant's run uses (``eval_case_dice``...), so that
    Compare lines cross-validated and single runs up."""
    oof = {f"case_{m}": summary[f"case_{m}_oof_mean"] for m in CASE_METRICS if f"case_{m}_oof_mean" in summary}
    return {**summary_to_metrics(summary, prefix="cv_"), **summary_to_metrics(oof, prefix="eval_")}


def combined_metrics(summary: dict[str, Any]) -> dict[str, list[dict[str, float]]]:
    """The combined system's summary as metrics of the parent MLflow run (keys ``combined_*``)."""
    return summary_to_metrics(summary, prefix="")


def plot_cv(table: pd.DataFrame):
    """Out-of-fold Dice per case, coloured by fold."""
    from lungseg.evaluation.plots import plot_cv_cases

    return plot_cv_cases(table, "dice")


def plot_combined(table: pd.DataFrame):
    """The combined system's infection Dice per case, and predicted against true involvement."""
    from lungseg.evaluation.plots import plot_cv_cases

    return plot_cv_cases(table, "infection_dice")
