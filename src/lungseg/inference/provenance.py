"""Where the models of a segmentation come from, and whether their figures may be read on an input.

**Provenance** (:func:`describe_model`), from the config saved with each model (``model_config.json``)
and the reports beside it:

* ``dataset``: the training data (``dataset_name`` of the run: ``synthetic_demo``, ``covid20-dev``...);
* ``environment``: the Kedro environment of the training run (recorded since #29; None before);
* ``trained_at``, ``variant`` and ``fold_ensemble``;
* ``score`` / ``score_name``: the figure the model was scored with, found as the web UI finds it
  (:func:`lungseg.inference.choice.recorded_score`: a single model's validation case Dice in
  ``data/08_reporting/<variant>/metrics.json``, a cross-validation's out-of-fold case Dice), else the
  score a ``lungseg-combined`` bundle carries in the config (``recorded_score``); None when none was
  recorded.

**Models trained on synthetic phantoms, used on other input.** A model trained on the synthetic
generator's phantoms (a dataset named ``synthetic*``) has never seen a real chest: on real CT the
``make demo`` models label the heart and the mediastinum as lung and infection (issue #29: infection
Dice 0.08-0.20 on four real cases). When a model of a segmentation was trained on synthetic data and
the input is not one of the generator's phantoms (:func:`synthetic_mismatch`), the severity grade is
withheld (report.json: ``"severity": null`` and ``severity_withheld`` says why) and ``lungseg predict``
warns. An input is a phantom when its NIfTI header's ``descrip`` is
:data:`lungseg.layout.SYNTHETIC_PHANTOM_DESCRIP`, which the generator writes into every file it makes.
Anything else is not: DICOM, PNG, any other NIfTI, and phantoms generated before the marker existed
(regenerate them: ``kedro run --env=demo --pipelines=synthetic_data``). A header field is used rather
than an image statistic because a statistic that tells the phantoms from real CT today would drift
with the generator, and a real scan could pass it; a marker is either there or not.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from lungseg.layout import SYNTHETIC_DATASET_PREFIX, SYNTHETIC_PHANTOM_DESCRIP

logger = logging.getLogger(__name__)

#: ``severity_withheld`` in report.json (and summary.csv) when synthetic-trained models met other input.
SYNTHETIC_WITHHELD = "models trained on synthetic phantoms"


def is_synthetic_dataset(name: Any) -> bool:
    """True for the synthetic generator's dataset names (``synthetic_demo``, ``synthetic_tiny``...)."""
    return str(name or "").strip().lower().startswith(SYNTHETIC_DATASET_PREFIX)


def is_synthetic_phantom(volume) -> bool:
    """True when ``volume`` was read from a NIfTI file the synthetic generator wrote (its header's
    ``descrip`` is :data:`~lungseg.layout.SYNTHETIC_PHANTOM_DESCRIP`)."""
    header = getattr(volume, "header", None)
    if header is None:
        return False
    try:
        raw = header["descrip"]
    except (KeyError, TypeError, ValueError):
        return False
    raw = raw.item() if hasattr(raw, "item") else raw
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
    return text.strip("\x00 ").startswith(SYNTHETIC_PHANTOM_DESCRIP)


def describe_model(loaded) -> dict[str, Any] | None:
    """The provenance of a :class:`~lungseg.inference.loaded_model.LoadedModel` (see the module
    docstring); None for no model."""
    if loaded is None:
        return None
    from lungseg.inference.choice import recorded_score

    config = dict(getattr(loaded, "config", None) or {})
    source = str(getattr(loaded, "source", ""))
    score, score_name = recorded_score(source) if source else (None, None)
    stored = config.get("recorded_score")
    if score is None and isinstance(stored, dict) and stored.get("value") is not None:
        score, score_name = float(stored["value"]), str(stored.get("name") or "recorded score")
    task, arch = config.get("task"), config.get("architecture")
    return {
        "variant": f"{task}_{arch}" if task and arch else None,
        "dataset": config.get("dataset"),
        "environment": config.get("environment"),
        "trained_at": config.get("trained_at"),
        "fold_ensemble": "ensemble_members" in config,
        "score": score,
        "score_name": score_name,
        "trained_on_synthetic": is_synthetic_dataset(config.get("dataset")),
    }


def describe_models(lung, infection) -> dict[str, dict | None]:
    """``{"lung": ..., "infection": ...}``: the provenance of both models (None for a missing one)."""
    return {"lung": describe_model(lung), "infection": describe_model(infection)}


def synthetic_mismatch(provenance: dict[str, dict | None], volume) -> str | None:
    """Why the figures of a segmentation are not for interpretation, or None: a model of it was
    trained on synthetic phantoms and ``volume`` is not one of the generator's phantoms."""
    synthetic = sorted({str(p["dataset"]) for p in provenance.values() if p and p["trained_on_synthetic"]})
    if not synthetic or is_synthetic_phantom(volume):
        return None
    return f"{SYNTHETIC_WITHHELD} ({', '.join(synthetic)}) and this input is not one of the generator's phantoms"


def provenance_text(provenance: dict) -> str:
    """``trained on synthetic_demo (env demo, 2026-12-06T21:34:19+00:00); validation case Dice 0.955 on
    synthetic phantoms``."""
    details = [d for d in (f"env {provenance['environment']}" if provenance["environment"] else None,
                           provenance["trained_at"]) if d]
    dataset = provenance["dataset"] or "an unrecorded dataset"
    text = f"trained on {dataset}" + (f" ({', '.join(details)})" if details else "")
    if provenance["score"] is not None:
        on = " on synthetic phantoms" if provenance["trained_on_synthetic"] else ""
        return text + f"; {provenance['score_name']} {provenance['score']:.3f}{on}"
    return text + "; no recorded score"


def provenance_line(task: str, provenance: dict | None) -> str:
    """One line on a model: ``lung model lung_unet: trained on synthetic_demo (env demo, ...); validation
    case Dice 0.955 on synthetic phantoms``."""
    if not provenance:
        return f"{task} model: none"
    what = provenance["variant"] or "model"
    if provenance["fold_ensemble"]:
        what += " (fold ensemble)"
    return f"{task} model {what}: {provenance_text(provenance)}"


def model_summary(entry: dict) -> str:
    """The provenance of a :func:`lungseg.inference.models.list_trained_models` entry in words (``lungseg models``): its training
    dataset, environment and recorded score (:func:`lungseg.inference.provenance.provenance_text`), or
    why its config cannot be read."""
    from types import SimpleNamespace

    from lungseg.errors import ConfigError, ModelNotFoundError
    from lungseg.inference.ensemble import ensemble_config
    from lungseg.inference.models import config_path_for

    path = Path(entry["path"])
    try:
        if entry.get("ensemble"):
            configs = {f.stem: json.loads(f.read_text()) for f in sorted(path.glob("fold_*.json"))}
            if not configs:
                return "no fold configs (fold_*.json): not finished"
            config = ensemble_config(configs, str(path))
        else:
            config = json.loads(config_path_for(path).read_text())
    except (OSError, ValueError, ModelNotFoundError, ConfigError) as exc:
        return f"no usable config ({exc})"
    if not isinstance(config, dict):
        return "no usable config (not a JSON object)"
    return provenance_text(describe_model(SimpleNamespace(config=config, source=str(path))))
