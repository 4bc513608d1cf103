"""The folder a ``lungseg-combined`` model carries, and loading it back from a folder or an MLflow URI.

Layout (the pyfunc model's ``bundle`` artifact)::

    bundle/
      settings.json               batch_size, lung_min_ratio, lung_fill_holes, flip_tta, guard, limits, sources
      lung/model.keras            a single model and its model_config.json,
      lung/model_config.json      or fold_<k>.keras + fold_<k>.json: a fold ensemble
      infection/...               the same for the infection model

Each task's folder is loaded by :func:`lungseg.inference.models.load_model_spec`, the loader of
``lungseg predict``, so the served model prepares slices exactly as the CLI does.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lungseg.errors import ConfigError, ModelNotFoundError
from lungseg.inference.loaded_model import LoadedModel
from lungseg.inference.models import load_model_spec
from lungseg.inference.segment import Segmenter
from lungseg.inference.settings import InferenceSettings
from lungseg.layout import TASKS, is_model_uri

logger = logging.getLogger(__name__)

BUNDLE_ARTIFACT = "bundle"
SETTINGS_FILE = "settings.json"
#: The settings a bundle holds: the ``inference`` parameters that change what the Segmenter returns (the
#: registry node takes these from the run's parameters; the rest concern batch runs of the pipeline).
#: ``precision`` is the served model's default prediction precision (the pyfunc model applies it; a
#: bundle written before it existed predicts in float32); ``lungseg predict --model`` uses ``--precision``.
SETTINGS_KEYS = ("batch_size", "lung_min_ratio", "lung_fill_holes", "flip_tta", "guard", "limits", "precision")
#: Stored when given (a bundle without them takes InferenceSettings' defaults).
SETTINGS_OPTIONAL_KEYS = ("infection_margin_mm", "infection_min_lesion_mm3")


@dataclass
class CombinedModels:
    """The two models of a bundle (``infection`` None when it holds a lung model only) and its settings."""

    lung: Any
    infection: Any
    settings: dict
    source: str

    def segmenter(self, **overrides):
        """The :class:`~lungseg.inference.segment.Segmenter` of the bundle's models and settings."""
        # a bundle written before lung_fill_holes existed filled every hole of the lungs
        stored = {"lung_fill_holes": True, **self.settings}
        settings = InferenceSettings.from_params(stored, f"settings of {self.source}", **overrides)
        return Segmenter.from_models(self.lung, self.infection, settings)


def _copy_model(model: Any, dest: Path) -> str:
    """Copy one task's model into ``dest``: ``model`` is a ``LoadedModel`` (from a file or a fold folder),
    a ``(keras_model, config)`` pair trained in this run, or the folds of a cross-validation
    (``{fold_<k>: (keras_model, config)}``). Returns its source, in words."""
    dest.mkdir(parents=True)
    if isinstance(model, dict):  # a cross-validation's folds {fold_<k>: (keras_model, config)}
        for name, (keras_model, config) in sorted(model.items()):
            keras_model.save(dest / f"{name}.keras")
            (dest / f"{name}.json").write_text(json.dumps(config, indent=2, default=str))
        first = next(iter(model.values()))[1]
        return f"{len(model)} fold models trained in this run ({first.get('task')}_{first.get('architecture')})"
    if isinstance(model, tuple):
        keras_model, config = model
        keras_model.save(dest / "model.keras")
        (dest / "model_config.json").write_text(json.dumps(config, indent=2, default=str))
        return f"trained in this run ({config.get('task')}_{config.get('architecture')})"
    source = Path(str(model.source))
    score = _recorded_score(source)
    if source.is_dir():  # a fold ensemble: every fold_<k>.keras with its fold_<k>.json
        for f in sorted(source.glob("fold_*")):
            if f.suffix == ".keras":
                shutil.copy2(f, dest / f.name)
            elif f.suffix == ".json":
                (dest / f.name).write_text(json.dumps({**json.loads(f.read_text()), **score}, indent=2, default=str))
        return str(source)
    if not source.is_file():
        raise ModelNotFoundError(f"model {str(source)!r}: only a model file or a fold folder can be bundled")
    shutil.copy2(source, dest / "model.keras")
    (dest / "model_config.json").write_text(json.dumps({**model.config, **score}, indent=2, default=str))
    return str(source)


def _recorded_score(source: Path) -> dict:
    """``{"recorded_score": {"value", "name"}}`` for the bundled config: the score recorded for the model in
    its reports (:func:`lungseg.inference.choice.recorded_score`), so that the served model's reports name
    the figure it was scored with (:mod:`lungseg.inference.provenance`); {} when none was recorded."""
    from lungseg.inference.choice import recorded_score

    value, name = recorded_score(source)
    return {"recorded_score": {"value": value, "name": name}} if value is not None else {}


