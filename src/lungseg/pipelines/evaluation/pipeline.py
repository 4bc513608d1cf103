"""The classical baseline and the comparison across variants."""

from __future__ import annotations

from collections.abc import Iterable

from kedro.pipeline import Node, Pipeline


def create_pipeline(variants: Iterable[str] = (), **kwargs) -> Pipeline:
    from lungseg.pipelines.evaluation.nodes import baselines, compare_variants

    variants = list(variants)
    return Pipeline(
        [
            Node(
                baselines,
                ["case_table", "canonical_cases", "preprocessing.case_split", "params:evaluation"],
                ["baseline_metrics", "baseline_case_metrics"],
                name="evaluate_baselines",
            ),
            Node(
                compare_variants,
                ["previous_reports", "baseline_metrics", *[f"{v}.metrics" for v in variants]],
                ["comparison_table", "comparison_plot"],
                name="compare_variants",
            ),
        ],
        namespace="evaluation",
        inputs={"case_table", "canonical_cases", "preprocessing.case_split", *[f"{v}.metrics" for v in variants]},
        parameters={"params:evaluation"},
        tags=["evaluation"],
    )
