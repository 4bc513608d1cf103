"""Preprocessing pipelines: shared steps once, then one model input per task.

Dataset names live in the ``preprocessing`` namespace (``preprocessing.lung_model_input``...), so
kedro-viz draws the whole stage as one collapsible group.
"""

from __future__ import annotations

from collections.abc import Iterable

from kedro.pipeline import Node, Pipeline

from lungseg.layout import TASKS


def create_shared_pipeline() -> Pipeline:
    """Intensity + CLAHE per case, the patient split and the EDA plots (task independent)."""
    from lungseg.pipelines.preprocessing.eda import eda_summary, plot_dataset_overview, plot_example_slices
    from lungseg.pipelines.preprocessing.nodes import enhance_cases, split_cases

    return Pipeline(
        [
            Node(enhance_cases, ["case_table", "canonical_cases", "params:preprocessing"], "enhanced_cases",
                 name="enhance_cases"),
            Node(split_cases, ["case_table", "params:split"], "case_split", name="split_cases"),
            Node(eda_summary, "case_table", "eda_summary", name="eda_summary"),
            Node(plot_dataset_overview, "case_table", "eda_overview", name="plot_dataset_overview"),
            Node(plot_example_slices, ["case_table", "enhanced_cases", "params:eda.n_examples"], "eda_examples",
                 name="plot_example_slices"),
        ],
        inputs={"case_table", "canonical_cases"},
        parameters={"params:preprocessing", "params:split", "params:eda.n_examples"},
        namespace="preprocessing",
        tags=["preprocessing"],
    )


def create_task_pipeline(task: str) -> Pipeline:
    """The model input of one task (``lung`` or ``infection``)."""
    from lungseg.pipelines.preprocessing.nodes import build_infection_input, build_lung_input

    func = {"lung": build_lung_input, "infection": build_infection_input}[task]
    return Pipeline(
        [
            Node(func, ["case_table", "enhanced_cases", "params:preprocessing"], f"{task}_model_input",
                 name=f"build_{task}_model_input"),
        ],
        inputs={"case_table"},
        parameters={"params:preprocessing"},
        namespace="preprocessing",
        tags=["preprocessing", task],
    )


def create_pipeline(tasks: Iterable[str] = TASKS, **kwargs) -> Pipeline:
    pipe = create_shared_pipeline()
    for task in tasks:
        pipe += create_task_pipeline(task)
    return pipe
