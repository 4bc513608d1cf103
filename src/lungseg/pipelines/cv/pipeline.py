"""Cross-validation pipelines: ``<variant>_cv`` for each variant.

``kedro run --pipelines=infection_unet_cv`` trains ``split.n_folds`` models per task (patients held
out by fold, every patient exactly once), scores each case with the fold model that never saw it,
and, for an infection variant, scores the combined system (lung U-Net folds, then the infection
folds inside the predicted lungs) exactly as ``lungseg predict`` runs it. Each fold is a nested
MLflow run under its variant's run (itself nested under the ``kedro run``'s run when the pipeline
trains two variants, see :class:`lungseg.hooks.LungsegMlflowHook`); the fold models are saved together
(``data/06_models/<variant>_cv/``) and ``lungseg predict --models`` uses them as an ensemble.
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from lungseg.layout import cv_name, variant_task

#: The lung folds the combined system uses with any infection variant.
COMBINED_LUNG_VARIANT = "lung_unet"


def create_folds_pipeline() -> Pipeline:
    from lungseg.pipelines.cv.nodes import make_folds

    return Pipeline([Node(make_folds, ["case_table", "params:split"], "folds", name="make_folds")],
                    namespace="cv", inputs={"case_table"}, parameters={"params:split"}, tags=["cv"])


def create_variant_cv_pipeline(variant: str) -> Pipeline:
    """Train one model per fold, score out of fold, log one nested MLflow run per fold."""
    from lungseg.pipelines.cv.nodes import (
        cv_inputs,
        cv_metrics,
        evaluate_fold_models,
        log_fold_runs,
        plot_cv,
        train_fold_models,
    )

    task = variant_task(variant)
    template = Pipeline([
        Node(train_fold_models, ["model_input", "folds", "params:model", "params:training", "params:dataset_name"],
             ["fold_models", "fold_histories"], name="train_fold_models"),
        Node(evaluate_fold_models, ["fold_models", "folds", "enhanced_cases", "params:evaluation"],
             ["oof_case_metrics", "cv_summary"], name="evaluate_fold_models"),
        Node(log_fold_runs, ["fold_models", "fold_histories", "oof_case_metrics", "params:model", "params:training",
                             "model_input", "folds", "params:dataset_name"],
             "fold_runs", name="log_fold_runs"),
        Node(cv_inputs, ["model_input", "folds", "params:dataset_name"], "mlflow_inputs", name="log_mlflow_inputs"),
        Node(cv_metrics, "cv_summary", "cv_metrics", name="cv_metrics"),
        Node(plot_cv, "oof_case_metrics", "cv_plot", name="plot_folds"),
    ])
    return Pipeline(
        template, namespace=cv_name(variant),
        inputs={"model_input": f"preprocessing.{task}_model_input", "folds": "cv.folds",
                "enhanced_cases": "preprocessing.enhanced_cases"},
        parameters={"params:model": f"params:{variant}.model", "params:training": f"params:{variant}.training",
                    "params:dataset_name": "params:dataset_name", "params:evaluation": "params:evaluation"},
        tags=["cv", cv_name(variant), task],
    )


def create_combined_cv_pipeline(variant: str) -> Pipeline:
    """The combined system out of fold: ``lung_unet`` folds, then ``variant``'s infection folds."""
    from lungseg.pipelines.cv.nodes import (
        combined_metrics,
        evaluate_combined,
        plot_combined,
        stress_cases,
        stress_metrics,
    )

    template = Pipeline([
        Node(evaluate_combined, ["lung_folds", "fold_models", "folds", "canonical_cases", "case_table",
                                 "params:evaluation", "params:preprocessing"],
             ["combined_case_metrics", "combined_summary"],
             name="evaluate_combined"),
        Node(combined_metrics, "combined_summary", "combined_metrics", name="combined_metrics"),
        Node(plot_combined, "combined_case_metrics", "combined_plot", name="plot_combined"),
        # the same, on the extensive-disease stress set (the dev cases with 30-70 % of each lung painted)
        Node(stress_cases, ["canonical_cases", "params:evaluation"], "stress_cases", name="stress_cases"),
        Node(evaluate_combined, ["lung_folds", "fold_models", "folds", "stress_cases", "case_table",
                                 "params:evaluation", "params:preprocessing"],
             ["stress_case_metrics", "stress_summary"], name="evaluate_stress"),
        Node(stress_metrics, "stress_summary", "stress_metrics", name="stress_metrics"),
    ])
    return Pipeline(
        template, namespace=cv_name(variant),
        inputs={"lung_folds": f"{cv_name(COMBINED_LUNG_VARIANT)}.fold_models", "folds": "cv.folds",
                "canonical_cases": "canonical_cases", "case_table": "case_table"},
        parameters={"params:evaluation": "params:evaluation", "params:preprocessing": "params:preprocessing"},
        tags=["cv", cv_name(variant), "combined"],
    )


def create_pipeline(variant: str) -> Pipeline:
    """Everything after preprocessing for ``<variant>_cv`` (an infection variant brings the lung folds)."""
    pipe = create_folds_pipeline() + create_variant_cv_pipeline(variant)
    if variant_task(variant) == "infection":
        pipe += create_variant_cv_pipeline(COMBINED_LUNG_VARIANT) + create_combined_cv_pipeline(variant)
    return pipe
