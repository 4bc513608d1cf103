"""#27 item 5: `kedro airflow create` (kedro-airflow) writes a DAG for infection_unet, one task per node.

Each Airflow task runs in a Kedro session of its own, so a ``MemoryDataset`` between two nodes would be
lost between their tasks: every dataset that one node of the pipeline writes and another reads must be a
persisted catalog entry. Airflow itself is not installed (apache-airflow 3.3 pins fastapi below the one
MLflow runs here); the DAG file is read with ``ast``, not imported under a ``DagBag``.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

from conftest import make_kedro_project
from test_pipelines import tiny_raw_dataset

_EDGES = """
import json, sys
from pathlib import Path
from kedro.framework.project import pipelines
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from kedro.io import MemoryDataset

bootstrap_project(Path.cwd())
with KedroSession.create(project_path=Path.cwd(), env="test") as session:
    catalog = session.load_context().catalog
    pipe = pipelines["infection_unet"]
    produced = {o for n in pipe.nodes for o in n.outputs}
    edges = sorted(produced & {i for n in pipe.nodes for i in n.inputs})
    print(json.dumps({"nodes": sorted(n.name for n in pipe.nodes), "edges": edges,
                      "memory": [d for d in edges if d not in catalog or isinstance(catalog.get(d), MemoryDataset)]}))
"""


def test_kedro_airflow_writes_a_dag_whose_tasks_pass_only_persisted_datasets(tmp_path):
    project = make_kedro_project(tmp_path, tiny_raw_dataset(tmp_path / "raw"))
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    proc = subprocess.run([sys.executable, "-c", _EDGES], cwd=project, capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "infection_unet.overlay_data" in found["edges"] and len(found["edges"]) >= 10
    assert found["memory"] == [], found["memory"]  # each node's inputs survive a task boundary

    dags = tmp_path / "dags"
    proc = subprocess.run([sys.executable, "-m", "kedro", "airflow", "create", "--pipelines=infection_unet",
                           "--env=test", f"--target-dir={dags}"], cwd=project, capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (dag,) = dags.glob("*.py")
    assert dag.name == "lungseg_test_infection_unet_dag.py"
    source = dag.read_text()
    ast.parse(source)  # valid Python for Airflow's DAG processor
    for name in found["nodes"]:  # one task per node, each running that node in the test environment
        assert f'"{name}"' in source or f"'{name}'" in source, name
    assert 'env = "test"' in source and 'pipeline_name = "infection_unet"' in source
