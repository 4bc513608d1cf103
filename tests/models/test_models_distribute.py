"""``training.distribution_strategy`` (#27 item 3): the replica rule, TF_CONFIG, ``mirrored`` on two logical
CPU devices and ``multi_worker`` with two ``lungseg train-worker`` processes on 127.0.0.1.

The two TensorFlow runs are subprocesses: logical devices and the collective ops of
MultiWorkerMirroredStrategy must be set before TensorFlow starts, which it has in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import PROJECT_ROOT, TINY_PREPROCESSING, make_kedro_project, write_case
from test_browser_tracking import free_port

from lungseg.errors import ConfigError
from lungseg.models.distribute import is_chief, scaled, shard, strategy_key, tf_config, worker_shard

TINY_UNET = {"architecture": "unet", "base_filters": 4, "depth": 2, "bn_momentum": 0.9}
TINY_TRAINING = {"epochs": 2, "batch_size": 4, "learning_rate": 5.0e-3, "loss": "bce_dice", "augment": None,
                 "reduce_lr": None, "verbose": 2, "backup_dir": None, "weights": "last"}

BASE_TRAINING = yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_training.yml").read_text())["_training"]


def _cluster(n: int) -> list[str]:
    return [f"127.0.0.1:{free_port()}" for _ in range(n)]


def test_replica_rule_tf_config_and_shards(monkeypatch):
    assert scaled(8, 1e-3, None) == (8, 1e-3)
    two = type("TwoReplicas", (), {"num_replicas_in_sync": 2})()
    assert scaled(8, 1e-3, two) == (16, 2e-3)
    assert strategy_key(None) == "none" and strategy_key("Multi_Worker") == "multi_worker"
    with pytest.raises(ConfigError, match="horovod"):
        strategy_key("horovod")

    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert is_chief()  # a single process is its own chief
    with pytest.raises(ConfigError, match="needs TF_CONFIG"):
        tf_config()
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ConfigError, match="TF_CONFIG is not a usable"):
        tf_config()
    workers = _cluster(3)
    for index, chief in ((0, True), (2, False)):
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
        assert is_chief() is chief and worker_shard() == (index, 3)

    x, y = np.arange(11)[:, None], np.arange(11)[:, None] * 10
    parts = [shard(x, y, i, 3, 2) for i in range(3)]
    assert [len(p[0]) for p in parts] == [3, 3, 3]  # the same steps on every worker
    assert sorted(np.concatenate([p[0][:, 0] for p in parts])) == list(range(9)) and (parts[1][1] == parts[1][0] * 10).all()
    _, _, regions = shard(x, y, 1, 3, 2, x * 7)  # an extra array of the same rows (the paint regions) is cut alike
    assert (regions == parts[1][0] * 7).all()


def _model_input_project(tmp_path):
    """A project whose data/05_model_input holds the lung model input of four small synthetic cases."""
    from kedro_datasets.partitions import PartitionedDataset

    from lungseg.datasets import NpzDataset
    from lungseg.ingest import ingest_dataset
    from lungseg.models.inputs import build_model_input, split_cases
    from lungseg.pipelines.preprocessing.nodes import enhance_cases

    raw = tmp_path / "raw"
    rows = [write_case(raw, f"case_{i}", "hu", shape=(12, 48, 48), seed=i) for i in range(4)]
    pd.DataFrame(rows).to_csv(raw / "metadata.csv", index=False)
    volumes = PartitionedDataset(path=str(raw), dataset="lungseg.datasets.NiftiDataset").load()
    table, canonical, _ = ingest_dataset(pd.read_csv(raw / "metadata.csv"), volumes, {})
    enhanced = enhance_cases(table, canonical, TINY_PREPROCESSING)
    model_input = build_model_input("lung", table, enhanced, TINY_PREPROCESSING)
    split = split_cases(table, {"method": "grouped", "val_fraction": 0.25, "n_folds": 5, "fold": 0, "seed": 0})
    project = make_kedro_project(tmp_path, raw, {"lung_unet": {"model": TINY_UNET, "training": TINY_TRAINING}})
    NpzDataset(str(project / "data/05_model_input/lung_model_input.npz")).save(model_input)
    split.to_csv(project / "data/05_model_input/case_split.csv", index=False)
    return project, model_input, split


_MIRRORED = """
import json, logging, sys
import numpy as np, pandas as pd, tensorflow as tf
logging.basicConfig(level=logging.INFO)
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from lungseg.datasets import NpzDataset
from lungseg.models.run import train_variant
model_input = NpzDataset(sys.argv[1]).load()
split = pd.read_csv(sys.argv[2])
training = {**json.loads(sys.argv[3]), "distribution_strategy": "mirrored"}
result = train_variant(model_input, split, json.loads(sys.argv[4]), training, "tiny")
print("RESULT", json.dumps({"replicas": result.model.distribute_strategy.num_replicas_in_sync,
                            "loss": result.history["loss"]}))
