"""lungseg.runner.DaskRunner and the per-case tasks of ingestion and preprocessing (#27 item 1).

* ``kedro run --pipelines=preprocessing`` (ingestion + preprocessing) under SequentialRunner, then under
  DaskRunner on a 2-worker LocalCluster: the same files, the same arrays to the bit, the same tables.
* The nodes' lazy partitions and datasets pickle (what travels to a worker process).
* In-memory datasets between worker nodes and a driver node; a failing node is reported by name.
* An unreachable scheduler: one error naming the address, within the timeout, before any node runs.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import PROJECT_ROOT, make_kedro_project
from test_browser_tracking import free_port

pytest.importorskip("distributed")

_TWO_RUNS = """
import shutil, sys
from pathlib import Path
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from kedro.runner import SequentialRunner
from lungseg.runner import DaskRunner

project = Path(sys.argv[1])
bootstrap_project(project)
outputs = ["data/02_intermediate", "data/03_primary", "data/05_model_input", "data/08_reporting"]
for name, runner in (("sequential", SequentialRunner()), ("dask", DaskRunner(n_workers=2, processes=False))):
    with KedroSession.create(project_path=project, env="test") as session:
        session.run(pipeline_names=["preprocessing"], runner=runner)
    for rel in outputs:
        shutil.move(str(project / rel), str(project / name / rel))
        (project / rel).mkdir(parents=True)
