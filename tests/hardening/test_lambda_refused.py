"""A .keras file with a Lambda layer (arbitrary Python code) is refused on every load path, and its code
never runs: a file given to `lungseg predict`, the models folder, and an MLflow URI."""

from __future__ import annotations

import json
import os

import pytest
from hardening_helpers import error_lines, model_config, phantom, predict, save_nifti, save_versioned

from lungseg.errors import LungsegError
from lungseg.inference.models import load_model_spec


def lambda_model(marker):
    """A 32 px model whose Lambda layer writes ``marker`` whenever its code runs.

    A Python ``lambda`` (not a named function, which Keras saves by name only): its bytecode is stored in
    the file, the "attack" (any Python at all) that ``safe_mode=True`` refuses to unmarshal."""
    import keras

    payload = eval(f"lambda x: (__import__('pathlib').Path({str(marker)!r}).write_text('ran'), x)[1]")  # noqa: S307
    inp = keras.Input((32, 32, 1))
    out = keras.layers.Conv2D(1, 1, activation="sigmoid")(keras.layers.Lambda(payload)(inp))
    return keras.Model(inp, out)


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "code_ran.txt"
    model = lambda_model(marker)
    path = tmp_path / "evil.keras"
    model.save(path)
    marker.unlink(missing_ok=True)  # building the model ran the code once, here in the test: forget it
    (tmp_path / "evil.json").write_text(json.dumps(model_config("lung", 32)))
    return model, path, marker


def test_a_lambda_model_file_is_refused_by_the_cli_and_its_code_never_runs(tmp_path, evil, capsys):
    _, path, marker = evil
    save_nifti(tmp_path / "ct.nii.gz", phantom(seed=1)[0])
    code, _ = predict(
        tmp_path / "ct.nii.gz", tmp_path / "out", tmp_path / "no_models", "--lung-model", str(path), "--tasks", "lung"
    )
    (line,) = error_lines(capsys.readouterr().err)
    assert code == 2 and "evil.keras" in line and "lambda" in line.lower() and "internal error" not in line
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_lambda_model_in_the_models_folder_is_refused(tmp_path, evil):
    model, _, marker = evil
    models = tmp_path / "models"
    save_versioned(models, "lung", model, model_config("lung", 32))
    marker.unlink(missing_ok=True)
    with pytest.raises(LungsegError, match="(?i)lambda"):
        load_model_spec(None, "lung", models)
    assert not marker.exists()


def test_a_lambda_model_logged_to_mlflow_is_refused(tmp_path, evil, monkeypatch):
    pytest.importorskip("mlflow")
    import mlflow
    import mlflow.keras

    model, _, marker = evil
    previous = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    try:
        exp = mlflow.create_experiment("lambda", artifact_location=(tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=exp) as run:
            mlflow.keras.log_model(model, name="model", pip_requirements=["keras"])
            mlflow.log_dict(model_config("lung", 32), "model_config.json")
        marker.unlink(missing_ok=True)
        mlflow.register_model(f"runs:/{run.info.run_id}/model", "evil_lung")
        for uri in (f"runs:/{run.info.run_id}/model", "models:/evil_lung/1"):
            with pytest.raises(LungsegError, match="(?i)lambda"):
                load_model_spec(uri, "lung", "unused")
            assert not marker.exists(), uri
    finally:
        mlflow.set_tracking_uri(previous)