"""


def test_mirrored_on_two_logical_cpu_devices(tmp_path):
    project, _, _ = _model_input_project(tmp_path)
    data = project / "data/05_model_input"
    proc = subprocess.run([sys.executable, "-c", _MIRRORED, str(data / "lung_model_input.npz"), str(data / "case_split.csv"),
                           json.dumps({**BASE_TRAINING, **TINY_TRAINING}), json.dumps(TINY_UNET)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert result["replicas"] == 2
    assert result["loss"][-1] < result["loss"][0]
    assert "2 replicas: global batch 8, learning rate 0.01" in proc.stderr + proc.stdout


def _train_workers(project, workers: list[str]) -> tuple[list[int], list[str]]:
    """``lungseg train-worker`` once per worker of ``workers`` (processes on 127.0.0.1, together)."""
    procs = []
    for index in range(len(workers)):
        tf_conf = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_conf), "TF_CPP_MIN_LOG_LEVEL": "2",
               "KEDRO_DISABLE_TELEMETRY": "true", "CUDA_VISIBLE_DEVICES": ""}
        procs.append(subprocess.Popen([sys.executable, "-m", "lungseg", "train-worker", "--variant", "lung_unet",
                                       "--env", "test"], cwd=project, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            outs.append(out + err)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return [p.returncode for p in procs], outs


def _runs(project):
    from mlflow.tracking import MlflowClient

    if not (project / "mlflow.db").exists():
        return None, []
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    return client, [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def _check_one_model_and_one_run(project, workers: int) -> None:
    """One model and one config from the chief of ``workers``, one MLflow run with a falling loss and the
    logged model."""
    models = list((project / "data/06_models/lung_unet/model.keras").iterdir())
    configs = list((project / "data/06_models/lung_unet/model_config.json").iterdir())
    assert len(models) == 1 and len(configs) == 1
    config = json.loads((configs[0] / "model_config.json").read_text())
    assert config["distribution"] == {"strategy": "multi_worker", "workers": workers, "replicas": workers}
    client, runs = _runs(project)
    assert len(runs) == 1 and runs[0].data.tags["workers"] == str(workers)
    loss = [m.value for m in sorted(client.get_metric_history(runs[0].info.run_id, "loss"), key=lambda m: m.step)]
    assert len(loss) == 2 and loss[1] < loss[0]
    assert client.list_artifacts(runs[0].info.run_id)  # the logged model


def test_train_worker_on_a_one_worker_cluster_writes_one_model_and_one_run(tmp_path):
    project, _, _ = _model_input_project(tmp_path)
    codes, outs = _train_workers(project, _cluster(1))
    assert codes == [0], outs[0][-4000:]
    assert "chief of 1 workers: lung_unet saved" in outs[0]
    _check_one_model_and_one_run(project, workers=1)


def test_two_worker_processes_train_one_model_with_one_mlflow_run(tmp_path):
    """Two ``lungseg train-worker`` processes on 127.0.0.1, MultiWorkerMirroredStrategy over both (Keras'
    fit made to run across workers: lungseg.models.distribute.multi_worker_fit): one model and one MLflow
    run, from the chief; the loss falls; the other worker writes nothing."""
    project, _, _ = _model_input_project(tmp_path)
    codes, outs = _train_workers(project, _cluster(2))
    assert codes == [0, 0], "\n----\n".join(o[-3000:] for o in outs)
    assert "chief of 2 workers: lung_unet saved" in outs[0]
    assert "worker 1 of 2 done" in outs[1] and "saved" not in outs[1]
    assert "2 replicas: global batch 8" in outs[0]  # the replica rule: batch_size 4 per worker
    _check_one_model_and_one_run(project, workers=2)
