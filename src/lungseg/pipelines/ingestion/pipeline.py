"""Ingestion pipeline: metadata.csv + raw NIfTI -> case table + canonical cases."""

from kedro.pipeline import Node, Pipeline


def create_pipeline(**kwargs) -> Pipeline:
    from lungseg.pipelines.ingestion.nodes import ingest_cases

    return Pipeline(
        [
            Node(
                ingest_cases,
                inputs=["raw_metadata", "raw_volumes", "params:ingestion"],
                outputs=["case_table", "canonical_cases", "ingestion_skipped_cases"],
                name="ingest_cases",
            )
        ],
        namespace="ingestion",
        prefix_datasets_with_namespace=False,
        tags=["ingestion"],
    )
