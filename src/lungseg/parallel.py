"""Per-case work on a Dask cluster when there is one, in this process when there is none.

The pipelines' nodes and the batch of ``lungseg predict`` call :func:`case_map` over their cases. Run by
:class:`lungseg.runner.DaskRunner` (the node is a task on a Dask worker), it submits one task per case to
the same cluster through :func:`distributed.worker_client`, which secedes the node's task from the
worker's thread pool while it waits, so a one-thread worker does not deadlock. Anywhere else (Kedro's
SequentialRunner, the web UI, a test) it is a plain ``map`` in this process. Dask schedules; nothing
here queues or pools work of its own.

:func:`open_client` connects to a scheduler (or starts a ``LocalCluster``) for the DaskRunner and for
``lungseg predict --dask``.

The results come back in the order of the items, whatever order the cases finish in, so the outputs
are those of the serial loop to the bit. At most ``ahead`` cases are in flight (submitted and not yet
consumed), so a cluster never holds every case's result at once.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from lungseg.errors import ConfigError

#: Seconds to wait for a scheduler before giving up.
CONNECT_TIMEOUT = 10
LOCAL = ("", "local", None)


class SchedulerUnreachableError(ConfigError):
    """The Dask scheduler of a run does not answer."""


@contextlib.contextmanager
def open_client(address: str | None = None, *, n_workers: int | None = None, threads_per_worker: int = 1,
                processes: bool = True, connect_timeout: float = CONNECT_TIMEOUT) -> Iterator[Any]:
    """A ``distributed.Client`` of the scheduler at ``address``, or of a ``LocalCluster`` started here (``None``
    or ``"local"``: ``n_workers`` workers, default one per core), closed (and the cluster stopped) on exit."""
    from distributed import Client, LocalCluster

    if address in LOCAL:
        kwargs = {"env": worker_env(threads_per_worker)} if processes else {}
        with LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=processes,
                          dashboard_address=None, **kwargs) as cluster, Client(cluster) as client:
            yield client
        return
    try:
        _probe(address, connect_timeout)
        client = Client(address, timeout=connect_timeout)
    except (OSError, TimeoutError) as exc:
        raise SchedulerUnreachableError(
            f"Dask scheduler {address!r} did not answer within {connect_timeout:g} s ({type(exc).__name__}: {exc}); "
            "start it with `dask scheduler`, or leave dask_client.address out for a local cluster") from exc
    with client:
        yield client


def worker_env(threads: int) -> dict[str, str]:
    """The environment of a local cluster's worker processes: TensorFlow's thread pools sized to the worker's
    ``threads`` (``TF_NUM_INTRAOP_THREADS`` / ``TF_NUM_INTEROP_THREADS``, read when TensorFlow starts), as Dask
    already does for OpenMP, MKL and OpenBLAS. Otherwise every worker's TensorFlow takes every core, and N
    workers on N cores oversubscribe them N times."""
    n = str(max(1, int(threads)))
    return {"TF_NUM_INTRAOP_THREADS": n, "TF_NUM_INTEROP_THREADS": n}


def limit_tensorflow_threads() -> None:
    """On a Dask worker whose TensorFlow has not started yet: size its thread pools to the worker's threads
    (what :func:`worker_env` does for a local cluster, for the workers of a cluster started elsewhere that
    did not set them). Anywhere else, or once TensorFlow runs, nothing."""
    import os
    import sys

    worker = _dask_worker()
    if worker is None or "TF_NUM_INTRAOP_THREADS" in os.environ:
        return
    threads = max(1, int(getattr(worker.state, "nthreads", 1)))
    os.environ.update(worker_env(threads))  # read by TensorFlow when it starts in this process
    if "tensorflow" in sys.modules:
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # TensorFlow already runs here: its pools stay as they are
            pass


def _probe(address: str, timeout: float) -> None:
    """Fail at once on a TCP scheduler address that refuses connections (``Client`` would retry until its
    timeout); other protocols (``inproc://``, ``tls://``...) are left to ``Client``."""
    rest = address[len("tcp://"):] if address.startswith("tcp://") else address
    if "://" in rest or ":" not in rest:
        return
    host, _, port = rest.rpartition(":")
    if port.isdigit():
        import socket

        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()


#: Cases in flight per worker thread of the cluster (two: one computing, one waiting to be picked up).
AHEAD_PER_THREAD = 2


def _dask_worker() -> Any | None:
    """The Dask worker running this code, or None."""
    try:
        from distributed import get_worker
    except ImportError:  # dask is a dependency, but a library function must not need it
        return None
    try:
        return get_worker()
    except ValueError:
        return None


def on_cluster() -> bool:
    """True inside a task on a Dask worker, where :func:`case_map` runs one task per item."""
    return _dask_worker() is not None


@contextlib.contextmanager
def cluster_client() -> Iterator[Any | None]:
    """A client of the Dask cluster this code runs on (inside a task on a worker), or None.

    Only a task running on a worker counts: a ``distributed.Client`` that merely exists in this process
    (a notebook's) is not used, so a SequentialRunner run stays in this process.
    """
    if _dask_worker() is None:
        yield None
        return
    from distributed import worker_client

    with worker_client() as client:
        yield client


def _threads(client) -> int:
    try:
        return max(1, sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values()))
    except Exception:  # an unusual scheduler: one task per worker is still correct
        return 1


def case_map(func: Callable[..., Any], items: Iterable[Any], *args: Any, ahead: int | None = None,
             pure: bool = False) -> Iterator[Any]:
    """``func(item, *args)`` for every item, in the items' order: on the cluster (one task per item)
    inside a Dask task, else here. An item's exception is raised when its result is reached, as the
    serial loop would raise it. ``ahead``: items in flight at most (default: two per worker thread).
    ``args`` travel with every task: keep them small (a case's own loaders, not the whole dataset's)."""
    items = list(items)
    with cluster_client() as client:
        if client is None:
            for item in items:
                yield func(item, *args)
            return
        ahead = ahead or AHEAD_PER_THREAD * _threads(client)
        pending: deque = deque()
        todo = iter(items)
        for item in todo:
            pending.append(client.submit(func, item, *args, pure=pure))
            if len(pending) >= ahead:
                break
        while pending:
            future = pending.popleft()
            result = future.result()
            future.release()
            for item in todo:  # refill one slot
                pending.append(client.submit(func, item, *args, pure=pure))
                break
            yield result


def bound(func: Callable[..., Any], key: Any, *args: Any) -> Callable[[], Any]:
    """``func(key, *args)`` as a picklable zero-argument callable: a lazy partition of a Kedro
    ``PartitionedDataset``, which :class:`lungseg.datasets.CasePartitionedDataset` may compute on a worker."""
    return _Bound(func, key, args)


class _Bound:
    """``func(key, *args)`` as a picklable zero-argument callable (a closure over a loop variable is not)."""

    __slots__ = ("func", "key", "args")

    def __init__(self, func, key, args) -> None:
        self.func, self.key, self.args = func, key, args

    def __call__(self) -> Any:
        return self.func(self.key, *self.args)

    def __repr__(self) -> str:
        return f"<lazy {getattr(self.func, '__name__', self.func)}({self.key!r})>"
