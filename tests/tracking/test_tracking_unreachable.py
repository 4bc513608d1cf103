"""#27 bad input: an unreachable MLflow tracking server is one clear error naming the address, within 10 s,
before any node runs and with nothing written (MLflow's own client retries for minutes)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml
from conftest import make_kedro_project, write_case

from lungseg.hooks import TrackingServerUnreachableError, check_tracking_server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_refused_port_and_a_silent_server_are_named_within_ten_seconds():
    address = f"http://127.0.0.1:{_free_port()}"
    start = time.monotonic()
    with pytest.raises(TrackingServerUnreachableError, match=f"MLflow tracking server '{address}' did not answer"):
        check_tracking_server(address)
    assert time.monotonic() - start < 10
    with socket.socket() as silent:  # accepts the connection (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        address = f"http://127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(TrackingServerUnreachableError, match="did not answer within 1 s"):
            check_tracking_server(address, timeout=1)
        assert time.monotonic() - start < 10


def test_kedro_run_against_a_dead_server_is_one_error_and_writes_nothing(tmp_path):
    raw = tmp_path / "raw"
    pd.DataFrame([write_case(raw, "c0", shape=(4, 32, 32))]).to_csv(raw / "metadata.csv", index=False)
    project = make_kedro_project(tmp_path, raw)
    address = f"http://127.0.0.1:{_free_port()}"
    mlflow_yml = project / "conf" / "test" / "mlflow.yml"
    conf = yaml.safe_load(mlflow_yml.read_text())
    conf["server"]["mlflow_tracking_uri"] = address
    mlflow_yml.write_text(yaml.safe_dump(conf))
    before = sorted(p.relative_to(project).as_posix() for p in project.rglob("*"))
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    proc = subprocess.run([sys.executable, "-m", "kedro", "run", "--env=test", "--pipelines=lung_unet"],
                          cwd=project, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and f"MLflow tracking server '{address}' did not answer" in errors[0], proc.stderr[-2000:]
    assert "Nothing was run or written" in errors[0] and "Traceback" not in proc.stderr
    after = sorted(p.relative_to(project).as_posix() for p in project.rglob("*") if "__pycache__" not in p.parts)
    assert after == before
