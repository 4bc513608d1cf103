"""What a run logs with ``mlflow.log_input``: the split's two sides, their digests and counts."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

from lungseg.tracking import log_inputs, split_inputs


def _split(subsets: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({"case_id": list(subsets), "subset": list(subsets.values())})


def test_the_two_sides_of_a_split_with_their_cases_slices_and_digests():
    case_ids = np.array(["a"] * 3 + ["b"] * 5 + ["c"] * 2)
    inputs = split_inputs("covid20-dev", _split({"b": "train", "a": "train", "c": "val"}), case_ids)
    assert set(inputs) == {"training", "validation"}
    assert (inputs["training"]["n_cases"], inputs["training"]["n_slices"]) == (2, 8)
    assert (inputs["validation"]["n_cases"], inputs["validation"]["n_slices"]) == (1, 2)
    assert list(inputs["training"]["table"]["case_id"]) == ["a", "b"]  # sorted: the digest ignores row order
    again = split_inputs("covid20-dev", _split({"a": "train", "b": "train", "c": "val"}), case_ids)
    assert again["training"]["digest"] == inputs["training"]["digest"]
    moved = split_inputs("covid20-dev", _split({"a": "train", "b": "val", "c": "val"}), case_ids)
    assert moved["training"]["digest"] != inputs["training"]["digest"]
    renamed = split_inputs("synthetic_demo", _split({"b": "train", "a": "train", "c": "val"}), case_ids)
    assert renamed["training"]["digest"] != inputs["training"]["digest"]  # the dataset's name is part of it


def test_a_leaky_slice_level_split_puts_every_case_on_both_sides():
    inputs = split_inputs("d", _split({"a": "mixed", "b": "mixed"}), np.array(["a", "a", "b"]))
    assert inputs["training"]["n_cases"] == inputs["validation"]["n_cases"] == 2


def test_log_inputs_fills_the_runs_dataset_entries(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        exp = mlflow.create_experiment("inputs", artifact_location=(tmp_path / "a").as_uri())
        inputs = split_inputs("synthetic_demo", _split({"a": "train", "c": "val"}), np.array(["a", "a", "c"]))
        with mlflow.start_run(experiment_id=exp) as run:
            log_inputs(inputs)
        logged = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    finally:
        mlflow.set_tracking_uri(None)
    by_context = {next(t.value for t in d.tags if t.key == "mlflow.data.context"): d for d in logged}
    assert set(by_context) == {"training", "validation"}
    train = by_context["training"]
    assert train.dataset.name == "synthetic_demo" and train.dataset.digest == inputs["training"]["digest"]
    assert {t.key: t.value for t in train.tags}["n_slices"] == "2"


def test_flatten_dict_as_kedro_mlflow_flattens_dict_params():
    from lungseg.tracking import flatten_dict

    params = {"model": {"depth": 4, "reduce_lr": {"factor": 0.5}, "empty": {}}, "env": "demo"}
    assert flatten_dict(params) == {"model.depth": 4, "model.reduce_lr.factor": 0.5, "env": "demo"}
    assert flatten_dict(params, recursive=False, sep="/") == {"model/depth": 4, "model/reduce_lr": {"factor": 0.5},
                                                               "model/empty": {}, "env": "demo"}


def test_log_param_follows_the_long_params_strategy(monkeypatch):
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    from lungseg import tracking

    logged, tags = {}, {}
    monkeypatch.setattr(mlflow, "log_param", lambda k, v: logged.__setitem__(k, v))
    monkeypatch.setattr(mlflow, "set_tag", lambda k, v: tags.__setitem__(k, v))
    long = "x" * (MAX_PARAM_VAL_LENGTH + 1)
    tracking.log_param("short", 3, "fail")
    tracking.log_param("cut", long, "truncate")
    tracking.log_param("tagged", long, "tag")
    assert logged == {"short": 3, "cut": long[:MAX_PARAM_VAL_LENGTH]} and tags == {"tagged": long}
    with pytest.raises(ValueError, match="long_params_strategy"):
        tracking.log_param("refused", long, "fail")
