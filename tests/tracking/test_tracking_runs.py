"""MLflow runs that line up in Compare: ``kedro run --pipelines=system`` (two variants) end to end.

One parent run, one nested child run per variant with the same parameter and metric keys (no
variant prefix), the tags to filter on, the training and validation datasets (``mlflow.log_input``),
the comparison table on the parent, and ``lungseg-combined`` registered from the run (opt-in).
"""

from __future__ import annotations

import io

import mlflow
import pandas as pd
import pytest
from conftest import make_kedro_project, run_kedro, write_case

from lungseg.hooks import kedro_command, runner_name, strip_variant, variant_of

TINY_TRAINING = {
    "epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "loss": "bce_dice", "seed": 0, "reduce_lr": None,
    "augment": None, "verbose": 0, "run_eagerly": True,  # no graph traced: seconds per tiny fit
}
TINY_UNET = {"architecture": "unet", "base_filters": 4, "depth": 2, "bn_momentum": 0.9}
SYSTEM = ("lung_unet", "infection_unet")


@pytest.fixture(scope="module")
def system_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("system")
    raw = tmp / "raw"
    rows = [write_case(raw, f"case_{i}", "hu" if i % 2 else "uint8", shape=(10, 48, 48), seed=i) for i in range(4)]
    pd.DataFrame(rows).to_csv(raw / "metadata.csv", index=False)
    params = {"registry": {"register": True, "model_name": "lungseg-combined", "models_dir": "data/06_models"}}
    for variant in SYSTEM:
        params[variant] = {"model": TINY_UNET,
                           "training": {**TINY_TRAINING, "backup_dir": f"data/06_models/{variant}/backup"}}
    project = make_kedro_project(tmp, raw, params)
    run_kedro(project, "system")
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["lungseg"], output_format="list")
    yield project, runs
    mlflow.set_tracking_uri(None)


def test_variants_and_their_params_are_recognised():
    assert variant_of("infection_unet") == "infection_unet" and variant_of("lung_unet_cv") == "lung_unet_cv"
    assert variant_of("preprocessing") is None and variant_of(None) is None and variant_of("evaluation") is None
    assert strip_variant("infection_unet.model", "infection_unet") == "model"
    assert strip_variant("infection_unet.training", "infection_unet_cv") == "training"
    assert strip_variant("evaluation", "infection_unet") == "evaluation"
    assert strip_variant("lung_unet.model", None) == "lung_unet.model"


def test_kedro_command_is_the_command_line_and_the_runner_its_class_name():
    typed = ["/work/.venv/bin/kedro", "run", "--env=demo", "--pipelines=infection_unet"]
    assert kedro_command(typed, {"env": "demo"}) == "kedro run --env=demo --pipelines=infection_unet"
    module = ["/x/site-packages/kedro/__main__.py", "run", "--params", "training.epochs=2"]
    assert kedro_command(module, {}) == "kedro run --params training.epochs=2"
    # from Python (a script, a notebook): rebuilt, with what kedro-mlflow's own tag leaves out
    session = {"pipeline_names": ["system"], "env": "demo", "runtime_params": {"training.epochs": 2},
               "runner": "<kedro.runner.parallel_runner.ParallelRunner object at 0x7f12ab>", "tags": None}
    assert kedro_command(["-c"], session) == ("kedro run --pipelines=system --env=demo --runner=ParallelRunner "
                                              "--params=training.epochs=2")
    assert runner_name("<kedro.runner.sequential_runner.SequentialRunner object at 0x7f3c2d1e5b10>") == "SequentialRunner"
    assert runner_name("ThreadRunner") == "ThreadRunner" and runner_name(None) is None
    assert runner_name("None") == "SequentialRunner"  # a session given no runner runs a SequentialRunner


def test_one_parent_and_one_child_per_variant_with_identical_keys(system_run):
    _, runs = system_run
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert len(parents) == 1 and set(children) == set(SYSTEM)
    parent = parents[0]
    assert {c.data.tags["mlflow.parentRunId"] for c in children.values()} == {parent.info.run_id}
    params = {name: set(c.data.params) for name, c in children.items()}
    metrics = {name: set(c.data.metrics) for name, c in children.items()}
    assert params["lung_unet"] == params["infection_unet"]  # the Compare view's columns line up
    assert metrics["lung_unet"] == metrics["infection_unet"]
    keys = params["lung_unet"] | metrics["lung_unet"]
    assert {"model.architecture", "model.base_filters", "training.epochs", "preprocessing.image_size",
            "dataset_name"} <= params["lung_unet"]
    assert {"val_dice", "val_loss", "eval_case_dice", "eval_slice_dice", "eval_case_nsd", "eval_case_hd95"} <= keys
    assert not [k for k in keys if k.startswith(SYSTEM)]  # no variant prefix anywhere
    for name, child in children.items():
        task, arch = name.split("_")
        assert {k: child.data.tags[k] for k in ("task", "architecture", "dataset", "env", "variant")} == {
            "task": task, "architecture": arch, "dataset": "tiny", "env": "test", "variant": name}
        assert "environment" not in child.data.tags
        assert child.data.params["model.base_filters"] == "4" and child.data.params["training.epochs"] == "2"
        assert 0.0 <= child.data.metrics["eval_case_dice"] <= 1.0
    assert parent.data.tags["task"] == "lung+infection" and parent.data.tags["dataset"] == "tiny"
    assert parent.data.tags["env"] == "test" and "environment" not in parent.data.tags
    assert parent.data.tags["kedro_command"] == "kedro run --pipelines=system --env=test"
    assert parent.data.tags["runner"] == "SequentialRunner"
    found = mlflow.search_runs(experiment_names=["lungseg"], filter_string="tags.task = 'infection'",
                               output_format="list")
    assert [r.info.run_name for r in found] == ["infection_unet"]


def test_each_child_logs_its_training_and_validation_datasets(system_run):
    project, runs = system_run
    split = pd.read_csv(project / "data/05_model_input/case_split.csv")
    for run in (r for r in runs if "mlflow.parentRunId" in r.data.tags):
        inputs = {next(t.value for t in d.tags if t.key == "mlflow.data.context"): d for d in run.inputs.dataset_inputs}
        assert set(inputs) == {"training", "validation"}
        for context, subset in (("training", "train"), ("validation", "val")):
            item = inputs[context]
            tags = {t.key: t.value for t in item.tags}
            assert item.dataset.name == "tiny" and len(item.dataset.digest) == 12
            assert int(tags["n_cases"]) == int((split["subset"] == subset).sum()) and int(tags["n_slices"]) > 0
        assert inputs["training"].dataset.digest != inputs["validation"].dataset.digest


def test_the_parent_holds_the_comparison_and_the_registered_combined_model(system_run):
    _, runs = system_run
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    client = mlflow.MlflowClient()
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "comparison")}
    assert {"comparison/comparison.csv", "comparison/variant_runs.csv"} <= artifacts
    path = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="comparison/variant_runs.csv")
    table = pd.read_csv(io.StringIO(open(path).read()))
    assert sorted(table["run_name"]) == sorted(SYSTEM) and table["eval_case_dice"].notna().all()
    versions = client.search_model_versions("name = 'lungseg-combined'")
    assert [str(v.version) for v in versions] == ["1"] and versions[0].run_id == parent.info.run_id
    info = mlflow.models.get_model_info("models:/lungseg-combined/1")
    assert info.signature is not None and info.saved_input_example_info is not None
