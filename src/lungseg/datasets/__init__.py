"""Catalog datasets that kedro-datasets lacks."""

from lungseg.datasets.fold_models import FoldModelsDataset
from lungseg.datasets.nifti import NiftiDataset
from lungseg.datasets.npz import NpzDataset
from lungseg.datasets.partitioned import CasePartitionedDataset

__all__ = ["CasePartitionedDataset", "FoldModelsDataset", "NiftiDataset", "NpzDataset"]


def __getattr__(name):  # MLflow is imported only when the MLflow dataset is used
    if name == "MlflowKerasModelDataset":
        from lungseg.datasets.mlflow_model import MlflowKerasModelDataset

        return MlflowKerasModelDataset
    raise AttributeError(name)
