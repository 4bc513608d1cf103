"""``MlflowKerasModelDataset``: log a Keras model and its config to the active MLflow run.

kedro-mlflow's ``MlflowModelTrackingDataset`` passes ``save_args`` straight to ``log_model``, and a
model signature cannot be written in YAML; this subclass derives it from the model's input and
output shapes (float32 ``(-1, S, S, 1)`` in, sigmoid ``(-1, S, S, 1)`` out). Given
``{"model": model, "config": model_config}``, it also writes the config into the logged model's
metadata (``model_config``) and, with ``config_artifact``, as a run artifact, so that a model taken
from MLflow carries the preprocessing it was trained with.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from kedro.io import AbstractDataset, DatasetError
from kedro_mlflow.io.models import MlflowModelTrackingDataset


def keras_signature(model) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    def spec(shape, name):
        return TensorSpec(np.dtype(np.float32), tuple(-1 if d is None else int(d) for d in shape), name)

    return ModelSignature(
        inputs=Schema([spec(model.input_shape, "ct_slices")]),
        outputs=Schema([spec(model.output_shape, "probability")]),
    )


class MlflowKerasModelDataset(MlflowModelTrackingDataset):
    """An ``mlflow.keras`` model logged to the current run, with a tensor signature.

    Args:
        artifact_path: name of the logged model inside the run.
        save_args / load_args: passed to ``mlflow.keras.log_model`` / ``load_model``.
    """

    def __init__(
        self,
        artifact_path: str = "model",
        save_args: dict[str, Any] | None = None,
        load_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        config_artifact: str | None = None,
    ) -> None:
        self._config_artifact = config_artifact
        super().__init__(
            flavor="mlflow.keras",
            save_args={"name": artifact_path, **(save_args or {})},
            load_args=load_args,
            metadata=metadata,
        )

    def _save(self, data: Any) -> None:
        model, config = (data["model"], data.get("config")) if isinstance(data, dict) else (data, None)
        base_args = self._save_args
        args = dict(base_args)
        args.setdefault("signature", keras_signature(model))
        if config is not None:
            args["metadata"] = {**(args.get("metadata") or {}), "model_config": config}
        self._save_args = args
        try:
            super()._save(model)
        finally:
            self._save_args = base_args
        if config is not None and self._config_artifact:
            import mlflow

            mlflow.log_dict(config, self._config_artifact)



class MlflowInputsDataset(AbstractDataset):
    """Logs a run's datasets with ``mlflow.log_input`` (save only), so that the MLflow runs table's
    Dataset column names them. Takes :func:`lungseg.tracking.split_inputs`' dict
    (``{context: {name, digest, n_cases, n_slices, table}}``). Outside an MLflow run it logs nothing.
    """

    def __init__(self, metadata: dict[str, Any] | None = None) -> None:
        self.metadata = metadata

    def save(self, data: dict[str, dict[str, Any]]) -> None:
        import mlflow

        from lungseg.tracking import log_inputs

        if mlflow.active_run() is not None:
            log_inputs(data)

    def load(self) -> Any:
        raise DatasetError("MlflowInputsDataset is write-only: it logs inputs to the MLflow run")

    def _describe(self) -> dict[str, Any]:
        return {}


class MlflowCombinedModelDataset(AbstractDataset):
    """Logs ``lungseg-combined`` (the lung and infection models as one ``mlflow.pyfunc`` model) to the
    active MLflow run and registers a new version (save only). Takes the registration node's dict:
    ``{"register": False}`` logs nothing; else ``name``, ``settings``, ``lung`` and ``infection``
    (see :func:`lungseg.serving.register.log_combined_model`). Outside an MLflow run it logs nothing.
    """

    def __init__(self, metadata: dict[str, Any] | None = None) -> None:
        self.metadata = metadata
        self.model_info: Any = None

    def save(self, data: dict[str, Any]) -> None:
        import mlflow

        if not data.get("register") or mlflow.active_run() is None:
            return
        from lungseg.serving.register import log_combined_model

        self.model_info = log_combined_model(data["lung"], data["infection"], data["settings"], data["name"])

    def load(self) -> Any:
        raise DatasetError("MlflowCombinedModelDataset is write-only: load the model with lungseg.serving.bundle.load_segmenter")

    def _describe(self) -> dict[str, Any]:
        return {}
