"""The Kedro project end to end: registry, KedroSession runs, MLflow contents."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import make_kedro_project, run_kedro

from lungseg.pipeline_registry import register_pipelines

VARIANTS = ("lung_unet", "lung_deeplabv3plus", "infection_unet", "infection_deeplabv3plus")
TINY_TRAINING = {
    "epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "loss": "bce_dice", "seed": 0, "threshold": 0.5,
    "reduce_lr": {"monitor": "val_loss", "factor": 0.5, "patience": 1, "min_lr": 1e-5},
    "early_stopping": None, "augment": {"hflip": True, "rotation_deg": 20.0, "scale_min": 0.9, "scale_max": 1.1},
    "distribution_strategy": "none", "verbose": 0,
    "run_eagerly": True,  # Keras eager mode: no graph traced, 4-5x faster on these tiny fits
}


TINY_MODELS = {
    "unet": {"architecture": "unet", "base_filters": 4, "depth": 2},
    # ResNet50 (weights None, offline) cut after its conv3 stage: 32 px is the smallest size it takes
    "deeplabv3plus": {"architecture": "deeplabv3plus", "backbone_weights": None, "low_level_layer": "conv2_block3_out",
                      "high_level_layer": "conv3_block4_out", "aspp_filters": 8, "decoder_filters": 8,
                      "low_level_filters": 8, "bn_momentum": 0.9},
}


def tiny_variant_params(variant: str, **training) -> dict:
    return {variant: {"model": TINY_MODELS[variant.split("_", 1)[1]],
                      "training": {**TINY_TRAINING, "backup_dir": f"data/06_models/{variant}/backup", **training}}}


def tiny_raw_dataset(raw: Path, n: int = 4) -> Path:
    """``n`` phantom cases (HU and 0-255 alternating) and their metadata.csv under ``raw``."""
    from conftest import write_case

    rows = [write_case(raw, f"case_{i}", "hu" if i % 2 else "uint8", shape=(10, 48, 48), seed=i) for i in range(n)]
    pd.DataFrame(rows).to_csv(raw / "metadata.csv", index=False)
    return raw


def test_registry_holds_every_pipeline_and_the_expected_nodes():
    pipes = register_pipelines()
    assert {"__default__", "synthetic_data", "ingestion", "preprocessing", "inference", *VARIANTS} <= set(pipes)
    for variant in VARIANTS:
        names = {n.name for n in pipes[variant].nodes}
        task = variant.split("_")[0]
        assert {f"{variant}.train_model", f"{variant}.evaluate_model", f"{variant}.plot_training_curves",
                f"{variant}.plot_overlays", f"{variant}.metrics_table", "ingestion.ingest_cases",
                "preprocessing.enhance_cases", "preprocessing.split_cases",
                f"preprocessing.build_{task}_model_input", "evaluation.evaluate_baselines",
                "evaluation.compare_variants"} <= names
        other = {v for v in VARIANTS if v != variant}
        assert not any(n.split(".")[0] in other for n in names)
    # namespaced datasets and parameters
    train = next(n for n in pipes["infection_unet"].nodes if n.name == "infection_unet.train_model")
    assert "params:infection_unet.training" in train.inputs and "preprocessing.infection_model_input" in train.inputs
    assert "infection_unet.model" in train.outputs


def test_synthetic_data_then_ingestion_through_a_kedro_session(tmp_path):
    raw = tmp_path / "synthetic"
    project = make_kedro_project(tmp_path, raw, {"synthetic_data": {"profile": "tiny", "seed": 3}})
    run_kedro(project, "synthetic_data")
    meta = pd.read_csv(raw / "metadata.csv")
    assert len(meta) >= 3 and meta["ct_scan"].str.startswith("../input/covid19-ct-scans/").all()
    run_kedro(project, "ingestion")
    table = pd.read_csv(project / "data/02_intermediate/case_table.csv")
    assert len(table) == len(meta)
    assert set(table["source_kind"]) == {"hu", "uint8"}
    assert table["orientation"].nunique() > 1  # some cases are stored in another orientation
    cases = sorted(p.stem for p in (project / "data/02_intermediate/canonical_cases").glob("*.npz"))
    assert cases == sorted(table["case_id"])


@pytest.fixture(scope="module")
def trained_project(tmp_path_factory):
    """One tiny ``infection_unet`` run through a KedroSession, with its own MLflow database."""
    tmp = tmp_path_factory.mktemp("e2e")
    raw = tiny_raw_dataset(tmp / "raw")
    project = make_kedro_project(tmp, raw, tiny_variant_params("infection_unet"))
    run_kedro(project, "infection_unet")
    return project


def test_variant_run_writes_models_and_reports(trained_project):
    p = trained_project
    models = list((p / "data/06_models/infection_unet/model.keras").glob("*/model.keras"))
    configs = list((p / "data/06_models/infection_unet/model_config.json").glob("*/model_config.json"))
    assert len(models) == 1 and len(configs) == 1
    assert models[0].parent.name == configs[0].parent.name  # same version: the config travels with the model
    config = json.loads(configs[0].read_text())
    assert config["task"] == "infection" and config["crop_mode"] == "lung_mask" and config["image_size"] == 32
    assert config["dataset"] == "tiny" and config["environment"] == "test"  # provenance (#29): the run's env
    rep = p / "data/08_reporting/infection_unet"
    for name in ("metrics.json", "metrics.csv", "slice_metrics.csv", "case_metrics.csv", "history.json",
                 "training_curves.png", "overlays.png"):
        assert (rep / name).exists(), name
    metrics = json.loads((rep / "metrics.json").read_text())
    for key in ("slice_dice", "slice_iou", "slice_precision", "slice_recall", "slice_f1", "case_dice", "case_nsd",
                "case_hd95"):
        assert key in metrics, key
    assert 0.0 <= metrics["slice_dice"] <= 1.0
    comparison = pd.read_csv(p / "data/08_reporting/comparison.csv")
    assert {"infection_unet", "infection_baseline"} <= set(comparison["variant"])
    assert comparison.loc[comparison.variant == "infection_unet", "paper_dice"].item() == pytest.approx(0.7210)


def test_variant_run_is_one_complete_mlflow_run(trained_project):
    mlflow.set_tracking_uri(f"sqlite:///{trained_project / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["lungseg"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "infection_unet"
    assert {k: run.data.tags[k] for k in ("task", "architecture", "dataset", "env")} == {
        "task": "infection", "architecture": "unet", "dataset": "tiny", "env": "test"}
    assert "environment" not in run.data.tags  # one environment tag: kedro-mlflow's env (#29)
    assert run.data.tags["runner"] == "SequentialRunner"  # the class, not its repr
    # a KedroSession from Python (sys.argv is the interpreter's): the equivalent command, --env included
    assert run.data.tags["kedro_command"] == "kedro run --pipelines=infection_unet --env=test"
    assert run.data.params["training.learning_rate"] == "0.001"  # flattened, without the variant (lines up in Compare)
    assert run.data.tags["variant"] == "infection_unet" and not any(k.startswith("infection_unet.") for k in run.data.params)
    client = mlflow.MlflowClient()
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in history] == [0, 1]
    assert "eval_slice_dice" in run.data.metrics and "val_dice" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "infection_unet")}
    assert {"infection_unet/metrics.json", "infection_unet/overlays.png", "infection_unet/training_curves.png",
            "infection_unet/model_config.json"} <= artifacts
    logged = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert len(logged) == 1 and logged[0].name == "infection_unet_model"
    import lungseg.models  # noqa: F401  (registers the custom losses and metrics)

    model = mlflow.keras.load_model(f"models:/{logged[0].model_id}")
    x = np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)
    y = np.asarray(model.predict(x, verbose=0))
    assert y.shape == (2, 32, 32, 1) and ((y >= 0) & (y <= 1)).all()
    info = mlflow.models.get_model_info(f"models:/{logged[0].model_id}")
    assert info.signature is not None and "ct_slices" in str(info.signature.inputs)


# ----------------------------------------------------------------------------- runs observed from inside
# A KedroSession in a fresh process (as ``run_kedro``) with two observers: a node hook registered on
# the session (``after_node_run``: which nodes ran, in order) and a Keras callback added to every
# ``fit`` (which epochs ran). ``crash_at`` >= 0 raises at the start of that epoch, as a killed process
# would stop: after the previous epoch's backup, before the next one.
_OBSERVED_SESSION = """
import json
import sys
from pathlib import Path

