"""Preprocessing nodes: model inputs per task, the patient split, EDA, ParallelRunner."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_PREPROCESSING, make_kedro_project, run_kedro
from kedro_datasets.partitions import PartitionedDataset

from lungseg.errors import ConfigError, TrainingDataError
from lungseg.imaging import records_from_array, restore_slices
from lungseg.pipelines.ingestion.nodes import ingest_cases
from lungseg.pipelines.preprocessing.eda import eda_summary, plot_dataset_overview, plot_example_slices
from lungseg.pipelines.preprocessing.nodes import (
    build_infection_input,
    build_lung_input,
    enhance_cases,
    preprocess_config,
    split_cases,
)


@pytest.fixture
def ingested(tiny_dataset):
    meta = pd.read_csv(tiny_dataset / "metadata.csv")
    vols = PartitionedDataset(path=str(tiny_dataset), dataset="lungseg.datasets.NiftiDataset").load()
    table, canonical, _ = ingest_cases(meta, vols, {})
    return table, canonical


def test_model_inputs_per_task(ingested):
    table, canonical = ingested
    enhanced = enhance_cases(table, canonical, TINY_PREPROCESSING)
    rec = enhanced["case_b"]()
    assert rec["image"].dtype == np.uint8 and rec["image"].shape == (8, 48, 48)

    lung = build_lung_input(table, enhanced, TINY_PREPROCESSING)
    # the phantom has lungs on slices 1..z-2: 6 + 6 + 4 informative slices
    assert lung["images"].shape == (16, 32, 32) and lung["images"].dtype == np.uint8
    assert set(np.unique(lung["masks"])) == {0, 1}
    assert json.loads(str(lung["config_json"]))["crop_mode"] == "body"
    assert sorted(set(lung["case_ids"])) == ["case_a", "case_b", "case_c"]

    inf = build_infection_input(table, enhanced, TINY_PREPROCESSING)
    cfg = json.loads(str(inf["config_json"]))
    assert cfg["task"] == "infection" and cfg["crop_mode"] == "lung_mask"
    # every kept slice with infection in the original grid has infection in the model input
    assert inf["masks"].reshape(len(inf["masks"]), -1).any(axis=1).sum() >= 8
    # the records map a model-resolution mask back onto the original 48 x 48 / 40 x 40 grid
    first = inf["case_ids"] == "case_a"
    recs = records_from_array(inf["records"][first])
    back = restore_slices(inf["masks"][first].astype(np.float32), recs) >= 0.5
    orig = canonical["case_a"]()["infection"][inf["slice_index"][first]] > 0
    inter = np.logical_and(back, orig).sum()
    assert 2 * inter / (back.sum() + orig.sum()) > 0.8


def test_infection_input_on_the_body_crop(ingested):
    """``infection_crop_source: body``: the same slices and masks as the lung-box input, cut from the body's
    larger box, and recorded as ``crop_mode: body`` so that inference repeats it."""
    table, canonical = ingested
    enhanced = enhance_cases(table, canonical, TINY_PREPROCESSING)
    lungbox = build_infection_input(table, enhanced, TINY_PREPROCESSING)
    body = build_infection_input(table, enhanced, {**TINY_PREPROCESSING, "infection_crop_source": "body"})
    assert json.loads(str(body["config_json"]))["crop_mode"] == "body"
    assert (body["slice_index"] == lungbox["slice_index"]).all() and (body["case_ids"] == lungbox["case_ids"]).all()
    area = lambda r: (r[:, 3] - r[:, 2]) * (r[:, 5] - r[:, 4])  # noqa: E731  (y1 - y0) * (x1 - x0)
    assert (area(body["records"]) > area(lungbox["records"])).all()
    for out in (lungbox, body):  # either way the records map the mask back onto the infection of the grid
        first = out["case_ids"] == "case_a"
        back = restore_slices(out["masks"][first].astype(np.float32), records_from_array(out["records"][first])) >= 0.5
        orig = canonical["case_a"]()["infection"][out["slice_index"][first]] > 0
        assert 2 * np.logical_and(back, orig).sum() / (back.sum() + orig.sum()) > 0.7


def test_lung_crop_source_lung_mask_and_bad_value():
    assert preprocess_config({**TINY_PREPROCESSING, "lung_crop_source": "lung_mask"}, "lung").crop_mode == "lung_mask"
    with pytest.raises(ConfigError, match="lung_crop_source"):
        preprocess_config({**TINY_PREPROCESSING, "lung_crop_source": "lungs"}, "lung")


def test_empty_after_filtering_is_a_clear_error(ingested):
    table, canonical = ingested
    enhanced = enhance_cases(table, canonical, TINY_PREPROCESSING)
    with pytest.raises(TrainingDataError, match="0 slices left after filtering"):
        build_lung_input(table, enhanced, {**TINY_PREPROCESSING, "min_lung_fraction": 0.99})


def _table(n):
    return pd.DataFrame({"case_id": [f"c{i:02d}" for i in range(n)]})


SPLIT = {"method": "grouped", "val_fraction": 0.3, "n_folds": 5, "fold": 0, "seed": 1}


def test_grouped_split_is_by_patient_and_70_30():
    split = split_cases(_table(10), SPLIT)
    assert (split.subset == "val").sum() == 3 and (split.subset == "train").sum() == 7
    assert split.case_id.is_unique
    again = split_cases(_table(10), SPLIT)
    assert split.equals(again)


def test_kfold_split_covers_every_case_once():
    vals = []
    for fold in range(5):
        s = split_cases(_table(10), {**SPLIT, "method": "kfold", "fold": fold, "seed": 3})
        vals += list(s.case_id[s.subset == "val"])
    assert sorted(vals) == [f"c{i:02d}" for i in range(10)]


def test_no_case_on_both_sides_of_the_split(ingested):
    from lungseg.models.data import split_model_input

    table, canonical = ingested
    enhanced = enhance_cases(table, canonical, TINY_PREPROCESSING)
    mi = build_lung_input(table, enhanced, TINY_PREPROCESSING)
    split = split_cases(table, {**SPLIT, "seed": 0})
    _, _, tr = split_model_input(mi, split, "train")
    _, _, va = split_model_input(mi, split, "val")
    assert len(tr) and len(va)
    assert not set(mi["case_ids"][tr]) & set(mi["case_ids"][va])


def test_leaky_split_is_explicit(ingested):
    from lungseg.models.data import split_model_input

    table, canonical = ingested
    split = split_cases(table, {**SPLIT, "method": "slice_level_leaky", "seed": 0})
    assert (split.subset == "mixed").all()
    mi = build_lung_input(table, enhance_cases(table, canonical, TINY_PREPROCESSING), TINY_PREPROCESSING)
    _, _, tr = split_model_input(mi, split, "train")
    _, _, va = split_model_input(mi, split, "val")
    assert set(mi["case_ids"][tr]) & set(mi["case_ids"][va])  # leaky on purpose
    with pytest.raises(ConfigError, match="split.method"):
        split_cases(table, {**SPLIT, "method": "by_slice"})


def test_eda(ingested):
    table, canonical = ingested
    summary = eda_summary(table)
    assert summary["n_cases"] == 3 and summary["n_slices"] == 22
    assert 0 < summary["infection_percent_of_segmented_area"] < 20
    assert len(plot_dataset_overview(table).axes) == 3
    enhanced = enhance_cases(table, canonical, TINY_PREPROCESSING)
    assert len(plot_example_slices(table, enhanced, 2).axes) == 2


def test_preprocessing_pipeline_under_parallel_runner(tiny_dataset, tmp_path):
    project = make_kedro_project(tmp_path, tiny_dataset)
    run_kedro(project, "preprocessing", runner="parallel")
    lung = np.load(project / "data/05_model_input/lung_model_input.npz")
    inf = np.load(project / "data/05_model_input/infection_model_input.npz")
    assert lung["images"].shape[1:] == (32, 32) and len(inf["images"]) > 0
    assert (project / "data/08_reporting/eda/dataset_overview.png").stat().st_size > 1000
    assert sorted(p.name for p in (project / "data/03_primary/enhanced_cases").iterdir()) == [
        "case_a.npz", "case_b.npz", "case_c.npz"]
    split = pd.read_csv(project / "data/05_model_input/case_split.csv")
    assert set(split.subset) == {"train", "val"}


def test_a_typo_or_a_missing_key_in_the_parameters_is_named(ingested):
    table, canonical = ingested
    with pytest.raises(ConfigError, match=r"unknown parameter 'preprocessing.clahe_clip' \(did you mean 'clahe_clip_limit'\?\)"):
        enhance_cases(table, canonical, {**TINY_PREPROCESSING, "clahe_clip": 3})
    params = {k: v for k, v in TINY_PREPROCESSING.items() if k != "image_size"}
    with pytest.raises(ConfigError, match=r"missing parameter preprocessing.image_size"):
        build_lung_input(table, enhance_cases(table, canonical, TINY_PREPROCESSING), params)
    with pytest.raises(ConfigError, match=r"unknown parameter 'split.n_fold' \(did you mean 'n_folds'\?\)"):
        split_cases(table, {**SPLIT, "n_fold": 3})


def test_a_source_declared_equalised_is_not_equalised_twice(ingested):
    """covid20-dev carries CLAHE from its source: training skips it, the model records it for inference."""
    from lungseg.imaging import PreprocessConfig, enhance

    table, canonical = ingested
    declared = {**TINY_PREPROCESSING, "source_clahe_clip_limit": 7.0}
    enhanced = enhance_cases(table, canonical, declared)
    case = table["case_id"].iloc[0]
    kind = table["source_kind"].iloc[0]
    windowed_only = enhance(canonical[case]()["ct"], kind, PreprocessConfig.from_dict({**declared, "clahe_clip_limit": 0}))
    np.testing.assert_array_equal(enhanced[case]()["image"], windowed_only)
    assert preprocess_config(declared, "infection").clahe_clip_limit == 7.0
    assert preprocess_config(TINY_PREPROCESSING, "infection").clahe_clip_limit == 2.0
    model_input = build_infection_input(table, enhanced, declared)
    assert json.loads(str(model_input["config_json"]))["clahe_clip_limit"] == 7.0


def test_image_size_can_differ_per_task(ingested):
    table, canonical = ingested
    params = {**TINY_PREPROCESSING, "image_size": {"lung": 48, "infection": 32}}
    enhanced = enhance_cases(table, canonical, params)
    assert build_lung_input(table, enhanced, params)["images"].shape[1:] == (48, 48)
    assert build_infection_input(table, enhanced, params)["images"].shape[1:] == (32, 32)
    with pytest.raises(ConfigError, match="preprocessing.image_size"):
        preprocess_config({**params, "image_size": {"lungs": 48}}, "lung")
