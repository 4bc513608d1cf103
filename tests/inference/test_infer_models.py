"""lungseg.inference.models: finding trained models, their configs, and loading (files and MLflow)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from lungseg.errors import ConfigError, ModelNotFoundError
from lungseg.inference.models import (
    config_path_for,
    find_latest_model,
    list_trained_models,
    load_model_spec,
)

V1, V2, V3 = "2025-01-01T10.00.00.000Z", "2025-02-01T10.00.00.000Z", "2025-03-01T10.00.00.000Z"


def _config(task, size=32, **extra):
    crop = "body" if task == "lung" else "lung_mask"
    return {"task": task, "architecture": "unet", "image_size": size, "crop_mode": crop, "window": [-1250, 250],
            "clahe_clip_limit": 2.0, "clahe_tile_grid": 4, "crop_margin": 2, "threshold": 0.5, **extra}


def _fake_versioned(models_dir, variant, version, config=True):
    """A versioned model file (content irrelevant for finding) and its config of the same version."""
    task = variant.split("_")[0]
    path = models_dir / variant / "model.keras" / version / "model.keras"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"placeholder")
    if config:
        cfg = models_dir / variant / "model_config.json" / version / "model_config.json"
        cfg.parent.mkdir(parents=True)
        cfg.write_text(json.dumps(_config(task, version=version)))
    return path


def test_list_and_find_latest(tmp_path):
    models = tmp_path / "06_models"
    _fake_versioned(models, "lung_unet", V1)
    newest_lung = _fake_versioned(models, "lung_deeplabv3plus", V2)
    _fake_versioned(models, "lung_unet", "2025-01-15T10.00.00.000Z")  # older than V2
    inf = _fake_versioned(models, "infection_unet", V3)
    (models / "not_a_variant").mkdir()

    found = list_trained_models(models)
    assert set(found) == {"lung", "infection"}
    assert [e["version"] for e in found["lung"]] == sorted((e["version"] for e in found["lung"]), reverse=True)
    assert found["lung"][0]["path"] == newest_lung and found["lung"][0]["variant"] == "lung_deeplabv3plus"
    assert find_latest_model("lung", models) == newest_lung
    assert find_latest_model("lung", models, architecture="unet").parts[-2] == "2025-01-15T10.00.00.000Z"
    assert find_latest_model("infection", models) == inf
    assert list_trained_models(tmp_path / "absent") == {"lung": [], "infection": []}


def test_no_model_names_the_training_commands(tmp_path):
    with pytest.raises(ModelNotFoundError) as exc:
        find_latest_model("infection", tmp_path)
    assert "kedro run --pipelines=infection_unet" in str(exc.value) and "make demo" in str(exc.value)
    with pytest.raises(ModelNotFoundError, match="kedro run --pipelines=lung_unet"):
        load_model_spec(None, "lung", tmp_path)


def test_config_lookup_rules(tmp_path):
    versioned = _fake_versioned(tmp_path / "m", "lung_unet", V2)
    assert config_path_for(versioned).parts[-2] == V2
    # A model version without a config of its own version takes the newest older config.
    lone = _fake_versioned(tmp_path / "m", "lung_unet", V3, config=False)
    assert config_path_for(lone).parts[-2] == V2

    explicit = tmp_path / "exported" / "best.keras"
    explicit.parent.mkdir()
    explicit.write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match=r"best\.keras.*no preprocessing config"):
        config_path_for(explicit)
    (tmp_path / "exported" / "best.json").write_text("{}")
    assert config_path_for(explicit).name == "best.json"
    (tmp_path / "exported" / "model_config.json").write_text("{}")
    assert config_path_for(explicit).name == "model_config.json"


@pytest.fixture(scope="module")
def tiny_unet_file(tmp_path_factory):
    from lungseg.models import build_model

    folder = tmp_path_factory.mktemp("explicit")
    model = build_model("unet", 32, {"base_filters": 4, "depth": 2})
    path = folder / "lung.keras"
    model.save(path)
    (folder / "model_config.json").write_text(json.dumps(_config("lung")))
    x = np.random.default_rng(0).random((3, 32, 32, 1)).astype(np.float32)
    return path, np.asarray(model.predict_on_batch(x)), x


def test_load_explicit_model_with_its_config(tiny_unet_file):
    path, expected, x = tiny_unet_file
    loaded = load_model_spec(str(path), "lung", "unused")
    assert loaded.config["image_size"] == 32 and loaded.config["crop_mode"] == "body" and loaded.threshold == 0.5
    assert loaded.source == str(path)
    np.testing.assert_allclose(np.asarray(loaded.model.predict_on_batch(x)), expected, atol=1e-5)
    with pytest.raises(ConfigError, match="trained for the 'lung' task"):
        load_model_spec(str(path), "infection", "unused")


def test_config_must_match_the_model_size(tiny_unet_file, tmp_path):
    path, _, _ = tiny_unet_file
    other = tmp_path / "lung.keras"
    other.write_bytes(path.read_bytes())
    (tmp_path / "lung.json").write_text(json.dumps(_config("lung", size=64)))
    with pytest.raises(ConfigError, match="takes 32x32 images but its config says image_size 64"):
        load_model_spec(other, "lung", "unused")


def test_mlflow_uris(tiny_unet_file, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    import mlflow
    import mlflow.keras

    from lungseg.models import load_model

    path, expected, x = tiny_unet_file
    previous = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    try:
        exp = mlflow.create_experiment("infer-test", artifact_location=(tmp_path / "artifacts").as_uri())
        model = load_model(path)
        reqs = {"pip_requirements": ["keras"]}  # skips MLflow's slow requirement inference
        with mlflow.start_run(experiment_id=exp) as run:  # config as a run artifact
            mlflow.keras.log_model(model, name="model", **reqs)
            mlflow.log_dict(_config("lung"), "model_config.json")
        with mlflow.start_run(experiment_id=exp) as run2:  # config in the model's metadata only
            mlflow.keras.log_model(model, name="model", metadata={"model_config": _config("lung", threshold=0.4)}, **reqs)
        with mlflow.start_run(experiment_id=exp) as run3:  # no config at all
            mlflow.keras.log_model(model, name="model", **reqs)
        with mlflow.start_run(experiment_id=exp) as run4:  # the training pipeline's layout: one run, 2 variants
            mlflow.keras.log_model(model, name="lung_unet_model", **reqs)
            mlflow.log_dict(_config("lung", threshold=0.3), "lung_unet/model_config.json")
            mlflow.log_dict(_config("infection", threshold=0.6), "infection_unet/model_config.json")

        loaded = load_model_spec(f"runs:/{run.info.run_id}/model", "lung", "unused")
        assert loaded.config["image_size"] == 32 and loaded.source.startswith("runs:/")
        np.testing.assert_allclose(np.asarray(loaded.model.predict_on_batch(x)), expected, atol=1e-5)

        assert load_model_spec(f"runs:/{run2.info.run_id}/model", "lung", "unused").threshold == 0.4
        assert load_model_spec(f"runs:/{run4.info.run_id}/lung_unet_model", "lung", "unused").threshold == 0.3

        mlflow.register_model(f"runs:/{run.info.run_id}/model", "lung_unet")
        registered = load_model_spec("models:/lung_unet/1", "lung", "unused")
        assert registered.config["crop_mode"] == "body"

        with pytest.raises(ModelNotFoundError, match="no preprocessing config"):
            load_model_spec(f"runs:/{run3.info.run_id}/model", "lung", "unused")
        with pytest.raises(ModelNotFoundError, match="not found in the MLflow tracking store"):
            load_model_spec("models:/no_such_model/3", "lung", "unused")
    finally:
        mlflow.set_tracking_uri(previous)


def test_lung_model_trained_on_lung_mask_crops_is_refused():
    from lungseg.errors import ConfigError
    from lungseg.inference.models import check_config

    with pytest.raises(ConfigError, match="lung_crop_source: lung_mask"):
        check_config({"task": "lung", "image_size": 32, "crop_mode": "lung_mask"}, "lung", "m.keras")
    assert check_config({"task": "infection", "image_size": 32, "crop_mode": "lung_mask"}, "infection", "m")
