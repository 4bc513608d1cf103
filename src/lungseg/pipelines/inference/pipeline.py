"""Inference pipeline: ``kedro run --pipelines=inference`` segments a folder / metadata.csv of CTs."""

from kedro.pipeline import Node, Pipeline


def create_pipeline(**kwargs) -> Pipeline:
    from lungseg.pipelines.inference.nodes import run_inference

    return Pipeline(
        [
            Node(
                run_inference,
                inputs="params:inference",
                outputs="inference_summary",
                name="run_inference",
            )
        ],
        tags=["inference"],
    )
