"""Which trained model to use: the finished models of each task, ranked by their recorded score.

A model is **finished** when its preprocessing config was written beside it: training writes the
config after the model, so a model without one is still being trained (or its run crashed) and is
never offered. For a versioned model (``<variant>/model.keras/<version>/model.keras``) the config
must be of the same version; for a cross-validation's fold models (``<variant>_cv/fold_k.keras``)
every fold needs its ``fold_k.json``.

A model's **score** is the one its evaluation recorded in the reports folder (``data/08_reporting``
beside ``data/06_models``), the case Dice on held-out patients:

* a single model: ``<variant>/metrics.json`` ``case_dice`` (validation patients). The file holds the
  evaluation of the newest finished model of the variant, so only that version gets it, and only
  when the file is not older than the model;
* fold models: ``<variant>_cv/cv_summary.json`` ``case_dice_oof_mean`` (out of fold), when the file
  is not older than the newest fold.

Scored models come first, best first; models without a recorded score follow, newest first.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from lungseg.layout import MODELS_DIR, TASKS

logger = logging.getLogger(__name__)

#: The reports folder, relative to the models folder's parent (``data/06_models`` -> ``data/08_reporting``).
REPORTS_FOLDER = "08_reporting"
#: (file, key, what the score is) for a single model and for fold models.
SINGLE_SCORE = ("metrics.json", "case_dice", "validation case Dice")
FOLD_SCORE = ("cv_summary.json", "case_dice_oof_mean", "out-of-fold case Dice")


@dataclass(frozen=True)
class RankedModel:
    """One finished model of a task, with its recorded score (None when none was recorded)."""

    task: str
    variant: str
    version: str
    path: str
    ensemble: bool = False
    score: float | None = None
    score_name: str | None = None

    @property
    def label(self) -> str:
        """``lung_unet (2026-...Z) - validation case Dice 0.951``."""
        score = f"{self.score_name} {self.score:.3f}" if self.score is not None else "no recorded score"
        return f"{self.variant} ({self.version}) - {score}"

    def describe(self) -> dict:
        """What a report says about the model: name, version and score (no server path)."""
        return {
            "variant": self.variant,
            "version": self.version,
            "fold_ensemble": self.ensemble,
            "score": self.score,
            "score_name": self.score_name,
        }


def reports_dir_for(models_dir: str | Path) -> Path:
    """The reports folder that belongs to a models folder: ``<parent>/08_reporting``."""
    return Path(models_dir).resolve().parent / REPORTS_FOLDER


def is_finished(entry: dict) -> bool:
    """True when the model of a :func:`lungseg.inference.models.list_trained_models` entry has its config."""
    from lungseg.inference.models import CONFIG_FILE, MODEL_FILE

    path = Path(entry["path"])
    if entry.get("ensemble"):
        folds = sorted(path.glob("fold_*.keras"))
        return bool(folds) and all(f.with_suffix(".json").is_file() for f in folds)
    if path.parent.parent.name == MODEL_FILE:  # <variant>/model.keras/<version>/model.keras
        return (path.parent.parent.parent / CONFIG_FILE / path.parent.name / CONFIG_FILE).is_file()
    return (path.parent / CONFIG_FILE).is_file() or path.with_suffix(".json").is_file()


def _read_score(path: Path, key: str, not_before: float) -> float | None:
    """The score ``key`` of a JSON report, or None (missing, unreadable, older than the model)."""
    try:
        if path.stat().st_mtime < not_before:
            logger.info("%s is older than the model; its score is not the model's", path)
            return None
        value = json.loads(path.read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    try:
        score = float(value)
    except (TypeError, ValueError):
        return None
    return score if score == score else None  # NaN: no score


def _model_mtime(entry: dict) -> float:
    path = Path(entry["path"])
    files = sorted(path.glob("fold_*.keras")) if entry.get("ensemble") else [path]
    return max((f.stat().st_mtime for f in files if f.is_file()), default=0.0)


def rank_models(
    models_dir: str | Path = MODELS_DIR, reports_dir: str | Path | None = None
) -> dict[str, list[RankedModel]]:
    """The finished models of each task, best recorded score first (see the module docstring).

    Returns:
        ``{"lung": [...], "infection": [...]}``; both keys always present.
    """
    from lungseg.inference.models import list_trained_models

    reports = Path(reports_dir) if reports_dir is not None else reports_dir_for(models_dir)
    ranked: dict[str, list[RankedModel]] = {task: [] for task in TASKS}
    for task, entries in list_trained_models(models_dir).items():
        entries = [
            e
            for e in entries
            if is_finished(e)
            or logger.info("%s (%s): no config beside it (not finished); not offered", e["variant"], e["version"])
        ]
        newest: dict[str, str] = {}  # the newest finished version of each variant: its evaluation is in the reports
        for entry in entries:
            if not entry["ensemble"]:
                newest[entry["variant"]] = max(newest.get(entry["variant"], ""), str(entry["version"]))
        for entry in entries:
            file, key, name = FOLD_SCORE if entry["ensemble"] else SINGLE_SCORE
            score = None
            if entry["ensemble"] or newest.get(entry["variant"]) == str(entry["version"]):
                score = _read_score(reports / entry["variant"] / file, key, _model_mtime(entry))
            ranked[task].append(
                RankedModel(
                    task=task,
                    variant=str(entry["variant"]),
                    version=str(entry["version"]),
                    path=str(entry["path"]),
                    ensemble=bool(entry["ensemble"]),
                    score=score,
                    score_name=name if score is not None else None,
                )
            )
        # stable sort: scored first, best first; unscored keep list_trained_models' order (newest first)
        ranked[task].sort(key=lambda m: (m.score is None, -(m.score or 0.0)))
    return ranked


def _models_dir_of(path: Path) -> Path | None:
    """The models folder a model lies in, by the training pipeline's layout; None outside it."""
    from lungseg.inference.models import MODEL_FILE

    if path.is_dir():  # a cross-validation's fold folder <models>/<variant>_cv
        return path.parent
    if path.parent.parent.name == MODEL_FILE and len(path.parents) > 3:  # <models>/<variant>/model.keras/<v>/model.keras
        return path.parents[3]
    if path.name == MODEL_FILE and len(path.parents) > 1:  # <models>/<variant>/model.keras
        return path.parents[1]
    return None


def recorded_score(path: str | Path) -> tuple[float | None, str | None]:
    """The score recorded for the model at ``path`` (a ``model.keras`` file or a fold folder), as
    :func:`rank_models` finds it: ``(score, what it is)``, or ``(None, None)`` when the model lies
    outside a models folder's layout or no score was recorded for it."""
    path = Path(path)
    try:
        models_dir = _models_dir_of(path)
        if models_dir is None:
            return None, None
        target = path.resolve()
        for entries in rank_models(models_dir).values():
            for model in entries:
                if Path(model.path).resolve() == target:
                    return model.score, model.score_name
    except OSError:
        logger.debug("no recorded score for %s", path, exc_info=True)
    return None, None
