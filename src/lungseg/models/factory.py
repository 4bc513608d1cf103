"""Build, compile and load segmentation models by name, with parameter checking."""

from __future__ import annotations

import difflib
import inspect
import logging
import zipfile
from pathlib import Path
from typing import Any

import keras

from lungseg.errors import ConfigError, InputError, ModelNotFoundError
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


#: A ``.keras`` archive's JSON members (config.json, the layer graph: about 60 KB for a U-Net, under 1 MB
#: for DeepLabV3+; metadata.json) are read whole into memory by Keras: larger ones are refused unread.
MAX_MODEL_JSON_BYTES = 16 * 2**20
#: Any other member (model.weights.h5: 0.2 GB for DeepLabV3+ on ResNet50), as its zip entry declares it.
MAX_MODEL_MEMBER_BYTES = 4 * 2**30


def check_model_archive(path: str | Path) -> None:
    """Refuse a ``.keras`` file that is not a complete zip, or whose members declare more than
    :data:`MAX_MODEL_JSON_BYTES` (JSON) / :data:`MAX_MODEL_MEMBER_BYTES` (others) uncompressed. zipfile
    never reads past a member's declared size, so the check bounds what loading can inflate."""
    try:
        with zipfile.ZipFile(path) as zf:
            members = zf.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"file {str(path)!r}: not a complete .keras model archive (truncated or corrupted?): "
                         f"{exc}") from exc
    for info in members:
        limit = MAX_MODEL_JSON_BYTES if info.filename.endswith(".json") else MAX_MODEL_MEMBER_BYTES
        if info.file_size > limit:
            raise InputError(
                f"file {str(path)!r}: model member {info.filename!r} inflates to {info.file_size / 2**20:,.0f} MB "
                f"(from {info.compress_size / 2**20:,.1f} MB), over the limit of {limit / 2**20:,.0f} MB for "
                f"{'a JSON member' if limit == MAX_MODEL_JSON_BYTES else 'one member'} "
                "(lungseg.models.factory); refused before loading")


def load_model(path: str | Path, compile: bool = True) -> keras.Model:  # noqa: A002 - keras' own name
    """Load a ``.keras`` model with ``safe_mode=True`` and the lungseg objects registered, after
    :func:`check_model_archive`.

    Raises:
        ModelNotFoundError: no file at ``path``.
        InputError: a truncated archive, or a member over the size limits.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"file {str(path)!r}: no such model file")
    if path.suffix == ".keras":
        check_model_archive(path)
    return keras.saving.load_model(path, custom_objects=custom_objects(), compile=compile, safe_mode=True)