"""


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_preprocessing_under_dask_runner_equals_sequential_runner(tmp_path, tiny_dataset):
    project = make_kedro_project(tmp_path, tiny_dataset)
    proc = subprocess.run([sys.executable, "-c", _TWO_RUNS, str(project)], cwd=project, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "TQDM_DISABLE": "1",
                                                            "KEDRO_LOGGING_CONFIG": str(PROJECT_ROOT / "conf" / "logging.yml")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    seq, dask = project / "sequential", project / "dask"
    files = _files(seq)
    assert files == _files(dask)
    npz = [f for f in files if f.endswith(".npz")]
    assert {"data/05_model_input/lung_model_input.npz", "data/05_model_input/infection_model_input.npz"} <= set(npz)
    assert sum(f.startswith("data/02_intermediate/canonical_cases/") for f in npz) == 3
    assert sum(f.startswith("data/03_primary/enhanced_cases/") for f in npz) == 3
    for rel in npz:
        with np.load(seq / rel) as a, np.load(dask / rel) as b:
            assert a.files == b.files, rel
            for key in a.files:
                assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, (rel, key)
                assert a[key].tobytes() == b[key].tobytes(), f"{rel}[{key}] differs"
    for rel in (f for f in files if f.endswith(".csv") or f.endswith(".json")):
        assert (seq / rel).read_bytes() == (dask / rel).read_bytes(), rel
    assert "Running 8 node(s) on the Dask cluster (local" in proc.stdout + proc.stderr  # one line per record


def test_lazy_partitions_and_their_datasets_pickle(tiny_dataset):
    """What a worker process receives: the lazy canonical and enhanced cases (bound to their datasets)."""
    from conftest import TINY_PREPROCESSING
    from kedro_datasets.partitions import PartitionedDataset

    from lungseg.ingest import ingest_dataset
    from lungseg.pipelines.preprocessing.nodes import enhance_cases

    volumes = PartitionedDataset(path=str(tiny_dataset), dataset="lungseg.datasets.NiftiDataset").load()
    table, canonical, _ = ingest_dataset(pd.read_csv(tiny_dataset / "metadata.csv"), volumes, {})
    canonical = {case: pickle.loads(pickle.dumps(load)) for case, load in canonical.items()}
    case = table["case_id"].iloc[0]
    rec = canonical[case]()
    assert rec["ct"].shape == rec["lung"].shape == (8, 48, 48) and set(np.unique(rec["lung"])) == {0, 1, 2}
    enhanced = pickle.loads(pickle.dumps(enhance_cases(table, canonical, TINY_PREPROCESSING)))
    assert enhanced[case]()["image"].dtype == np.uint8


# ------------------------------------------------------------------------------ the runner on a toy pipeline
def _double(x):
    return [v * 2 for v in x]


def _total(x, y):
    return sum(x) + sum(y)


def _broken(x):
    raise ValueError(f"broken on {x}")


def _toy_catalog():
    from kedro.io import DataCatalog, MemoryDataset

    return DataCatalog(datasets={"numbers": MemoryDataset([1, 2, 3])})


def test_memory_datasets_travel_between_worker_nodes_and_failures_name_the_node():
    from kedro.pipeline import Node, Pipeline

    from lungseg.runner import DaskRunner

    pipe = Pipeline([Node(_double, "numbers", "doubled", name="double"),
                     Node(_double, "doubled", "quadrupled", name="again"),
                     Node(_total, ["doubled", "quadrupled"], "total", name="total")])
    catalog = _toy_catalog()
    DaskRunner(n_workers=2, processes=False).run(pipe, catalog)
    assert catalog.load("total") == (2 + 4 + 6) + (4 + 8 + 12)

    broken = Pipeline([Node(_double, "numbers", "doubled", name="double"),
                       Node(_broken, "doubled", "nothing", name="broken_node"),
                       Node(_double, "nothing", "never", name="after")])
    calls: list[tuple[str, str]] = []
    hooks = SimpleNamespace(hook=SimpleNamespace(
        before_node_run=lambda node, **kw: calls.append(("before", node.name)),
        on_node_error=lambda error, node, **kw: calls.append(("error", node.name))))
    with pytest.raises(ValueError, match=r"broken on \[2, 4, 6\]"):
        DaskRunner(n_workers=2, processes=False).run(broken, _toy_catalog(), hook_manager=hooks)
    assert ("error", "broken_node") in calls and [c for c in calls if c[0] == "error"] == [("error", "broken_node")]
    assert {("before", "double"), ("before", "broken_node")} <= set(calls)  # called in the driver


def test_unreachable_scheduler_is_one_error_naming_the_address(tmp_path):
    from kedro.io import DataCatalog, MemoryDataset
    from kedro.pipeline import Node, Pipeline

    from lungseg.runner import DaskRunner, SchedulerUnreachableError

    address = f"tcp://127.0.0.1:{free_port()}"
    out = tmp_path / "never.txt"
    catalog = DataCatalog(datasets={"numbers": MemoryDataset([1]), "params:dask_client": MemoryDataset({"address": address})})
    pipe = Pipeline([Node(lambda x: out.write_text("ran"), "numbers", None, name="writes")])
    start = time.monotonic()
    with pytest.raises(SchedulerUnreachableError, match=address.replace(".", r"\.")):
        DaskRunner(connect_timeout=2).run(pipe, catalog)
    assert time.monotonic() - start < 10
    assert not out.exists()


_GATES: dict[str, object] = {}


def _head_waits_for_last(i, n, gate_name, timeout):
    """Item 0 waits until the last item has run: True only if the last was in flight beside the first."""
    import threading

    gate = _GATES.setdefault(gate_name, threading.Event())
    if i == n - 1:
        gate.set()
    return gate.wait(timeout=timeout) if i == 0 else True


def _case_map_on_cluster(n, ahead, gate_name, timeout):
    from lungseg.parallel import case_map

    return list(case_map(_head_waits_for_last, range(n), n, gate_name, timeout, ahead=ahead))


def test_all_cases_in_flight_lets_the_rest_pass_a_long_first_case():
    """Ingestion and the partition saves put every case in flight (their results are small): a case that
    is still running at the head does not keep the workers from the later cases. With a window (the
    default for large results) the last case waits for the first, as a window must."""
    from lungseg.parallel import open_client

    n = 10
    with open_client(None, n_workers=1, threads_per_worker=3, processes=False) as client:
        assert client.submit(_case_map_on_cluster, n, n, "all", 30, pure=False).result() == [True] * n
        windowed = client.submit(_case_map_on_cluster, n, 3, "window", 1, pure=False).result()
    assert windowed == [False] + [True] * (n - 1)
