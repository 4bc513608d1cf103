"""``DaskRunner``: every node of a Kedro pipeline as a task on a ``dask.distributed`` cluster.

Built from Kedro's "Distributed deployment with Dask" guide, with what its example gets wrong on Kedro 1.7
fixed for this project:

* **The cluster.** ``kedro run`` builds a runner with ``is_async`` and ``--runner-params`` only, so the
  example's ``client_args`` never arrive. The scheduler address comes from ``--runner-params=address=...``
  or from the parameters (``dask_client.address``, ``conf/dask/parameters.yml``); without one (or with
  ``local``) a ``LocalCluster`` is started for the run and stopped after it. The client is opened when
  the run starts (not when the runner is built) and closed when it ends; an unreachable scheduler is one
  :class:`SchedulerUnreachableError` naming the address, within ``connect_timeout`` seconds, before any
  node runs.
* **Node results between workers.** Kedro 1.x makes a ``MemoryDataset`` for every dataset that the catalog
  does not declare (the example's ``create_default_dataset`` is never called, and its ``_load`` returns
  nothing). A node's in-memory outputs are the result of its Dask task, and the tasks that need them get
  them from Dask, worker to worker; declared datasets are read and written by the workers themselves,
  so every worker must see the project's files (the same shared disk).
* **Picklable datasets, lazy partitions.** Only the datasets of a node travel with its task, not the
  whole catalog. A ``PartitionedDataset``'s lazy loads are callables bound to picklable datasets; the
  lazy saves of :class:`lungseg.datasets.CasePartitionedDataset` become one task per case.
* **Per-case parallelism.** The project's heavy nodes (ingestion, enhancement, the model inputs) are one
  node per stage, so node-level parallelism would gain nothing there: inside a task those nodes submit
  one task per case to the same cluster (:func:`lungseg.parallel.case_map`).
* **Hooks and MLflow.** A pluggy ``PluginManager`` does not pickle, and kedro-mlflow's run lives in this
  process: nodes that read or write an MLflow dataset (training, evaluation) run here, in the driver, with
  the session's hooks; the others run on the workers, and their ``before_node_run`` (the parameters
  kedro-mlflow logs) is called here when the node is submitted (so also for a node that a failure
  upstream then cancels), ``on_node_error`` when it fails. ``after_node_run`` is not called for them
  (their outputs stay on the cluster). ``$LUNGSEG_KEDRO_ENV`` is passed to the workers.
* ``run_only_missing`` is gone: Kedro 1.7's ``--only-missing-outputs`` filters the pipeline before ``_run``.
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import Any

from kedro.framework.hooks.manager import _NullPluginManager
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline
from kedro.pipeline.node import Node
from kedro.runner import AbstractRunner
from kedro.runner.task import Task

from lungseg.errors import ConfigError
from lungseg.layout import RUN_ENV_VARIABLE
from lungseg.parallel import CONNECT_TIMEOUT, LOCAL, open_client

logger = logging.getLogger(__name__)

def _is_memory(catalog, name: str) -> bool:
    return not name.startswith("params:") and name != "parameters" and isinstance(catalog.get(name), MemoryDataset)


def _runs_in_driver(node: Node, catalog) -> bool:
    """True for a node with an MLflow dataset: kedro-mlflow's active run lives in this process."""
    return any("mlflow" in type(catalog.get(name)).__module__.lower() for name in (*node.inputs, *node.outputs))


def _run_on_worker(node: Node, datasets: dict[str, Any], is_async: bool, run_id: str | None, env: str | None,
                   *upstream: dict[str, Any]) -> dict[str, Any]:
    """Run ``node`` on a worker with its own datasets; returns its in-memory outputs (``upstream``: the
    in-memory outputs of the nodes it depends on, which Dask passes in)."""
    if env is not None:
        os.environ[RUN_ENV_VARIABLE] = env
    catalog = DataCatalog(datasets=datasets)
    for results in upstream:
        for name, data in results.items():
            if name in node.inputs:
                catalog[name] = data
    Task(node=node, catalog=catalog, is_async=is_async, hook_manager=_NullPluginManager(), run_id=run_id).execute()
    return {name: catalog.load(name) for name in node.outputs if isinstance(datasets[name], MemoryDataset)}