import keras
from kedro.framework.hooks import hook_impl
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

project, pipeline, log_path, crash_at = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
log = {"nodes": [], "fits": []}


def dump():
    log_path.write_text(json.dumps(log))


class NodeLog:
    @hook_impl
    def after_node_run(self, node):
        log["nodes"].append({"name": node.name, "outputs": sorted(node.outputs)})
        dump()


class EpochLog(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        log["fits"].append([])

    def on_epoch_begin(self, epoch, logs=None):
        log["fits"][-1].append(epoch)
        dump()
        if epoch == crash_at:
            raise RuntimeError(f"simulated crash at the start of epoch {epoch}")


_fit = keras.Model.fit


def fit(self, *args, callbacks=None, **kwargs):
    return _fit(self, *args, callbacks=[*(callbacks or []), EpochLog()], **kwargs)


keras.Model.fit = fit
bootstrap_project(project)
with KedroSession.create(project_path=project, env="test") as session:
    session._hook_manager.register(NodeLog())
    session.run(pipeline_name=pipeline)
"""


def run_observed(project: Path, pipeline: str, crash_at: int = -1) -> tuple[dict, subprocess.CompletedProcess]:
    """Run ``pipeline`` in a fresh process; return what ran (``nodes``, ``fits``) and the process."""
    log = project / f"observed_{pipeline}_{crash_at}.json"
    proc = subprocess.run(
        [sys.executable, "-c", _OBSERVED_SESSION, str(project), pipeline, str(log), str(crash_at)],
        cwd=project, capture_output=True, text=True, timeout=900,
        env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"},
    )
    observed = json.loads(log.read_text()) if log.is_file() else {"nodes": [], "fits": []}
    if crash_at < 0 and proc.returncode != 0:
        raise AssertionError(f"kedro session for {pipeline!r} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return observed, proc


def _producer(pipeline, dataset: str) -> str:
    return next(n.name for n in pipeline.nodes if dataset in n.outputs)


def test_default_run_runs_each_shared_node_once_and_every_variant(tmp_path):
    """``__default__`` on a tiny dataset: ingestion, preprocessing, the baseline and the comparison
    run exactly once while all four variants train (a real, one-step fit) and evaluate."""
    raw = tiny_raw_dataset(tmp_path / "raw")
    params = {}
    for variant in VARIANTS:
        params.update(tiny_variant_params(variant, epochs=1, max_train_slices=2))
    project = make_kedro_project(tmp_path, raw, params)
    observed, _ = run_observed(project, "__default__")

    default = register_pipelines()["__default__"]
    counts = Counter(n["name"] for n in observed["nodes"])
    assert counts == Counter(n.name for n in default.nodes)  # every node of the pipeline, each once
    shared = {
        "ingestion": _producer(default, "case_table"),
        "preprocessing": _producer(default, "preprocessing.enhanced_cases"),
        "lung model input": _producer(default, "preprocessing.lung_model_input"),
        "infection model input": _producer(default, "preprocessing.infection_model_input"),
        "split": _producer(default, "preprocessing.case_split"),
        "baseline": _producer(default, "evaluation.baseline_metrics"),
        "comparison": _producer(default, "evaluation.comparison_table"),
    }
    assert {step: counts[name] for step, name in shared.items()} == dict.fromkeys(shared, 1)
    # four trainings, each a single one-epoch fit, each followed by its evaluation
    assert observed["fits"] == [[0]] * len(VARIANTS)
    order = [n["name"] for n in observed["nodes"]]
    for variant in VARIANTS:
        train, evaluate = _producer(default, f"{variant}.model"), _producer(default, f"{variant}.metrics")
        assert counts[train] == counts[evaluate] == 1
        assert order.index(shared["preprocessing"]) < order.index(train) < order.index(evaluate)
        assert order.index(evaluate) < order.index(shared["comparison"])
        metrics = json.loads((project / f"data/08_reporting/{variant}/metrics.json").read_text())
        assert 0.0 <= metrics["slice_dice"] <= 1.0
        assert len(json.loads((project / f"data/08_reporting/{variant}/history.json").read_text())["loss"]) == 1
    comparison = pd.read_csv(project / "data/08_reporting/comparison.csv")
    assert set(VARIANTS) <= set(comparison["variant"])


def test_second_kedro_run_resumes_from_the_backup_of_a_crashed_one(tmp_path):
    """A session crashes at the start of epoch 2 of 3; the next session of the same pipeline finds
    its ``backup_dir``, trains only epochs 2 and 3, keeps the whole history and removes the backup."""
    variant = "infection_unet"
    raw = tiny_raw_dataset(tmp_path / "raw")
    project = make_kedro_project(tmp_path, raw, tiny_variant_params(variant, epochs=3))
    backup = project / f"data/06_models/{variant}/backup"

    crashed, proc = run_observed(project, variant, crash_at=1)
    assert proc.returncode != 0 and "simulated crash at the start of epoch 1" in proc.stderr
    assert crashed["fits"] == [[0, 1]]
    assert json.loads((backup / "keras_backup" / "training_metadata.json").read_text())["epoch"] == 1
    before = json.loads((backup / "lungseg_state" / "state.json").read_text())["history"]
    assert len(before["loss"]) == 1
    assert not list((project / f"data/06_models/{variant}/model.keras").glob("*/model.keras"))  # nothing saved

    resumed, _ = run_observed(project, variant)
    assert resumed["fits"] == [[1, 2]]  # epoch 1 (the first) was not trained again
    history = json.loads((project / f"data/08_reporting/{variant}/history.json").read_text())
    assert len(history["loss"]) == len(history["val_loss"]) == 3
    assert history["loss"][0] == pytest.approx(before["loss"][0])
    assert history["val_loss"][0] == pytest.approx(before["val_loss"][0])
    assert len(list((project / f"data/06_models/{variant}/model.keras").glob("*/model.keras"))) == 1
    assert not backup.exists()  # cleaned up after the clean finish
