"""One template, four variants: ``lung_unet``, ``lung_deeplabv3plus``, ``infection_unet``,
``infection_deeplabv3plus``.

Each variant is the template under its own Kedro namespace, so its datasets
(``infection_unet.model``...) and parameters (``params:infection_unet.training``...) are prefixed
and kedro-viz draws it as one collapsible node.
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from lungseg.layout import VARIANTS, variant_task


def create_template() -> Pipeline:
    """Train, then evaluate, one variant (dataset and parameter names before namespacing)."""
    from lungseg.pipelines.evaluation.nodes import (
        epoch_metrics,
        eval_metrics,
        evaluate_model,
        metrics_table,
        plot_history,
        plot_overlay,
    )
    from lungseg.pipelines.training.nodes import mlflow_inputs, mlflow_model, train_model

    train, evaluate = ["training"], ["evaluation"]
    return Pipeline(
        [
            Node(train_model,
                 ["model_input", "case_split", "params:model", "params:training", "params:dataset_name"],
                 ["model_config", "model", "history"], name="train_model", tags=train),
            Node(mlflow_model, ["model", "model_config"], "mlflow_model", name="log_mlflow_model", tags=train),
            Node(mlflow_inputs, ["model_input", "case_split", "params:dataset_name"], "mlflow_inputs",
                 name="log_mlflow_inputs", tags=train),
            Node(epoch_metrics, "history", "epoch_metrics", name="epoch_metrics", tags=train),
            Node(plot_history, ["history", "model_config"], "training_curves", name="plot_training_curves",
                 tags=evaluate),
            Node(evaluate_model,
                 ["model", "model_config", "model_input", "case_split", "enhanced_cases", "params:evaluation"],
                 ["metrics", "slice_metrics", "case_metrics", "overlay_data"], name="evaluate_model", tags=evaluate),
            Node(eval_metrics, "metrics", "eval_metrics", name="eval_metrics", tags=evaluate),
            Node(metrics_table, "metrics", "metrics_table", name="metrics_table", tags=evaluate),
            Node(plot_overlay, "overlay_data", "overlays", name="plot_overlays", tags=evaluate),
        ]
    )


def create_variant_pipeline(variant: str) -> Pipeline:
    task = variant_task(variant)  # a ConfigError naming an unknown variant
    return Pipeline(
        create_template(),
        namespace=variant,
        inputs={
            "model_input": f"preprocessing.{task}_model_input",
            "case_split": "preprocessing.case_split",
            "enhanced_cases": "preprocessing.enhanced_cases",
        },
        parameters={"params:dataset_name": "params:dataset_name", "params:evaluation": "params:evaluation"},
        tags=[variant, task],
    )


def create_pipeline(**kwargs) -> Pipeline:
    return sum((create_variant_pipeline(v) for v in VARIANTS), Pipeline([]))