def write_bundle(dest: str | Path, lung: Any, infection: Any, settings: dict[str, Any]) -> Path:
    """Write a bundle folder at ``dest`` (which must not exist).

    Args:
        lung, infection: each a ``LoadedModel``, a ``(keras_model, config)`` pair or a dict of folds
            (``infection`` may be None).
        settings: ``batch_size``, ``lung_min_ratio``, ``lung_fill_holes``, ``flip_tta``, ``guard``, ``limits`` and
            ``precision`` (the ``inference`` parameters), stored so that the served model needs no project checkout.
    """
    missing = [k for k in SETTINGS_KEYS if k not in settings]
    if missing:
        raise ConfigError(f"the combined model's settings lack {missing} (parameters 'inference.*')")
    dest = Path(dest)
    dest.mkdir(parents=True)
    sources = {"lung": _copy_model(lung, dest / "lung")}
    if infection is not None:
        sources["infection"] = _copy_model(infection, dest / "infection")
    saved = ({k: settings[k] for k in SETTINGS_KEYS} | {k: settings[k] for k in SETTINGS_OPTIONAL_KEYS if k in settings}
             | {"sources": sources})
    (dest / SETTINGS_FILE).write_text(json.dumps(saved, indent=2, default=str))
    return dest


def load_bundle(folder: str | Path, source: str | None = None, tasks=("lung", "infection")) -> CombinedModels:
    """Load a bundle folder (see the module docstring) with the CLI's own model loader."""
    folder = Path(folder)
    where = source or str(folder)
    try:
        settings = json.loads((folder / SETTINGS_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"model {where!r}: not a lungseg combined model (no readable {SETTINGS_FILE}: {exc})"
        ) from exc
    lung = load_model_spec(_task_spec(folder / "lung"), "lung")
    infection = None
    if "infection" in tasks and (folder / "infection").is_dir():
        infection = load_model_spec(_task_spec(folder / "infection"), "infection")
    elif "infection" in tasks:
        raise ModelNotFoundError(f"model {where!r} holds no infection model; use --tasks lung")
    for loaded, task in ((lung, "lung"), (infection, "infection")):
        if loaded is not None:
            loaded.source = f"{where} ({task}: {settings.get('sources', {}).get(task, 'bundled')})"
    return CombinedModels(lung, infection, settings, where)


def _task_spec(folder: Path) -> Path:
    return folder / "model.keras" if (folder / "model.keras").is_file() else folder


def local_bundle(uri_or_folder: str | Path) -> Path:
    """The bundle folder of a combined model given as an MLflow URI (``models:/lungseg-combined/3``,
    ``models:/lungseg-combined@champion``, ``runs:/<id>/lungseg_combined``), as the pyfunc model's own
    folder (with its ``MLmodel``), or as a bundle folder."""
    spec = str(uri_or_folder)
    if is_model_uri(spec):
        import mlflow

        try:
            folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=spec))
        except Exception as exc:
            raise ModelNotFoundError(
                f"model {spec!r}: not found in the MLflow store {mlflow.get_tracking_uri()!r} ({type(exc).__name__}: "
                f"{exc}); register one with `kedro run --pipelines=system --params=registry.register=true`"
            ) from exc
    else:
        folder = Path(spec).expanduser()
    if (folder / "MLmodel").is_file():
        import yaml

        flavor = (yaml.safe_load((folder / "MLmodel").read_text()) or {}).get("flavors", {}).get("python_function", {})
        artifact = (flavor.get("artifacts") or {}).get(BUNDLE_ARTIFACT, {})
        if not artifact.get("path"):
            raise ModelNotFoundError(f"model {spec!r} is an MLflow model but not a lungseg combined model")
        folder = folder / artifact["path"]
    if not (folder / SETTINGS_FILE).is_file():
        raise ModelNotFoundError(
            f"model {spec!r}: not a lungseg combined model (no {SETTINGS_FILE} in {str(folder)!r})"
        )
    return folder


def load_combined(uri_or_folder: str | Path, tasks=("lung", "infection")) -> CombinedModels:
    """Load a ``lungseg-combined`` model from the MLflow registry (or a folder): both models and the settings."""
    return load_bundle(local_bundle(uri_or_folder), str(uri_or_folder), tasks)


def load_combined_models(spec: str | Path, tasks=TASKS) -> tuple[LoadedModel, LoadedModel | None]:
    """The lung and infection models of a ``lungseg-combined`` model: an MLflow URI
    (``models:/lungseg-combined/<version>``, ``models:/lungseg-combined@<alias>``, ``runs:/<id>/lungseg_combined``)
    or its folder. ``lungseg predict --model`` calls it. Raises :class:`ModelNotFoundError` naming the store."""
    combined = load_combined(spec, tuple(tasks))
    return combined.lung, combined.infection


def load_segmenter(spec: str | Path, **overrides: Any) -> Segmenter:
    """A :class:`~lungseg.inference.segment.Segmenter` for a ``lungseg-combined`` model (URI or folder),
    with the inference settings stored in it (``overrides``: e.g. ``flip_tta=True``, ``batch_size=8``):
    the same code and settings as ``mlflow models serve`` runs."""
    return load_combined(spec).segmenter(**overrides)
