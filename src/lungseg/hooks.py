"""Project hooks: MLflow runs that line up across variants (tags, unprefixed keys, one nested run per
variant), and a readable stop when the raw dataset is missing."""

from __future__ import annotations

import logging
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import click
import mlflow
from kedro.framework.hooks import hook_impl
from kedro_mlflow.framework.hooks.mlflow_hook import MlflowHook

from lungseg.config import check_runtime_params
from lungseg.errors import ConfigError
from lungseg.layout import RUN_ENV_VARIABLE, VARIANTS, is_cv_name, strip_cv, variant_architecture, variant_task
from lungseg.tracking import child_run_tags, child_runs_table, flatten_dict, log_param

logger = logging.getLogger(__name__)


def run_tags(pipeline_name: str | None, env: str | None, dataset: str | None) -> dict[str, str]:
    """MLflow tags for a run of ``pipeline_name``."""
    name = pipeline_name or "__default__"
    variant = strip_cv(name)  # a cross-validation of a variant
    if variant in VARIANTS:
        task, arch = variant_task(variant), variant_architecture(variant)
    else:
        systems = {"__default__": ("lung+infection", "unet+deeplabv3plus"), "system": ("lung+infection", "unet")}
        task, arch = systems.get(name, (name, "-"))
    return {
        "pipeline": name,
        "task": task,
        "architecture": arch,
        "dataset": dataset or "unknown",
        "env": env or "local",
        "cross_validation": str(is_cv_name(name)).lower(),
    }


#: ``sys.argv[0]`` of a run started from a shell: the ``kedro`` script, or ``python -m kedro``.
_KEDRO_SCRIPT = re.compile(r"(^|[/\\])kedro(\.exe)?$|[/\\]kedro[/\\]__main__\.py$")


def kedro_command(argv: list[str] | None, run_params: dict[str, Any]) -> str:
    """The command line of a run, for the ``kedro_command`` tag.

    From a shell (``kedro run --env=demo --pipelines=infection_unet``, or ``python -m kedro run ...``):
    ``sys.argv`` itself, as typed, with ``kedro`` for the script's path. From Python (a
    ``KedroSession`` in a script or a notebook, whose ``sys.argv`` is the interpreter's): the
    equivalent ``kedro run`` command rebuilt from the run's parameters, with the ``--env``, the
    ``--runner`` and the ``--params`` that kedro-mlflow's own tag leaves out.
    """
    argv = list(argv or [])
    if argv and _KEDRO_SCRIPT.search(argv[0]):
        return shlex.join(["kedro", *argv[1:]])
    cmd = ["kedro", "run"]
    names = run_params.get("pipeline_names") or run_params.get("pipeline_name")
    if names:
        cmd.append("--pipelines=" + (names if isinstance(names, str) else ",".join(names)))
    if run_params.get("env"):
        cmd.append(f"--env={run_params['env']}")
    for flag, key in (("--tags", "tags"), ("--nodes", "node_names"), ("--from-nodes", "from_nodes"),
                      ("--to-nodes", "to_nodes"), ("--from-inputs", "from_inputs"), ("--to-outputs", "to_outputs")):
        if run_params.get(key):
            cmd.append(f"{flag}={','.join(run_params[key])}")
    runner = runner_name(run_params.get("runner"))
    if runner and runner != "SequentialRunner":
        cmd.append(f"--runner={runner}")
    if run_params.get("load_versions"):
        cmd.append("--load-versions=" + ",".join(f"{k}:{v}" for k, v in run_params["load_versions"].items()))
    params = run_params.get("runtime_params") or run_params.get("extra_params")
    if params:
        cmd.append("--params=" + ",".join(f"{k}={v}" for k, v in params.items()))
    return shlex.join(cmd)


def runner_name(runner: Any) -> str | None:
    """A runner's class name: Kedro puts the runner's repr into the run parameters
    (``<kedro.runner.sequential_runner.SequentialRunner object at 0x7f...>``), and ``"None"`` when the
    session was given no runner (it then runs a ``SequentialRunner``)."""
    if runner is None or runner == "":
        return None
    if runner == "None":
        return "SequentialRunner"
    if not isinstance(runner, str):
        return type(runner).__name__ if not isinstance(runner, type) else runner.__name__
    found = re.match(r"<(?:[\w.]+\.)?(\w+) object at 0x[0-9a-fA-F]+>$", runner.strip())
    return found.group(1) if found else runner.rsplit(".", 1)[-1]


