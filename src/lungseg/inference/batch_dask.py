"""``lungseg predict metadata.csv -o OUT --dask ADDRESS|local``: one Dask task per case.

The batch of :func:`lungseg.inference.batch.run_batch`, with each case's
:func:`~lungseg.inference.batch.segment_case` run as a task on a ``dask.distributed`` cluster:

* **Models once per worker.** A task gets ``make_segmenter`` (a picklable callable that loads the models
  the driver resolved) and a batch token; the first task of a batch on a worker process builds the
  :class:`~lungseg.inference.segment.Segmenter`, the others reuse it (:func:`worker_segmenter`).
* **Largest first, one thread each.** Cases are submitted largest input first (:func:`largest_first`), and
  a worker's TensorFlow uses the worker's threads only (:func:`lungseg.parallel.limit_tensorflow_threads`);
  the workers import TensorFlow while the driver loads the models (:func:`warm_up_workers`).
* **Failure isolation.** A case that fails is its row's ``status`` / ``error``, as in the serial batch; a
  task that cannot finish at all (its worker died more often than Dask's ``allowed-failures``) is an
  error row naming the case, and the other cases go on. A rerun into the same ``-o`` completes them.
* **The ``-o`` lock and atomic writes.** The driver holds the output lock for the whole batch and is the
  only process that writes the folder's manifest and ``summary.csv``; each worker writes its own case
  folder with :func:`~lungseg.inference.report.write_outputs` (temporary files, then rename). Workers
  must see ``OUT`` and the inputs at the same paths (one host, or a shared disk).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from lungseg.inference.batch import batch_summary, failed_row, finish_case, log_case, segment_case, start_batch
from lungseg.layout import TASKS

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_segmenters: dict[str, Any] = {}  # batch token -> Segmenter, in this (worker) process
loads = 0  # Segmenters built in this process (the tests read it)


def worker_segmenter(token: str, make_segmenter: Callable[[], Any]) -> Any:
    """The Segmenter of batch ``token`` in this process, built by ``make_segmenter()`` on first use only;
    an earlier batch's models are dropped."""
    global loads
    with _lock:
        if token not in _segmenters:
            from lungseg.parallel import limit_tensorflow_threads

            limit_tensorflow_threads()
            _segmenters.clear()
            _segmenters[token] = make_segmenter()
            loads += 1
        return _segmenters[token]


def _import_tensorflow() -> None:
    from lungseg.parallel import limit_tensorflow_threads

    limit_tensorflow_threads()  # before TensorFlow starts in the worker
    from lungseg.tf_quiet import import_quietly

    import_quietly()
    import keras  # noqa: F401  (what loading the models imports first)


def warm_up_workers(client) -> None:
    """Have every worker import TensorFlow and Keras now, without waiting (``Client.run(wait=False)``): it
    overlaps the driver's own loading of the models, which comes next. Best effort: a worker that joins later,
    or one where this fails, imports them with its first case."""
    try:
        client.run(_import_tensorflow, wait=False)
    except Exception as exc:  # never a reason to stop the batch
        logger.debug("could not warm the Dask workers up: %s: %s", type(exc).__name__, exc)


def input_bytes(item) -> int:
    """The size on disk of a case's input (a file, or a DICOM series' folder); 0 when it cannot be read."""
    path = Path(item.file)
    try:
        if path.is_dir():
            return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        return path.stat().st_size
    except OSError:
        return 0


def largest_first(items: Sequence) -> list[int]:
    """The cases' indices, largest input first (ties in the batch's order): the longest tasks start first,
    so that the last task to finish is a short one and the workers stay busy to the end (the
    longest-processing-time rule). The summary keeps the batch's order whatever the order of the tasks."""
    sizes = [input_bytes(item) for item in items]
    return sorted(range(len(items)), key=lambda i: (-sizes[i], i))


def _case_task(token: str, make_segmenter: Callable[[], Any], item, outdir: Path, tasks: Sequence[str], limits,
               overwrite: bool) -> dict:
    try:
        segmenter = worker_segmenter(token, make_segmenter)
    except Exception as exc:  # the models do not load on this worker: every case of it says so
        return failed_row(item, f"models could not be loaded on the Dask worker: {type(exc).__name__}: {exc}")
    return segment_case(segmenter, item, outdir, tasks, limits, overwrite)


def run_batch_dask(client, make_segmenter: Callable[[], Any], cases: Sequence[tuple], outdir: str | Path,
                   tasks: Sequence[str] = TASKS, progress: bool = True, *, limits,
                   overwrite: bool = False) -> pd.DataFrame:
    """:func:`lungseg.inference.batch.run_batch` on the cluster of ``client`` (see the module docstring);
    the summary keeps the cases' order."""
    from distributed import as_completed

    outdir, items, limits = start_batch(outdir, cases, limits, overwrite)
    token = uuid.uuid4().hex
    futures = {client.submit(_case_task, token, make_segmenter, items[i], outdir, tuple(tasks), limits, overwrite,
                             key=f"lungseg-case-{items[i].case}-{token[:8]}", pure=False, priority=-rank): i
               for rank, i in enumerate(largest_first(items))}
    rows: list[dict | None] = [None] * len(items)
    done = 0
    for future in tqdm(as_completed(list(futures)), total=len(items), desc="cases", unit="case", disable=not progress):
        i = futures[future]
        try:
            row = future.result()
        except Exception as exc:  # the task itself was lost (KilledWorker...): this case only
            logger.error("case %s failed on the Dask cluster: %s: %s", items[i].case, type(exc).__name__, exc)
            row = failed_row(items[i], f"Dask task failed: {type(exc).__name__}: {exc}; rerun the batch to complete it")
        rows[i] = finish_case(outdir, row)
        done += 1
        if not progress:
            log_case(row, done, len(items))
        future.release()
    return batch_summary(rows)
