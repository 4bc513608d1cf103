"""``register_combined_model``: the lung and infection models of a run as one registered MLflow model.

Opt-in (``registry.register``, conf/base/parameters_training.yml). The node packs the two models
this run trained (a single model per task or a cross-validation's fold ensemble); a task the
pipeline does not train is taken from the newest trained model in ``registry.models_dir``, the one
``lungseg predict`` would use. The catalog's ``registry.combined_model`` logs it to the run and
registers a new version of ``registry.model_name`` (:mod:`lungseg.serving.register`).
"""

from __future__ import annotations

import logging
from typing import Any

from kedro.pipeline import Node, Pipeline

from lungseg.config import check_section
from lungseg.errors import ModelNotFoundError
from lungseg.layout import is_cv_name
from lungseg.serving.bundle import SETTINGS_KEYS, SETTINGS_OPTIONAL_KEYS

logger = logging.getLogger(__name__)

REGISTRY_KEYS = ("register", "model_name", "models_dir")


def combined_model(registry: dict[str, Any], inference: dict[str, Any], lung_model=None, lung_config=None,
                   infection_model=None, infection_config=None, lung_folds=None, infection_folds=None) -> dict:
    """What ``registry.combined_model`` logs: ``{"register": False}`` when not opted in (or when a task
    has no trained model yet), else the two models, the inference settings and the registered name."""
    registry = check_section(registry, "registry", REGISTRY_KEYS)
    if not registry["register"]:
        return {"register": False}
    parts = {"lung": _part(lung_model, lung_config, lung_folds), "infection": _part(infection_model, infection_config,
                                                                                    infection_folds)}
    for task, part in parts.items():
        if part is None:
            from lungseg.inference.models import load_model_spec

            try:
                parts[task] = load_model_spec(None, task, registry["models_dir"])
            except ModelNotFoundError as exc:
                logger.warning("%s is not registered by this run: %s", registry["model_name"], exc)
                return {"register": False}
    settings = {k: inference[k] for k in SETTINGS_KEYS} | {k: inference[k] for k in SETTINGS_OPTIONAL_KEYS if k in inference}
    return {"register": True, "name": str(registry["model_name"]), "settings": settings, **parts}


def _part(model, config, folds):
    if folds is not None:
        return {name: (item["model"], item["config"]) for name, item in folds.items()}
    return None if model is None else (model, config)


def create_registry_pipeline(lung: str | None, infection: str | None) -> Pipeline:
    """The registration node. ``lung`` / ``infection``: the variant trained in this run
    (``lung_unet``), a cross-validation (``lung_unet_cv``: its fold ensemble), or None (the newest
    trained model in ``registry.models_dir``)."""
    inputs = {"registry": "params:registry", "inference": "params:inference"}
    for task, source in (("lung", lung), ("infection", infection)):
        if source and is_cv_name(source):
            inputs[f"{task}_folds"] = f"{source}.fold_models"
        elif source:
            inputs.update({f"{task}_model": f"{source}.model", f"{task}_config": f"{source}.model_config"})
    return Pipeline([Node(combined_model, inputs, "registry.combined_model", name="register_combined_model",
                          tags=["registry"])])