def variant_of(namespace: str | None) -> str | None:
    """The variant run a node belongs to: its top namespace when that is a variant (``infection_unet``)
    or a variant's cross-validation (``infection_unet_cv``); None for shared nodes."""
    top = (namespace or "").split(".")[0]
    return top if strip_cv(top) in VARIANTS else None


def strip_variant(param: str, variant: str | None) -> str:
    """A parameter's name without its variant: ``infection_unet.model`` -> ``model`` (also under
    ``infection_unet_cv``), so that every variant's run logs the same keys."""
    if variant:
        for prefix in (f"{variant}.", f"{strip_cv(variant)}."):
            if param.startswith(prefix):
                return param[len(prefix):]
    return param


class LungsegMlflowHook(MlflowHook):
    """kedro-mlflow's hook (which settings.py registers in place of the plugin's own), with runs that
    line up in the MLflow UI's Compare.

    * Parameters are logged without their variant: ``model.base_filters``, not
      ``infection_unet.model.base_filters``; metrics datasets have no prefix either.
    * A ``kedro run`` of one variant is one MLflow run. A run that covers several variants
      (``__default__``, ``system``, an infection variant's cross-validation) is a parent run with one nested child
      run per variant (kedro-mlflow has none per namespace; its maintainer suggests
      ``mlflow.start_run(nested=True)`` around a namespace's nodes, kedro-mlflow#448). The child of a
      node's variant is made active in ``before_node_run`` and stays active until a node of another
      variant (or a shared node) starts: Kedro saves a node's outputs after ``after_node_run``, so
      the node's MLflow datasets are logged into its variant's run.
    * Every run is tagged ``task``, ``architecture``, ``dataset``, ``env`` (the Kedro environment, the
      tag kedro-mlflow sets from the run parameters; ``local`` without ``--env``) and ``variant`` for a
      variant's run; the parent holds the table of its children (``comparison/variant_runs.csv``).
    * ``kedro_command`` is the command line as typed (:func:`kedro_command`), ``runner`` the runner's
      class name (Kedro's run parameters hold its repr).
    """

    def __init__(self) -> None:
        super().__init__()
        self._children: dict[str, str] = {}
        self._nested = False
        self._params: dict[str, Any] = {}

    @hook_impl
    def after_context_created(self, context) -> None:
        """kedro-mlflow's set-up, after checking that an HTTP tracking server answers: MLflow's client
        retries a dead server for minutes (seven retries with back-off) before its traceback."""
        try:
            uri = (context.config_loader["mlflow"] or {}).get("server", {}).get("mlflow_tracking_uri")
        except Exception:  # noqa: BLE001 - no mlflow.yml: kedro-mlflow's own default, a local store
            uri = None
        if isinstance(uri, str) and uri.startswith(("http://", "https://")):
            check_tracking_server(uri)
        super().after_context_created(context)

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        self.run_id = None  # the instance lives in settings.py: a previous session's run must not leak in
        super().before_pipeline_run(run_params, pipeline, catalog)
        self._children = {}
        variants = sorted({v for node in pipeline.nodes if (v := variant_of(node.namespace))})
        self._nested = len(variants) > 1
        if self.run_id is None:  # kedro-mlflow opened no run: tracking is disabled for this pipeline
            return
        dataset = _optional_param(catalog, "dataset_name")
        self._params = {"env": run_params.get("env"), "dataset": dataset,
                        "preprocessing": _optional_param(catalog, "preprocessing")}
        names = run_params.get("pipeline_name") or run_params.get("pipeline_names") or ["__default__"]
        name = names if isinstance(names, str) else "+".join(names)
        mlflow.set_tags(run_tags(name, run_params.get("env"), dataset))
        mlflow.set_tag("kedro_command", kedro_command(sys.argv, run_params))
        runner = runner_name(run_params.get("runner"))
        if runner:
            mlflow.set_tag("runner", runner)
        if not self._nested and variants:
            mlflow.set_tag("variant", strip_cv(variants[0]))

    @hook_impl
    def before_node_run(self, node, catalog, inputs: dict[str, Any], is_async: bool) -> None:
        if self.run_id is None:
            return
        variant = variant_of(node.namespace)
        self._activate(variant if self._nested else None)
        params = {strip_variant(k[len("params:"):], variant): v for k, v in inputs.items() if k.startswith("params:")}
        self._log_params(params)

    def _activate(self, variant: str | None) -> None:
        """Make the run of ``variant`` (None: the parent) the active MLflow run of this thread."""
        target = self._children.get(variant) if variant else self.run_id
        active = mlflow.active_run()
        while active is not None and active.info.run_id not in (target, self.run_id):
            mlflow.end_run()  # another variant's child: it is resumed when its next node starts
            active = mlflow.active_run()
        if active is None:  # a new thread (ThreadRunner), or nothing active any more
            mlflow.start_run(run_id=self.run_id)
            active = mlflow.active_run()
        if variant is None or active.info.run_id == target:
            return
        if target is not None:
            mlflow.start_run(run_id=target, nested=True)
            return
        run = mlflow.start_run(run_name=variant, nested=True,
                               tags=child_run_tags(variant, self._params["dataset"], self._params["env"]))
        self._children[variant] = run.info.run_id
        self._log_params({"dataset_name": self._params["dataset"], "preprocessing": self._params["preprocessing"]})

    def _log_params(self, params: dict[str, Any]) -> None:
        """Log ``params`` to the active run as mlflow.yml's ``tracking.params`` says (flattened or not,
        long values failing, truncated or tagged), with kedro-mlflow's own sanitised names."""
        options = self.mlflow_config.tracking.params
        params = {k: v for k, v in params.items() if v is not None}
        if options.dict_params.flatten:
            params = flatten_dict(params, recursive=options.dict_params.recursive, sep=options.dict_params.sep)
        for key, value in params.items():
            log_param(self.sanitize_param_name(key), value, options.long_params_strategy)

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        if self.run_id is not None:
            self._activate(None)
            if self._children:
                table = child_runs_table(self.run_id)
                mlflow.log_text(table.to_csv(index=False), "comparison/variant_runs.csv")
        super().after_pipeline_run(run_params, pipeline, catalog)


