"""Find and load trained models together with the preprocessing config that travels with each.

Layout written by the training pipeline (Kedro versioned datasets)::

    data/06_models/<variant>/model.keras/<version>/model.keras
    data/06_models/<variant>/model_config.json/<version>/model_config.json

where ``variant`` is ``<task>_<architecture>`` and ``version`` is Kedro's sortable timestamp. A plain
``<variant>/model.keras`` file next to ``<variant>/model_config.json`` (an unversioned catalog) is found
too. A model given explicitly (``--lung-model X.keras``) needs its config as ``model_config.json`` in the
same folder or as ``X.json``. MLflow URIs (``runs:/<run_id>/<path>``, ``models:/<name>/<version>``)
are loaded with ``mlflow.keras`` and their config is read from the run's ``model_config.json``
artifact or from the logged model's metadata.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from pathlib import Path
from typing import Any

from lungseg.errors import ConfigError, InputError, LungsegError, ModelNotFoundError
from lungseg.inference.ensemble import is_fold_folder, load_fold_ensemble
from lungseg.inference.loaded_model import (  # noqa: F401  (LoadedModel ... are imported from here too)
    CONFIG_DEFAULTS,
    CONFIG_FILE,
    MODEL_FILE,
    LoadedModel,
    check_config,
    check_model_input,
    read_config,
    training_hint,
)
from lungseg.layout import (
    ARCHITECTURES,
    MODELS_DIR,
    TASKS,
    check_task,
    is_cv_name,
    is_model_uri,
    split_variant,
    strip_cv,
)

logger = logging.getLogger(__name__)

_KEDRO_VERSION_FORMAT = "%Y-%m-%dT%H.%M.%S.%fZ"


def _version_of(path: Path) -> str:
    """Kedro's version string of a versioned file, or the file's mtime in the same format."""
    parent = path.parent
    if parent.parent.name == path.name:  # <name>/<version>/<name>
        return parent.name
    stamp = _dt.datetime.fromtimestamp(path.stat().st_mtime, tz=_dt.timezone.utc)
    return stamp.strftime(_KEDRO_VERSION_FORMAT)[:-4] + "Z"


def _variant_models(variant_dir: Path) -> list[Path]:
    """Every model file of one variant folder (versioned or plain)."""
    target = variant_dir / MODEL_FILE
    if target.is_dir():
        return [p / MODEL_FILE for p in target.iterdir() if (p / MODEL_FILE).is_file()]
    if target.is_file():
        return [target]
    return []


def list_trained_models(models_dir: str | Path = MODELS_DIR) -> dict[str, list[dict]]:
    """The trained models under ``models_dir``, per task, newest version first.

    Returns:
        ``{"lung": [...], "infection": [...]}``; each entry is ``{"variant", "task", "architecture",
        "version", "path", "ensemble"}`` with ``path`` the ``model.keras`` file, or, for a
        cross-validation's fold models (``<variant>_cv/``, ``ensemble`` True), their folder. Single
        models come first, newest first; fold ensembles after them. Both keys are always present.
    """
    models_dir = Path(models_dir)
    found: dict[str, list[dict]] = {task: [] for task in TASKS}
    if not models_dir.is_dir():
        return found
    for variant_dir in sorted(p for p in models_dir.iterdir() if p.is_dir()):
        ensemble = is_cv_name(variant_dir.name) and is_fold_folder(variant_dir)
        parsed = split_variant(strip_cv(variant_dir.name) if ensemble else variant_dir.name)
        if parsed is None:
            continue
        task, architecture = parsed
        paths = [max(variant_dir.glob("fold_*.keras"), key=_version_of)] if ensemble else _variant_models(variant_dir)
        for path in paths:
            found[task].append(
                {
                    "variant": variant_dir.name,
                    "task": task,
                    "architecture": architecture,
                    "version": _version_of(path),
                    "path": variant_dir if ensemble else path,
                    "ensemble": ensemble,
                }
            )
    for entries in found.values():
        entries.sort(key=lambda e: (not e["ensemble"], e["version"], e["architecture"] == "unet"), reverse=True)
    return found


def find_latest_model(
    task: str, models_dir: str | Path = MODELS_DIR, architecture: str | None = None
) -> Path:
    """The newest trained ``model.keras`` of ``task`` (of any architecture unless one is given).

    Raises:
        ModelNotFoundError: none found; the message names the command that trains one.
    """
    check_task(task)
    entries = [e for e in list_trained_models(models_dir)[task] if not e["ensemble"]]  # ensembles: --models
    if architecture is not None:
        entries = [e for e in entries if e["architecture"] == architecture]
    if not entries:
        what = f"{task}_{architecture}" if architecture else f"{task}"
        raise ModelNotFoundError(
            f"no trained {what} model in {str(models_dir)!r} (expected "
            f"<variant>/{MODEL_FILE}/<version>/{MODEL_FILE}); {training_hint(task)}, "
            "or pass a model with --lung-model / --infection-model"
        )
    return Path(entries[0]["path"])


def config_path_for(model_path: str | Path) -> Path:
    """Where the preprocessing config of a model file is.

    Looked for, in order: the same Kedro version of ``<variant>/model_config.json``; the newest such
    version not newer than the model's; ``model_config.json`` in the model's folder; ``<stem>.json``.

    Raises:
        ModelNotFoundError: no config found (the model cannot be used without it).
    """
    model_path = Path(model_path)
    candidates: list[Path] = []
    parent = model_path.parent
    if parent.parent.name == model_path.name:  # versioned: <variant>/model.keras/<version>/model.keras
        version = parent.name
        versions_dir = parent.parent.parent / CONFIG_FILE
        candidates.append(versions_dir / version / CONFIG_FILE)
        if versions_dir.is_dir():
            older = sorted(
                (p.name for p in versions_dir.iterdir() if (p / CONFIG_FILE).is_file() and p.name <= version),
                reverse=True,
            )
            candidates.extend(versions_dir / v / CONFIG_FILE for v in older)
        candidates.append(parent.parent.parent / CONFIG_FILE)
    candidates.append(parent / CONFIG_FILE)
    candidates.append(model_path.with_suffix(".json"))
    for i, candidate in enumerate(candidates):
        if candidate.is_file():
            if i > 0 and parent.parent.name == model_path.name and candidate.parent.name != parent.name:
                logger.warning("no config of the same version as %s; using %s", model_path, candidate)
            return candidate
    raise ModelNotFoundError(
        f"file {str(model_path)!r}: no preprocessing config found with the model (looked for "
        f"{CONFIG_FILE} in its folder and {model_path.with_suffix('.json').name}); the config saved by "
        "training must travel with the model"
    )


def _resolve_path(spec: Path) -> Path:
    """A model file from a path given by the user (a file, a versioned folder or a variant folder)."""
    if spec.is_file():
        return spec
    if spec.is_dir():
        versions = [p / spec.name for p in spec.iterdir() if (p / spec.name).is_file()] if spec.name == MODEL_FILE else []
        versions += _variant_models(spec)
        if versions:
            return max(versions, key=_version_of)
    raise ModelNotFoundError(f"file {str(spec)!r}: no such model file")


def load_model_spec(
    spec: str | Path | None, task: str, models_dir: str | Path = MODELS_DIR
) -> LoadedModel:
    """Load the model of ``task`` given by ``spec`` with its preprocessing config.

    Args:
        spec: None (the newest trained model of ``task`` in ``models_dir``), a path to a ``.keras``
            file (or to a variant / versioned folder), a folder of cross-validation fold models (used
            as an ensemble, see :mod:`lungseg.inference.ensemble`), or an MLflow model URI
            (``runs:/<run_id>/<artifact_path>``, ``models:/<name>/<version or @alias>``).
        task: ``"lung"`` or ``"infection"``.
        models_dir: where trained models are looked for when ``spec`` is None.

    Raises:
        ModelNotFoundError: no such model, or no config with it; names the training command.
        ConfigError: the config is unusable or belongs to the other task.
        InputError: the model file cannot be loaded.
    """
    check_task(task)
    if is_model_uri(spec):
        return _load_mlflow(str(spec), task)
    if spec is not None and str(spec).strip():
        if is_fold_folder(Path(spec).expanduser()):
            return load_fold_ensemble(Path(spec).expanduser(), task)
    if spec is None or str(spec).strip() == "":
        path = find_latest_model(task, models_dir)
    else:
        try:
            path = _resolve_path(Path(spec).expanduser())
        except ModelNotFoundError as exc:
            raise ModelNotFoundError(f"{exc}; {training_hint(task)}") from None
    config = read_config(config_path_for(path), task, source=str(path))
    from lungseg.models import load_model

    try:
        model = load_model(path)
    except LungsegError:  # a truncated archive, a member over the size limits: already names the file
        raise
    except Exception as exc:  # keras raises ValueError, OSError, zipfile errors...
        raise InputError(f"file {str(path)!r}: cannot load the {task} model ({type(exc).__name__}: {exc})") from exc
    check_model_input(model, config, str(path))
    logger.info("%s model: %s (image_size %s)", task, path, config["image_size"])
    return LoadedModel(model=model, config=config, source=str(path))


# ------------------------------------------------------------------------------------------- MLflow


def _load_mlflow(uri: str, task: str) -> LoadedModel:
    """Load an MLflow-logged Keras model and its preprocessing config."""
    try:
        import mlflow
        import mlflow.keras
    except ImportError as exc:  # pragma: no cover - mlflow is a dependency
        raise ModelNotFoundError(f"model {uri!r}: MLflow is not installed") from exc
    import lungseg.models  # noqa: F401  (registers the custom objects before deserialising)

    try:
        info = mlflow.models.get_model_info(uri)
    except Exception as exc:
        raise ModelNotFoundError(
            f"model {uri!r}: not found in the MLflow tracking store {mlflow.get_tracking_uri()!r} "
            f"({type(exc).__name__}: {exc}); {training_hint(task)}"
        ) from exc
    config = _mlflow_config(uri, info, task)
    if config is None:
        raise ModelNotFoundError(
            f"model {uri!r}: no preprocessing config with it (neither a {CONFIG_FILE} artifact in run "
            f"{info.run_id!r} nor 'model_config' in the model's metadata)"
        )
    config = check_config(config, task, uri)
    try:
        model = mlflow.keras.load_model(uri)
    except Exception as exc:
        raise InputError(f"model {uri!r}: cannot load the {task} model ({type(exc).__name__}: {exc})") from exc
    check_model_input(model, config, uri)
    logger.info("%s model: %s (image_size %s)", task, uri, config["image_size"])
    return LoadedModel(model=model, config=config, source=uri)


def _mlflow_model_name(uri: str, info: Any) -> str | None:
    """The logged model's name: ``runs:/<id>/<name>`` or the ModelInfo's ``name``."""
    if uri.lower().startswith("runs:/"):
        parts = uri[len("runs:/") :].strip("/").split("/", 1)
        if len(parts) == 2 and parts[1]:
            return parts[1].rstrip("/")
    name = getattr(info, "name", None)
    return str(name) if name else None


def _mlflow_config(uri: str, info: Any, task: str | None = None) -> dict | None:
    """The config from the model's metadata, else from a ``model_config.json`` artifact of its run.

    Run artifacts looked for: ``model_config.json``; ``<name>/model_config.json`` and, for a model
    logged as ``<variant>_model`` (the training pipeline's naming), ``<variant>/model_config.json``.
    """
    import mlflow

    metadata = getattr(info, "metadata", None) or {}
    if isinstance(metadata.get("model_config"), dict):
        return dict(metadata["model_config"])
    if "image_size" in metadata:
        return dict(metadata)
    run_id = getattr(info, "run_id", None)
    if not run_id:
        return None
    candidates = [CONFIG_FILE]
    name = _mlflow_model_name(uri, info)
    if name:
        candidates.append(f"{name}/{CONFIG_FILE}")
        if name.endswith("_model"):
            candidates.append(f"{name[: -len('_model')]}/{CONFIG_FILE}")
    if task:
        candidates += [f"{task}_{arch}/{CONFIG_FILE}" for arch in ARCHITECTURES]
    for artifact in dict.fromkeys(candidates):
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact)
        except Exception:
            continue
        try:
            config = json.loads(Path(local).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"model {uri!r}: unreadable {artifact} in run {run_id!r} ({exc})") from exc
        if not isinstance(config, dict) or task is None or config.get("task") in (None, task):
            return config
    return None
