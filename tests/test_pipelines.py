"""The Kedro project end to end: registry, KedroSession runs, MLflow contents."""

from __future__ import annotations

import json
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
}


def tiny_variant_params(variant: str) -> dict:
    return {variant: {"model": {"architecture": "unet", "base_filters": 4, "depth": 2},
                      "training": {**TINY_TRAINING, "backup_dir": f"data/06_models/{variant}/backup"}}}


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
    default = {n.name for n in pipes["__default__"].nodes}
    # the shared steps appear once, the four variants each once
    assert sum(n == "preprocessing.enhance_cases" for n in default) == 1
    assert all(f"{v}.train_model" in default for v in VARIANTS)
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
    from conftest import write_case

    tmp = tmp_path_factory.mktemp("e2e")
    raw = tmp / "raw"
    rows = [write_case(raw, f"case_{i}", "hu" if i % 2 else "uint8", shape=(10, 48, 48), seed=i) for i in range(4)]
    pd.DataFrame(rows).to_csv(raw / "metadata.csv", index=False)
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
    assert {k: run.data.tags[k] for k in ("task", "architecture", "dataset", "environment")} == {
        "task": "infection", "architecture": "unet", "dataset": "tiny", "environment": "test"}
    assert run.data.params["infection_unet.training.learning_rate"] == "0.001"  # flattened
    client = mlflow.MlflowClient()
    history = client.get_metric_history(run.info.run_id, "infection_unet.val_loss")
    assert [m.step for m in history] == [0, 1]
    assert "infection_unet.eval_slice_dice" in run.data.metrics
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