def _optional_param(catalog, name: str) -> Any:
    try:
        return catalog.load(f"params:{name}")
    except Exception:  # the parameter is optional for the hook
        return None


# ----------------------------------------------------------------------------- the run's environment

class RunEnvironmentHook:
    """Tell the nodes of a run its Kedro environment: ``$LUNGSEG_KEDRO_ENV``
    (:data:`lungseg.layout.RUN_ENV_VARIABLE`; ``local`` without ``--env``), which training records in
    ``model_config.json`` as ``environment`` (the provenance ``lungseg models`` and ``lungseg predict``
    show). An environment variable reaches the nodes of every runner, ParallelRunner's processes
    included; the previous value comes back when the run ends."""

    def __init__(self) -> None:
        self._previous: str | None = None

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        self._previous = os.environ.get(RUN_ENV_VARIABLE)
        os.environ[RUN_ENV_VARIABLE] = str(run_params.get("env") or "local")

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        self._restore()

    @hook_impl
    def on_pipeline_error(self, error, run_params: dict[str, Any], pipeline, catalog) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._previous is None:
            os.environ.pop(RUN_ENV_VARIABLE, None)
        else:
            os.environ[RUN_ENV_VARIABLE] = self._previous


# ----------------------------------------------------------------------------- raw data missing

class MissingRawDataError(ConfigError, click.ClickException):
    """The raw dataset is missing. A ``click.ClickException``, so ``kedro run`` prints the message as
    one ``Error: ...`` paragraph and exits with code 1, without a traceback."""


class BadParamsError(ConfigError, click.ClickException):
    """A misspelt or mistyped ``--params``: one ``Error: ...`` line from ``kedro run``, exit code 1."""