class DaskRunner(AbstractRunner):
    """Run a pipeline's nodes as Dask tasks (see the module docstring).

    Args:
        address: the scheduler (``tcp://host:8786``); default: ``dask_client.address`` of the parameters,
            else a ``LocalCluster``.
        n_workers: workers of a ``LocalCluster`` (default one per core), one thread each.
        processes: a ``LocalCluster`` of processes (default) or of threads in this process (tests).
        connect_timeout: seconds to wait for the scheduler.
        is_async: load and save a node's datasets in threads (Kedro's option).
    """

    def __init__(self, address: str | None = None, n_workers: int | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT, processes: bool = True, is_async: bool = False) -> None:
        super().__init__(is_async=is_async)
        self.processes = bool(processes)
        self.address = address
        self.n_workers = None if n_workers is None else int(n_workers)
        self.connect_timeout = float(connect_timeout)

    def _get_executor(self, max_workers: int) -> None:
        return None  # Dask schedules; _run does not use Kedro's executor loop

    def _address(self, catalog) -> str | None:
        if self.address is not None:
            return self.address
        if "params:dask_client" in catalog:
            conf = catalog.load("params:dask_client") or {}
            if not isinstance(conf, dict):
                raise ConfigError(f"parameter 'dask_client' must be a mapping with 'address', got {conf!r}")
            return conf.get("address")
        return None

    def _run(self, pipeline: Pipeline, catalog, hook_manager=None, run_id: str | None = None) -> None:
        hooks = hook_manager or _NullPluginManager()
        address = self._address(catalog)
        with open_client(address, n_workers=self.n_workers, processes=self.processes,
                         connect_timeout=self.connect_timeout) as client:
            self._logger.info("Running %d node(s) on the Dask cluster %s", len(pipeline.nodes),
                              address if address not in LOCAL else f"(local: {client.dashboard_link or 'no dashboard'})")
            self._run_on(client, pipeline, catalog, hooks, run_id)

    def _run_on(self, client, pipeline: Pipeline, catalog, hooks, run_id: str | None) -> None:
        from distributed import as_completed

        deps = pipeline.node_dependencies
        env = os.environ.get(RUN_ENV_VARIABLE)
        futures: dict[Node, Any] = {}
        token = uuid.uuid4().hex[:8]
        done: list[Node] = []
        try:
            for node in pipeline.nodes:  # topological order
                upstream = [futures[d] for d in deps[node]]
                if _runs_in_driver(node, catalog):
                    try:
                        gathered = client.gather(upstream)
                    except Exception as exc:  # an upstream node failed: it is the one reported
                        raise _NodeFailed(next((d for d in deps[node] if futures[d].status == "error"), node),
                                          exc) from exc
                    for results in gathered:
                        for name, data in results.items():
                            catalog.save(name, data)
                    Task(node=node, catalog=catalog, is_async=self._is_async, hook_manager=hooks,
                         run_id=run_id).execute()
                    results = {n: catalog.load(n) for n in node.outputs if _is_memory(catalog, n)}
                    futures[node] = client.scatter([results], hash=False)[0]
                    continue
                datasets = {n: catalog.get(n) for n in (*node.inputs, *node.outputs)}
                params = {n: catalog.load(n) for n in node.inputs if n.startswith("params:") or n == "parameters"}
                hooks.hook.before_node_run(node=node, catalog=catalog, inputs=params, is_async=self._is_async)
                futures[node] = client.submit(_run_on_worker, node, datasets, self._is_async, run_id, env, *upstream,
                                              key=f"kedro-node-{node.name}-{token}", pure=False)
            node_of = {f.key: n for n, f in futures.items()}
            for future in as_completed(list(futures.values())):
                node = node_of[future.key]
                if future.status == "error":
                    if any(futures[d].status == "error" for d in deps[node]):
                        continue  # failed because an upstream node did: that one is reported
                    raise _NodeFailed(node, future.exception())
                done.append(node)
                self._logger.debug("Completed node %s (%d out of %d)", node.name, len(done), len(pipeline.nodes))
            for node in pipeline.nodes:  # the run's free in-memory outputs, for KedroSession.run's result
                outputs = set(node.outputs) & pipeline.outputs()
                if outputs and any(_is_memory(catalog, n) for n in outputs):
                    for name, data in futures[node].result().items():
                        catalog.save(name, data)
        except _NodeFailed as failed:
            hooks.hook.on_node_error(error=failed.error, node=failed.node, catalog=catalog, inputs={},
                                     is_async=self._is_async, run_id=run_id)
            self._logger.error("Node %s failed on the Dask cluster: %s", failed.node.name, failed.error)
            self._suggest_resume_scenario(pipeline, done, catalog)
            raise failed.error from None
        finally:
            for future in futures.values():
                future.cancel()


class _NodeFailed(Exception):
    def __init__(self, node: Node, error: BaseException) -> None:
        super().__init__(node.name)
        self.node, self.error = node, error
