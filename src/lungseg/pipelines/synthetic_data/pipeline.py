"""Synthetic-data pipeline: ``kedro run --pipelines=synthetic_data``."""

from kedro.pipeline import Pipeline, node

from lungseg.pipelines.synthetic_data.nodes import generate_synthetic_dataset


def create_pipeline(**kwargs) -> Pipeline:
    """One node: parameters -> ``synthetic_metadata`` (metadata.csv) + ``synthetic_volumes`` (NIfTI files)."""
    return Pipeline(
        [
            node(
                generate_synthetic_dataset,
                "params:synthetic_data",
                ["synthetic_volumes", "synthetic_metadata"],
                name="generate_synthetic_dataset",
                tags=["synthetic_data"],
            )
        ]
    )