class TrackingServerUnreachableError(ConfigError, click.ClickException):
    """The MLflow tracking server of the environment's mlflow.yml did not answer: one ``Error: ...`` line."""


TRACKING_SERVER_TIMEOUT = 5.0


def check_tracking_server(uri: str, timeout: float = TRACKING_SERVER_TIMEOUT) -> None:
    """Raise :class:`TrackingServerUnreachableError` naming ``uri`` unless its ``/health`` answers within
    ``timeout`` seconds (``mlflow server`` serves it). Called before any node runs or any run opens."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as resp:
            resp.read(64)
    except urllib.error.HTTPError as exc:
        if exc.code < 500:  # it answers (a proxy in front may not serve /health): the server is there
            return
        reason = f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = str(getattr(exc, "reason", exc)) or type(exc).__name__
    else:
        return
    raise TrackingServerUnreachableError(
        f"MLflow tracking server {uri!r} did not answer within {timeout:g} s ({reason}). Start it "
        f"(README, \"Scaling out\": mlflow server ... --host/--port of that address), or fix "
        f"server.mlflow_tracking_uri in the environment's mlflow.yml. Nothing was run or written.")


def missing_data_message(raw_root: str, pipeline_names: str) -> str:
    """The paragraph shown when ``raw_root`` has no ``metadata.csv``."""
    dest = "" if raw_root.rstrip("/") == "data/01_raw/covid19-ct-scans" else f" --dest {raw_root}"
    return (
        f"No dataset at {raw_root}: {raw_root.rstrip('/')}/metadata.csv does not exist, and the pipeline "
        f"{pipeline_names} starts from it. Two ways on: `lungseg fetch-data{dest}` downloads the real COVID-19 CT "
        "Lung and Infection Segmentation Dataset (Zenodo 3757476, about 1.1 GB, checksummed; add --from DIR_OR_ZIP "
        "for archives already downloaded), or `kedro run --env=demo --pipelines=infection_unet` trains on the "
        "embedded synthetic data instead (generate it once with `kedro run --env=demo --pipelines=synthetic_data`; "
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


class ParamsCheckHook:
    """Refuse a misspelt or mistyped ``kedro run --params`` before anything runs (#28 item 3).

    Each runtime parameter must name a key of the environment's own parameters (conf/base merged
    with ``--env``), and have the type configured there (a number for ``epochs``; null is always
    accepted). ``tryfirst``: it runs before kedro-mlflow's ``before_pipeline_run``, so no MLflow run
    opens and no node writes anything for a refused run.

    Args:
        loader_class, loader_args: the project's ``CONFIG_LOADER_CLASS`` and ``CONFIG_LOADER_ARGS``
            (``settings.py`` passes its own), used to read the parameters without ``--params``.
    """

    def __init__(self, loader_class: type, loader_args: dict[str, Any]) -> None:
        self.loader_class = loader_class
        self.loader_args = dict(loader_args)

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        runtime = run_params.get("runtime_params") or {}
        if not runtime or not run_params.get("project_path"):
            return
        loader = self.loader_class(conf_source=str(Path(run_params["project_path"]) / "conf"),
                                   env=run_params.get("env"), **self.loader_args)
        problems = check_runtime_params(runtime, loader["parameters"])
        if problems:
            raise BadParamsError("--params: " + "; ".join(problems) + " (nothing was run)")


def _reads(inference_params: Any, metadata_path: str) -> bool:
    """True when ``inference.input`` is the dataset's metadata.csv or the folder holding it."""
    value = inference_params.get("input") if isinstance(inference_params, dict) else None
    if not value or not metadata_path:
        return False
    meta = Path(metadata_path).resolve()
    return Path(str(value)).resolve() in (meta, meta.parent)


def _display_path(path: str, project_path: str | None) -> str:
    """``path`` relative to the project when it lies inside it (as the user wrote raw_root)."""
    if project_path:
        try:
            return Path(path).resolve().relative_to(Path(project_path).resolve()).as_posix()
        except ValueError:
            pass
    return path
