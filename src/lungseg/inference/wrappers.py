"""Model wrappers with the ``predict_on_batch`` interface inference uses: a fold ensemble's average
(:class:`EnsembleModel`) and flip test-time augmentation (:class:`FlipTTAModel`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from lungseg.errors import ConfigError


class EnsembleModel:
    """Averages the sigmoid outputs of its members (the ``predict_on_batch`` interface inference uses)."""

    def __init__(self, members: list[Any]):
        if not members:
            raise ConfigError("an ensemble needs at least one model")
        self.members = list(members)
        self.inputs = members[0].inputs

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        total = None
        for member in self.members:
            out = np.asarray(member.predict_on_batch(batch), dtype=np.float32)
            total = out if total is None else total + out
        return total / len(self.members)


class FlipTTAModel:
    """Flip test-time augmentation: the mean of the model on the slices and, flipped back, on their
    left-right mirror images (the training augmentation includes horizontal flips)."""

    def __init__(self, model: Any):
        self.model = model
        self.inputs = getattr(model, "inputs", None)

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch)
        plain = np.asarray(self.model.predict_on_batch(batch), dtype=np.float32)
        mirrored = np.asarray(self.model.predict_on_batch(np.ascontiguousarray(batch[:, :, ::-1])), dtype=np.float32)
        return (plain + mirrored[:, :, ::-1]) / 2
