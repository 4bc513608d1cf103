"""Build, compile and load segmentation models by name, with parameter checking."""

from __future__ import annotations

import difflib
import inspect
import logging
from pathlib import Path
from typing import Any

import keras

from lungseg.errors import ConfigError, ModelNotFoundError
from lungseg.models import losses as _losses
from lungseg.models import metrics as _metrics
from lungseg.models.deeplabv3plus import build_deeplabv3plus
from lungseg.models.unet import build_unet

logger = logging.getLogger(__name__)

BUILDERS = {"unet": build_unet, "deeplabv3plus": build_deeplabv3plus}
ARCHITECTURES = tuple(BUILDERS)


def allowed_params(architecture: str) -> tuple[str, ...]:
    """The keyword parameters ``build_model`` accepts for ``architecture`` (besides ``image_size``)."""
    builder = _builder(architecture)
    return tuple(p.name for p in inspect.signature(builder).parameters.values()
                 if p.name != "image_size" and p.kind is not inspect.Parameter.KEYWORD_ONLY)


def _builder(architecture: str):
    key = str(architecture).strip().lower().replace("-", "").replace("_", "").replace("+", "plus")
    if key not in BUILDERS:
        raise ConfigError(f"unknown architecture {architecture!r}; allowed: {', '.join(ARCHITECTURES)}")
    return BUILDERS[key]


def build_model(architecture: str, image_size: int, params: dict[str, Any] | None = None,
                channels: int = 1) -> keras.Model:
    """Build ``'unet'`` or ``'deeplabv3plus'`` for ``(image_size, image_size, channels)`` inputs
    (``channels``: the preprocessing's ``context``, 1 for plain slices).

    ``params`` are the builder's keyword arguments (see :func:`allowed_params`).

    Raises:
        ConfigError: unknown architecture, unknown or mistyped parameter key (named, with the
            allowed keys and the closest match), or a value the builder refuses (e.g. a size that
            does not suit the architecture).
    """
    builder = _builder(architecture)
    params = dict(params or {})
    allowed = allowed_params(architecture)
    for key in params:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"unknown parameter {key!r} for architecture {architecture!r}{hint}; allowed: {', '.join(allowed)}"
            )
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ConfigError(f"image_size must be a positive integer, got {image_size!r}")
    return builder(image_size=image_size, **params, channels=int(channels))


def compile_model(model: keras.Model, loss: str = "bce", learning_rate: float = 5e-4,
                  threshold: float = 0.5, **compile_kwargs: Any) -> keras.Model:
    """Compile with Adam, the named loss (one of ``losses.LOSS_NAMES``) and Dice + IoU metrics.

    ``threshold`` binarises predictions for the metrics. ``compile_kwargs`` go to
    ``model.compile`` (e.g. ``run_eagerly``, ``jit_compile``, ``steps_per_execution``).
    Returns the same model, for chaining.
    """
    schedule = isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule)
    if not schedule and (isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float))
                         or learning_rate <= 0):
        raise ConfigError(f"learning_rate must be a positive number or a schedule, got {learning_rate!r}")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate if schedule else float(learning_rate)),
        loss=_losses.get_loss(loss),
        metrics=_metrics.get_metrics(threshold),
        **compile_kwargs,
    )
    return model


def custom_objects() -> dict[str, Any]:
    """Every lungseg object a saved model may reference (they are also registered globally)."""
    return {
        "bce": _losses.bce,
        "dice_loss": _losses.dice_loss,
        "bce_dice_loss": _losses.bce_dice_loss,
        "BCELoss": _losses.BCELoss,
        "DiceLoss": _losses.DiceLoss,
        "BCEDiceLoss": _losses.BCEDiceLoss,
        "tversky_loss": _losses.tversky_loss,
        "focal_loss": _losses.focal_loss,
        "structure_loss": _losses.structure_loss,
        "BCETverskyLoss": _losses.BCETverskyLoss,
        "FocalDiceLoss": _losses.FocalDiceLoss,
        "StructureLoss": _losses.StructureLoss,
        "DiceCoefficient": _metrics.DiceCoefficient,
        "IoUScore": _metrics.IoUScore,
    }


def load_model(path: str | Path, compile: bool = True) -> keras.Model:  # noqa: A002 - keras' own name
    """Load a ``.keras`` model with ``safe_mode=True`` and the lungseg objects registered.

    Raises:
        ModelNotFoundError: no file at ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"file {str(path)!r}: no such model file")
    return keras.saving.load_model(path, custom_objects=custom_objects(), compile=compile, safe_mode=True)
