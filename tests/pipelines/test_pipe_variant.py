"""A variant's pipeline (train, log, evaluate) run on an in-memory catalog, spaceflights-style.

No KedroSession, no files: the inputs are built by the library functions the preprocessing nodes
call, every output stays in memory, and the test reads what each node produced.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_PREPROCESSING
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from kedro_datasets.partitions import PartitionedDataset

from lungseg.errors import ConfigError
from lungseg.models.inputs import build_model_input, split_cases
from lungseg.pipelines.ingestion.nodes import ingest_cases
from lungseg.pipelines.preprocessing.nodes import enhance_cases
from lungseg.pipelines.training.pipeline import create_variant_pipeline

TRAINING = {
    "epochs": 2, "batch_size": 4, "learning_rate": 1e-3, "loss": "bce_dice", "seed": 0, "threshold": 0.5,
    "reduce_lr": None, "early_stopping": None, "augment": None, "distribution_strategy": "none", "verbose": 0,
    "backup_dir": None, "max_train_slices": None, "repeats": 1,
    "lr_schedule": "plateau", "weights": "best", "validation_freq": 1, "precision": "float32",
}
MODEL = {"architecture": "unet", "base_filters": 4, "depth": 2}
EVALUATION = {"batch_size": 8, "baseline_lung": {}, "baseline_infection": {}, "flip_tta": False, "lung_fill_holes": False}
SPLIT = {"method": "grouped", "val_fraction": 0.34, "n_folds": 5, "fold": 0, "seed": 0}


class Kept(MemoryDataset):
    """A MemoryDataset the runner cannot release after its last reader, so the test can read it."""

    def _release(self) -> None:
        pass


OUTPUTS = ("model_config", "model", "history", "mlflow_model", "mlflow_inputs", "epoch_metrics", "training_curves", "metrics",
           "slice_metrics", "case_metrics", "overlay_data", "eval_metrics", "metrics_table", "overlays")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from conftest import write_case

    root = tmp_path_factory.mktemp("variant") / "raw"
    rows = [write_case(root, f"case_{i}", "hu" if i % 2 else "uint8", shape=(8, 40, 40), seed=i) for i in range(3)]
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    vols = PartitionedDataset(path=str(root), dataset="lungseg.datasets.NiftiDataset").load()
    table, canonical, _ = ingest_cases(pd.read_csv(root / "metadata.csv"), vols, {})
    enhanced = enhance_cases(table, canonical, TINY_PREPROCESSING)
    records = {k: f() for k, f in enhanced.items()}  # computed once, reused by every test
    enhanced = {k: (lambda k=k: records[k]) for k in records}
    return build_model_input("infection", table, enhanced, TINY_PREPROCESSING), split_cases(table, SPLIT), enhanced


def _catalog(inputs, training=TRAINING) -> DataCatalog:
    model_input, split, enhanced = inputs
    v = "infection_unet"
    datasets = {
        "preprocessing.infection_model_input": MemoryDataset(model_input, copy_mode="assign"),
        "preprocessing.case_split": MemoryDataset(split),
        "preprocessing.enhanced_cases": MemoryDataset(enhanced, copy_mode="assign"),
        f"params:{v}.model": MemoryDataset(MODEL),
        f"params:{v}.training": MemoryDataset(training),
        "params:dataset_name": MemoryDataset("tiny"),
        "params:evaluation": MemoryDataset(EVALUATION),
    }
    for name in OUTPUTS:
        datasets[f"{v}.{name}"] = Kept(copy_mode="assign")
    return DataCatalog(datasets)


def test_the_variant_pipeline_trains_logs_and_evaluates_in_memory(inputs):
    catalog = _catalog(inputs)
    pipe = create_variant_pipeline("infection_unet")
    SequentialRunner().run(pipe, catalog)
    v = "infection_unet"
    assert {n.name for n in pipe.nodes} == {f"{v}.{n}" for n in (
        "train_model", "log_mlflow_model", "log_mlflow_inputs", "epoch_metrics", "plot_training_curves", "evaluate_model", "eval_metrics",
        "metrics_table", "plot_overlays")}
    config = catalog.load(f"{v}.model_config")
    split = inputs[1]
    assert config["task"] == "infection" and config["architecture"] == "unet" and config["dataset"] == "tiny"
    assert config["val_cases"] == sorted(split.case_id[split.subset == "val"])
    assert config["threshold"] == 0.5 and config["image_size"] == TINY_PREPROCESSING["image_size"]
    history = catalog.load(f"{v}.history")
    assert len(history["loss"]) == 2 and len(history["val_loss"]) == 2
    steps = catalog.load(f"{v}.epoch_metrics")
    assert [p["step"] for p in steps["val_loss"]] == [0, 1]
    assert steps["val_loss"][1]["value"] == pytest.approx(history["val_loss"][1])
    logged = catalog.load(f"{v}.mlflow_model")
    assert logged["config"] == config and logged["model"] is catalog.load(f"{v}.model")
    inputs_logged = catalog.load(f"{v}.mlflow_inputs")  # what mlflow.log_input receives
    assert set(inputs_logged) == {"training", "validation"}
    val = inputs_logged["validation"]
    assert val["name"] == "tiny" and val["n_cases"] == len(config["val_cases"]) and len(val["digest"]) == 12
    assert list(val["table"]["case_id"]) == config["val_cases"]
    n_train = int(np.isin(inputs[0]["case_ids"], config["train_cases"]).sum())
    assert inputs_logged["training"]["n_slices"] == n_train and val["digest"] != inputs_logged["training"]["digest"]
    summary = catalog.load(f"{v}.metrics")
    assert summary["variant"] == v and summary["n_val_cases"] == len(config["val_cases"])
    assert 0.0 <= summary["case_dice"] <= 1.0
    assert catalog.load(f"{v}.eval_metrics")["eval_case_dice"][0]["value"] == pytest.approx(summary["case_dice"])
    table = catalog.load(f"{v}.metrics_table")
    assert list(table["variant"]) == [v]
    cases = catalog.load(f"{v}.case_metrics")
    assert list(cases["case_id"]) == config["val_cases"]
    probs = catalog.load(f"{v}.model").predict(np.zeros((1, 32, 32, 1), np.float32), verbose=0)
    assert probs.shape == (1, 32, 32, 1)


def test_a_typo_in_a_training_key_is_named_before_any_training(inputs):
    training = {**TRAINING, "learning_rte": 1e-3}
    del training["learning_rate"]
    pipe = create_variant_pipeline("infection_unet").only_nodes("infection_unet.train_model")
    with pytest.raises(ConfigError, match=r"unknown parameter 'training.learning_rte' \(did you mean 'learning_rate'\?\)"):
        SequentialRunner().run(pipe, _catalog(inputs, training))
    missing = {k: v for k, v in TRAINING.items() if k != "repeats"}
    with pytest.raises(ConfigError, match=r"missing parameter training.repeats"):
        SequentialRunner().run(pipe, _catalog(inputs, missing))


def test_a_model_trained_in_bf16_is_saved_float32_and_predicts_in_float32_after_loading(inputs, tmp_path):
    from lungseg.models import load_model
    from lungseg.models.run import train_variant

    model_input, split, _ = inputs
    runs = {p: train_variant(model_input, split, MODEL, {**TRAINING, "epochs": 1, "precision": p}, "tiny")
            for p in ("float32", "mixed_bfloat16")}
    bf16 = runs["mixed_bfloat16"]
    assert bf16.config["precision"] == "mixed_bfloat16" and runs["float32"].config["precision"] == "float32"
    # the precision changes the weights, so it enters the fingerprint (a float32 backup is not resumed in bf16)
    assert bf16.config["run_fingerprint"] != runs["float32"].config["run_fingerprint"]
    assert {layer.dtype_policy.name for layer in bf16.model.layers} == {"float32"}
    path = tmp_path / "bf16.keras"
    bf16.model.save(path)
    loaded = load_model(path)
    assert {layer.dtype_policy.name for layer in loaded.layers} == {"float32"}
    assert {str(w.dtype) for w in loaded.weights} == {"float32"}
    x = model_input["images"][:2, ..., None].astype(np.float32)
    probs = loaded.predict(x, verbose=0)
    assert probs.dtype == np.float32 and np.isfinite(probs).all()
    np.testing.assert_allclose(probs, bf16.model.predict(x, verbose=0), atol=1e-6)


def test_a_25d_variant_trains_on_stacks_records_its_context_and_evaluates(inputs):
    """``preprocessing.context: 3``: the model input holds (N, S, S, 3) stacks, the model takes 3 channels,
    its config records the context (what ``lungseg predict`` rebuilds), and the evaluation stacks alike."""
    table_input, split, enhanced = inputs
    cases = pd.DataFrame({"case_id": sorted(enhanced)})
    stacked = build_model_input("infection", cases, enhanced, {**TINY_PREPROCESSING, "context": 3})
    assert stacked["images"].shape == (*table_input["images"].shape, 3)
    np.testing.assert_array_equal(stacked["images"][..., 1], table_input["images"])  # the middle slice is the 2D input
    np.testing.assert_array_equal(stacked["masks"], table_input["masks"])
    catalog = _catalog((stacked, split, enhanced))
    SequentialRunner().run(create_variant_pipeline("infection_unet"), catalog)
    v = "infection_unet"
    config = catalog.load(f"{v}.model_config")
    assert config["context"] == 3
    model = catalog.load(f"{v}.model")
    assert tuple(model.inputs[0].shape[1:]) == (32, 32, 3)
    assert 0.0 <= catalog.load(f"{v}.metrics")["case_dice"] <= 1.0


def test_the_infection_model_paints_inside_its_inputs_lungs_and_learns_the_paint_as_infection(inputs, monkeypatch):
    """``augment.paint`` on the infection model: the model input carries the lungs on the model grid, training
    paints inside them and the painted pixels join the infection mask; an input without lungs is refused."""
    from lungseg.models import data as data_module
    from lungseg.models.run import train_variant

    model_input, split, _ = inputs
    lungs = model_input["lungs"]
    assert lungs.shape == model_input["masks"].shape and lungs.dtype == np.uint8
    assert np.all(model_input["masks"] <= lungs)                        # the infection lies in the lungs
    assert 0 < lungs.mean() < 1
    seen = []
    real = data_module.augment_batch

    def spy(images, masks, rng, params, regions=None):
        out = real(images, masks, rng, params, regions=regions)
        seen.append((masks.copy(), regions, out[1]))
        return out

    monkeypatch.setattr(data_module, "augment_batch", spy)
    augment = {"hflip": False, "rotation_deg": 0.0, "scale_min": 1.0, "scale_max": 1.0, "paint": 1.0}
    train_variant(model_input, split, MODEL, {**TRAINING, "epochs": 1, "augment": augment}, "tiny")
    painted = [(m, r, o) for m, r, o in seen if r is not None]
    assert painted                                                       # the training batches came with lungs
    for before, regions, after in painted:
        assert np.all(after >= before)                                   # nothing of the infection is lost
        assert np.all(after <= np.maximum(before, regions))              # paint stays in the lungs
    assert sum(int(a.sum() - b.sum()) for b, _, a in painted) > 0        # and the paint became infection
    old = {k: v for k, v in model_input.items() if k != "lungs"}         # a model input stored before the lungs were
    with pytest.raises(ConfigError, match="'tiny' carries no lung masks .* rerun its preprocessing"):
        train_variant(old, split, MODEL, {**TRAINING, "augment": augment}, "tiny")

