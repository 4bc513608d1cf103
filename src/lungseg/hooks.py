"""Project hooks: tag every MLflow run with what it trained, on what, in which environment."""

from __future__ import annotations

import logging
from typing import Any

from kedro.framework.hooks import hook_impl

logger = logging.getLogger(__name__)

VARIANTS = ("lung_unet", "lung_deeplabv3plus", "infection_unet", "infection_deeplabv3plus")


def run_tags(pipeline_name: str | None, env: str | None, dataset: str | None) -> dict[str, str]:
    """MLflow tags for a run of ``pipeline_name``."""
    name = pipeline_name or "__default__"
    if name in VARIANTS:
        task, arch = name.split("_", 1)
    else:
        task, arch = ("lung+infection", "unet+deeplabv3plus") if name == "__default__" else (name, "-")
    return {
        "pipeline": name,
        "task": task,
        "architecture": arch,
        "dataset": dataset or "unknown",
        "environment": env or "local",
    }


class MlflowTagsHook:
    """Set the tags once, on the first node, when kedro-mlflow has started the run."""

    def __init__(self) -> None:
        self._tags: dict[str, str] | None = None
        self._done = False

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        try:
            dataset = catalog.load("params:dataset_name")
        except Exception:  # the parameter is optional for this hook
            dataset = None
        names = run_params.get("pipeline_name") or run_params.get("pipeline_names") or ["__default__"]
        name = names if isinstance(names, str) else "+".join(names)
        self._tags = run_tags(name, run_params.get("env"), dataset)
        self._done = False

    @hook_impl
    def before_node_run(self, node) -> None:
        if self._done or self._tags is None:
            return
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.set_tags(self._tags)
            self._done = True
