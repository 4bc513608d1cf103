"""One template, four variants: ``lung_unet``, ``lung_deeplabv3plus``, ``infection_unet``,
``infection_deeplabv3plus``.

Each variant is the template under its own Kedro namespace, so its datasets
(``infection_unet.model``...) and parameters (``params:infection_unet.training``...) are prefixed
and kedro-viz draws it as one collapsible node.
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

VARIANTS = ("lung_unet", "lung_deeplabv3plus", "infection_unet", "infection_deeplabv3plus")


def variant_task(variant: str) -> str:
    return variant.split("_", 1)[0]


def create_template() -> Pipeline:
    """Train, then evaluate, one variant (dataset and parameter names before namespacing)."""
    from lungseg.pipelines.evaluation.nodes import evaluate_model, metrics_table, plot_history, plot_overlay
    from lungseg.pipelines.training.nodes import train_model

    return Pipeline(
        [
            Node(
                train_model,
                ["model_input", "case_split", "params:model", "params:training", "params:dataset_name"],
                ["model_config", "model", "mlflow_model", "model_config_report", "history", "epoch_metrics"],
                name="train_model",
                tags=["training"],
            ),
            Node(plot_history, ["history", "model_config"], "training_curves", name="plot_training_curves",
                 tags=["evaluation"]),
            Node(
                evaluate_model,
                ["model", "model_config", "model_input", "case_split", "enhanced_cases", "params:evaluation"],
                ["metrics", "slice_metrics", "case_metrics", "overlay_data", "eval_metrics"],
                name="evaluate_model",
                tags=["evaluation"],
            ),
            Node(metrics_table, "metrics", "metrics_table", name="metrics_table", tags=["evaluation"]),
            Node(plot_overlay, "overlay_data", "overlays", name="plot_overlays", tags=["evaluation"]),
        ]
    )


def create_variant_pipeline(variant: str) -> Pipeline:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    task = variant_task(variant)
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
