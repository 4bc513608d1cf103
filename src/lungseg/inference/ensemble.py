"""Fold ensembles: the models of a cross-validation used together at inference.

A folder written by a ``<variant>_cv`` pipeline (``fold_0.keras`` + ``fold_0.json``, ...) becomes
one :class:`LoadedModel` whose model averages the members' probabilities. Every member carries its
own config; they must agree on everything that shapes the input or the decision (task, image size,
crop, window, CLAHE, threshold, architecture...), or the folder is refused, naming the key and the files.
How each member was built (:data:`RECIPE_KEYS`: the network's size, the loss, the training precision) may
differ: an ensemble of two recipes (issue #25's item 10) averages models that read the same input.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from lungseg.errors import ConfigError, ModelNotFoundError
from lungseg.inference.loaded_model import LoadedModel, check_config, check_model_input
from lungseg.inference.wrappers import EnsembleModel
from lungseg.layout import cv_name, variant_name

logger = logging.getLogger(__name__)

#: Config keys that describe how one member was trained, not how its input is prepared.
PER_MEMBER_KEYS = frozenset({"train_cases", "val_cases", "run_fingerprint", "trained_at", "fold", "dataset",
                             "environment", "recorded_score"})
#: Keys of how a member was built that may differ between members: the ensemble's config keeps the value
#: when they agree, else the list of the members' distinct values (in the members' order).
RECIPE_KEYS = ("model_params", "loss", "precision")
#: Per-member keys the ensemble's config keeps: the members' value when they agree, else their values
#: joined with "+" (the provenance of the ensemble, :mod:`lungseg.inference.provenance`).
SHARED_PROVENANCE_KEYS = ("dataset", "environment")


def is_fold_folder(path: str | Path) -> bool:
    """True for a folder of a cross-validation's fold models (``fold_*.keras`` with their ``.json``)."""
    path = Path(path)
    return path.is_dir() and any(path.glob("fold_*.keras"))


def ensemble_config(configs: dict[str, dict], source: str) -> dict:
    """The shared config of the members; refuses members whose preprocessing or decision differ."""
    names = sorted(configs)
    first = configs[names[0]]
    for name in names[1:]:
        keys = (set(first) | set(configs[name])) - PER_MEMBER_KEYS - set(RECIPE_KEYS)
        differ = sorted(k for k in keys if first.get(k) != configs[name].get(k))
        if differ:
            raise ConfigError(
                f"folder {source!r}: models {names[0]} and {name} were prepared differently "
                f"({', '.join(f'{k}: {first.get(k)!r} vs {configs[name].get(k)!r}' for k in differ[:3])}); "
                f"an ensemble needs members that read one input and decide alike"
            )
    shared = {k: v for k, v in first.items() if k not in PER_MEMBER_KEYS}
    for key in RECIPE_KEYS:
        values = []
        for n in names:
            if key in configs[n] and configs[n][key] not in values:
                values.append(configs[n][key])
        if len(values) > 1:
            shared[key] = values
    for key in SHARED_PROVENANCE_KEYS:
        values = sorted({str(configs[n][key]) for n in names if configs[n].get(key) is not None})
        if values:
            shared[key] = "+".join(values)
    scores = [configs[n].get("recorded_score") for n in names]
    if scores[0] is not None and all(sc == scores[0] for sc in scores):  # a bundle's ensemble score
        shared["recorded_score"] = scores[0]
    trained = sorted(str(configs[n]["trained_at"]) for n in names if configs[n].get("trained_at"))
    if trained:
        shared["trained_at"] = trained[-1]  # the newest member's
    return {**shared, "ensemble_members": names, "ensemble_size": len(names)}


def load_fold_ensemble(folder: str | Path, task: str) -> LoadedModel:
    """Load every fold model of ``folder`` as one averaging model, with the members' shared config."""
    from lungseg.models import load_model

    folder = Path(folder)
    files = sorted(folder.glob("fold_*.keras"))
    if not files:
        raise ModelNotFoundError(f"folder {str(folder)!r}: no fold models (fold_*.keras); run a <variant>_cv pipeline")
    configs = {}
    for path in files:
        config_path = path.with_suffix(".json")
        try:
            configs[path.stem] = check_config(json.loads(config_path.read_text()), task, str(path))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"file {str(config_path)!r}: missing or unreadable fold config ({exc})") from exc
    config = ensemble_config(configs, str(folder))
    members = [load_model(path, compile=False) for path in files]
    for path, member in zip(files, members):  # a member of another size than the shared config: exit 2, by name
        check_model_input(member, config, str(path))
    logger.info("%s model: ensemble of %d fold models from %s (image_size %s)", task, len(members), folder,
                config["image_size"])
    return LoadedModel(model=EnsembleModel(members), config=config, source=str(folder))


def _folder_task(folder: Path) -> str | None:
    try:
        return json.loads(next(iter(sorted(folder.glob("fold_*.json")))).read_text()).get("task")
    except (StopIteration, OSError, ValueError):
        return None


def fold_folder_for(models: str | Path, task: str) -> Path:
    """The fold folder of ``task`` named by ``lungseg predict --models``.

    ``models`` is a cross-validation's fold folder (``data/06_models/infection_unet_cv``), or a folder
    holding such folders (``data/06_models``). For a task the given fold folder does not serve, its
    siblings are searched too, so ``--models data/06_models/infection_unet_cv`` finds
    ``lung_unet_cv`` beside it. Raises :class:`ModelNotFoundError` naming the folder and the command
    that trains the missing task, or :class:`ConfigError` when several would fit.
    """
    path = Path(models).expanduser()
    if is_fold_folder(path) and _folder_task(path) == task:
        return path
    places = [path, path.parent] if is_fold_folder(path) else [path]
    for place in places:
        found = sorted(p for p in place.glob(cv_name(f"{task}_*")) if is_fold_folder(p) and _folder_task(p) == task)
        preferred = [p for p in found if p.name == cv_name(variant_name(task, "unet"))]
        if len(found) == 1 or preferred:
            return (preferred or found)[0]
        if found:
            raise ConfigError(f"folder {str(place)!r} holds several {task} cross-validations "
                              f"({', '.join(p.name for p in found)}); name one with --{task}-model")
    raise ModelNotFoundError(f"folder {str(path)!r}: no {task} fold models found; train them with "
                             f"`kedro run --pipelines={cv_name(variant_name(task, 'unet'))}`")
