"""``MlflowKerasModelDataset``: log a Keras model to the active MLflow run, with a signature.

kedro-mlflow's ``MlflowModelTrackingDataset`` passes ``save_args`` straight to ``log_model``, and a
model signature cannot be written in YAML; this subclass derives it from the model's input and
output shapes (float32 ``(-1, S, S, 1)`` in, sigmoid ``(-1, S, S, 1)`` out).
"""

from __future__ import annotations

from typing import Any

import numpy as np
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
    ) -> None:
        super().__init__(
            flavor="mlflow.keras",
            save_args={"name": artifact_path, **(save_args or {})},
            load_args=load_args,
            metadata=metadata,
        )

    def _save(self, model: Any) -> None:
        if "signature" not in self._save_args:
            self._save_args["signature"] = keras_signature(model)
        super()._save(model)

