"""A trained model with its preprocessing config, and the checks of that config.

The base of model loading: :mod:`lungseg.inference.models` (files, versions, MLflow URIs) and
:mod:`lungseg.inference.ensemble` (fold folders) both build a :class:`LoadedModel` whose config went
through :func:`check_config`. It imports nothing of ``lungseg.inference``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lungseg.errors import ConfigError

MODEL_FILE = "model.keras"
CONFIG_FILE = "model_config.json"
#: Defaults for config keys that older configs may lack.
CONFIG_DEFAULTS: dict[str, Any] = {"threshold": 0.5}


@dataclass
class LoadedModel:
    """A trained Keras model with its preprocessing config.

    Attributes:
        model: the ``keras.Model`` (float32 (N, S, S, 1) in [0, 1] -> sigmoid (N, S, S, 1)).
        config: the preprocessing config saved with it (``task``, ``image_size``, ``crop_mode``,
            ``window``, ``clahe_*``, ``crop_margin``, ``threshold``...).
        source: where it came from (a path or an MLflow URI), for messages and reports.
    """

    model: Any
    config: dict
    source: str

    @property
    def task(self) -> str | None:
        return self.config.get("task")

    @property
    def image_size(self) -> int:
        return int(self.config["image_size"])

    @property
    def threshold(self) -> float:
        return float(self.config.get("threshold", 0.5))


def training_hint(task: str) -> str:
    """The commands that train a model of ``task`` (named in every 'model not found' message)."""
    return (f"train one with `kedro run --pipelines={task}_unet` on the real dataset "
            f"(add --env=demo for the synthetic one), or `make demo` for the small demo models")


def read_config(path: str | Path, task: str | None = None, source: str | None = None) -> dict:
    """Read and check a model's preprocessing config."""
    path = Path(path)
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"file {str(path)!r}: unreadable model config ({exc})") from exc
    return check_config(config, task, source or str(path))


def check_config(config: Any, task: str | None, source: str) -> dict:
    """Validate a config dict (``image_size`` present, task matching) and fill defaults."""
    if not isinstance(config, dict):
        raise ConfigError(f"model {source!r}: the model config is not a JSON object")
    if "image_size" not in config:
        raise ConfigError(f"model {source!r}: the model config has no 'image_size'")
    if task is not None and config.get("task") not in (None, task):
        raise ConfigError(
            f"model {source!r} was trained for the {config.get('task')!r} task but was given as the {task} model"
        )
    out = {**CONFIG_DEFAULTS, **config}
    if task is not None:
        out.setdefault("task", task)
    if out.get("task") == "lung" and out.get("crop_mode", "body") != "body":
        raise ConfigError(
            f"model {source!r} is a lung model trained on slices cropped to the ground-truth lungs "
            f"(preprocessing.lung_crop_source: lung_mask, the paper's protocol); a new CT has no lung mask, "
            f"so it cannot be used for inference. Retrain it with lung_crop_source: body"
        )
    return out


def check_model_input(model: Any, config: dict, source: str) -> None:
    """Check that the model takes (N, S, S, C) images of the config's size and context (C slices)."""
    try:
        shape = tuple(model.inputs[0].shape)
    except (AttributeError, IndexError, TypeError):
        return
    size = int(config["image_size"])
    if len(shape) == 4 and shape[1] not in (None, size):
        raise ConfigError(
            f"model {source!r} takes {shape[1]}x{shape[2]} images but its config says image_size {size}"
        )
    context = int(config.get("context", 1))
    if len(shape) == 4 and shape[3] not in (None, context):
        raise ConfigError(
            f"model {source!r} takes {shape[3]} channel(s) but its config says context {context} "
            "(the number of neighbouring slices stacked as channels)"
        )
