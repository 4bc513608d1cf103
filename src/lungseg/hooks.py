"""Project hooks: tag every MLflow run with what it trained, on what, in which environment."""

from __future__ import annotations

import logging
from typing import Any

from kedro.framework.hooks import hook_impl

from lungseg.layout import VARIANTS, variant_architecture, variant_task

logger = logging.getLogger(__name__)


def run_tags(pipeline_name: str | None, env: str | None, dataset: str | None) -> dict[str, str]:
    """MLflow tags for a run of ``pipeline_name``."""
    name = pipeline_name or "__default__"
    variant = name[: -len("_cv")] if name.endswith("_cv") else name  # a cross-validation of a variant
    if variant in VARIANTS:
        task, arch = variant_task(variant), variant_architecture(variant)
    else:
        task, arch = ("lung+infection", "unet+deeplabv3plus") if name == "__default__" else (name, "-")
    return {
        "pipeline": name,
        "task": task,
        "architecture": arch,
        "dataset": dataset or "unknown",
        "environment": env or "local",
        "cross_validation": str(name.endswith("_cv")).lower(),
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


# ----------------------------------------------------------------------------- raw data missing
import click  # noqa: E402

from lungseg.errors import ConfigError  # noqa: E402


class MissingRawDataError(ConfigError, click.ClickException):
    """The raw dataset is missing. A ``click.ClickException``, so ``kedro run`` prints the message as
    one ``Error: ...`` paragraph and exits with code 1, without a traceback."""


def missing_data_message(raw_root: str, pipeline_names: str) -> str:
    """The paragraph shown when ``raw_root`` has no ``metadata.csv``."""
    dest = "" if raw_root.rstrip("/") == "data/01_raw/covid19-ct-scans" else f" --dest {raw_root}"
    return (
        f"No dataset at {raw_root}: {raw_root.rstrip('/')}/metadata.csv does not exist, and the pipeline "
        f"{pipeline_names} starts from it. Two ways on: `lungseg fetch-data{dest}` downloads the real COVID-19 CT "
        "Lung and Infection Segmentation Dataset (Zenodo 3757476, about 1.1 GB, checksummed; add --from DIR_OR_ZIP "
        "for archives already downloaded), or `kedro run --env=demo --pipeline=infection_unet` trains on the "
        "embedded synthetic data instead (generate it once with `kedro run --env=demo --pipeline=synthetic_data`; "
        "`make demo` does both). To read the data from another folder, set raw_root in conf/<env>/globals.yml."
    )


class RawDataCheckHook:
    """Stop a run before it starts, with one readable paragraph, when the dataset's ``metadata.csv``
    (``raw_metadata``) does not exist and the pipeline reads it: as an input, or as the inference
    pipeline's default ``inference.input``.

    ``tryfirst``: it runs before kedro-mlflow's ``before_pipeline_run``, so no empty MLflow run is
    left behind.
    """

    DATASET = "raw_metadata"
    INFERENCE_PARAMS = "params:inference"

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        inputs = pipeline.inputs()
        if self.DATASET not in catalog or not (self.DATASET in inputs or self.INFERENCE_PARAMS in inputs):
            return
        try:
            if catalog.exists(self.DATASET):
                return
            dataset = catalog.get(self.DATASET)
            filepath = str(getattr(dataset, "_filepath", "") or dataset._describe().get("filepath", ""))
            if self.DATASET not in inputs and not _reads(catalog.load(self.INFERENCE_PARAMS), filepath):
                return  # inference on some other input: its own checks report a bad path
        except Exception:  # an unusual catalog entry: let the run report it as usual
            logger.debug("cannot check %s before the run", self.DATASET, exc_info=True)
            return
        raw_root = _display_path(filepath.rsplit("/", 1)[0] if "/" in filepath else ".", run_params.get("project_path"))
        names = run_params.get("pipeline_names") or run_params.get("pipeline_name") or ["__default__"]
        names = names if isinstance(names, str) else "+".join(names)
        raise MissingRawDataError(missing_data_message(raw_root, repr(names)))


def _reads(inference_params: Any, metadata_path: str) -> bool:
    """True when ``inference.input`` is the dataset's metadata.csv or the folder holding it."""
    from pathlib import Path

    value = inference_params.get("input") if isinstance(inference_params, dict) else None
    if not value or not metadata_path:
        return False
    meta = Path(metadata_path).resolve()
    return Path(str(value)).resolve() in (meta, meta.parent)


def _display_path(path: str, project_path: str | None) -> str:
    """``path`` relative to the project when it lies inside it (as the user wrote raw_root)."""
    from pathlib import Path

    if project_path:
        try:
            return Path(path).resolve().relative_to(Path(project_path).resolve()).as_posix()
        except ValueError:
            pass
    return path
