"""``kedro run --pipelines=infection_unet_cv`` end to end on tiny synthetic cases, 2 folds.

Checks the out-of-fold tables (every patient scored once, by the fold that never saw it), the
combined system's table, the nested MLflow runs (one per variant, one per fold under it, the same keys
in each) and that the saved fold models predict as an ensemble.
"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import make_kedro_project, run_kedro, write_case

TINY_TRAINING = {
    "epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "loss": "bce_dice", "seed": 0,
    "reduce_lr": None, "augment": None, "verbose": 0,
    "run_eagerly": True,  # no graph traced: seconds per tiny fit
}
TINY_UNET = {"architecture": "unet", "base_filters": 4, "depth": 2, "bn_momentum": 0.9}


@pytest.fixture(scope="module")
def cv_project(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cv")
    raw = tmp / "raw"
    rows = [write_case(raw, f"case_{i}", "hu" if i % 2 else "uint8", shape=(8, 40, 40), seed=i) for i in range(5)]
    pd.DataFrame(rows).to_csv(raw / "metadata.csv", index=False)
    params = {"split": {"n_folds": 2, "seed": 1}}
    for variant in ("lung_unet", "infection_unet"):
        params[variant] = {"model": TINY_UNET,
                           "training": {**TINY_TRAINING, "backup_dir": f"data/06_models/{variant}/backup"}}
    project = make_kedro_project(tmp, raw, params)
    run_kedro(project, "infection_unet_cv")
    return project


def test_every_patient_is_scored_once_out_of_fold(cv_project):
    folds = pd.read_csv(cv_project / "data/05_model_input/cv_folds.csv")
    assert sorted(folds["case_id"]) == [f"case_{i}" for i in range(5)] and set(folds["fold"]) == {0, 1}
    for variant in ("lung_unet", "infection_unet"):
        table = pd.read_csv(cv_project / f"data/08_reporting/{variant}_cv/oof_case_metrics.csv")
        assert sorted(table["case_id"]) == sorted(folds["case_id"])
        merged = table.merge(folds, on="case_id", suffixes=("", "_assigned"))
        assert (merged["fold"] == merged["fold_assigned"]).all()  # scored by the fold that held it out
        summary = json.loads((cv_project / f"data/08_reporting/{variant}_cv/cv_summary.json").read_text())
        assert summary["n_folds"] == 2 and summary["case_n_cases"] == 5
        assert summary["case_dice_oof_mean"] == pytest.approx(table["dice"].mean())
        per_fold = table.groupby("fold")["dice"].mean()
        assert summary["case_dice_fold_std"] == pytest.approx(per_fold.std(ddof=0))
        assert summary["case_dice_worst"] == pytest.approx(table["dice"].min())
        configs = sorted((cv_project / f"data/06_models/{variant}_cv").glob("fold_*.json"))
        assert [c.stem for c in configs] == ["fold_0", "fold_1"]
        for c in configs:
            config = json.loads(c.read_text())
            held_out = set(folds.case_id[folds.fold == config["fold"]])
            assert set(config["val_cases"]) == held_out and not held_out & set(config["train_cases"])


def test_the_combined_system_is_scored_with_predicted_lungs_and_by_band(cv_project):
    table = pd.read_csv(cv_project / "data/08_reporting/infection_unet_cv/combined_case_metrics.csv")
    assert sorted(table["case_id"]) == [f"case_{i}" for i in range(5)]
    assert {"lung_dice", "infection_dice", "true_involvement_percent", "pred_involvement_percent", "band"} <= set(table)
    assert table["true_involvement_percent"].between(0, 100).all() and table["band"].isin(["<10%", "10-30%", ">30%"]).all()
    summary = json.loads((cv_project / "data/08_reporting/infection_unet_cv/combined_summary.json").read_text())
    assert summary["combined_infection_dice_oof_mean"] == pytest.approx(table["infection_dice"].mean())
    assert summary["combined_lung_dice_oof_mean"] == pytest.approx(table["lung_dice"].mean())
    # the threshold sweep at the models' own threshold reproduces the system's infection Dice
    assert table["infection_dice_t0.5"].to_numpy() == pytest.approx(table["infection_dice"].to_numpy())
    assert set(summary["infection_dice_by_threshold"]) == {f"infection_dice_t{t}" for t in ("0.2", "0.3", "0.4", "0.5", "0.6")}
    band_counts = sum(summary[k] for k in summary if k.startswith("combined_n_cases_band_"))
    assert band_counts == 5  # every case in exactly one involvement band
    assert summary["infection_models_per_fold"] == 1 and summary["infection_ensemble_with"] == []
    assert (cv_project / "data/08_reporting/infection_unet_cv/combined_infection_dice.png").stat().st_size > 5000


def test_the_stress_set_paints_extensive_disease_and_is_scored_out_of_fold(cv_project):
    reports = cv_project / "data/08_reporting/infection_unet_cv"
    plain = pd.read_csv(reports / "combined_case_metrics.csv").set_index("case_id")
    stress = pd.read_csv(reports / "stress_case_metrics.csv").set_index("case_id")
    assert sorted(stress.index) == sorted(plain.index)
    assert (stress["fold"] == plain["fold"]).all()                    # each case by the folds that never saw it
    # 30-70 % of each lung painted (and added to the infection): every case is now extensive
    assert (stress["true_involvement_percent"] >= 29.0).all()
    assert (stress["true_involvement_percent"] > plain["true_involvement_percent"]).all()
    assert (stress["band"] != "<10%").all()
    summary = json.loads((reports / "stress_summary.json").read_text())
    assert summary["combined_infection_dice_oof_mean"] == pytest.approx(stress["infection_dice"].mean())
    assert summary["combined_lung_dice_oof_mean"] == pytest.approx(stress["lung_dice"].mean())
    mlflow.set_tracking_uri(f"sqlite:///{cv_project / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    logged = [r.data.metrics["stress_combined_infection_dice_oof_mean"] for r in runs
              if "stress_combined_infection_dice_oof_mean" in r.data.metrics]
    assert logged == [pytest.approx(summary["combined_infection_dice_oof_mean"])]


def test_each_variant_and_each_fold_is_a_nested_mlflow_run_with_the_same_keys(cv_project):
    mlflow.set_tracking_uri(f"sqlite:///{cv_project / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    mlflow.set_tracking_uri(None)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    variants = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(variants) == {"lung_unet_cv", "infection_unet_cv"}
    ids = {r.info.run_id: name for name, r in variants.items()}
    folds = [r for r in runs if r.data.tags.get("mlflow.parentRunId") in ids]
    assert len(folds) == 4 and len(runs) == 7  # 2 folds under each variant run
    assert sorted(ids[r.data.tags["mlflow.parentRunId"]] for r in folds) == ["infection_unet_cv"] * 2 + ["lung_unet_cv"] * 2
    assert {r.data.tags["fold"] for r in folds} == {"0", "1"}
    assert len({frozenset(r.data.metrics) for r in folds}) == 1  # every fold has the same keys
    assert len({frozenset(r.data.params) for r in folds}) == 1
    assert {"eval_case_dice", "val_loss", "val_dice"} <= set(folds[0].data.metrics)
    for fold in folds:  # each fold's own training and validation cases (mlflow.log_input)
        contexts = {t.value for d in fold.inputs.dataset_inputs for t in d.tags if t.key == "mlflow.data.context"}
        assert contexts == {"training", "validation"}
    # the variant runs: the same parameters, the out-of-fold means under a trained variant's names
    assert set(variants["lung_unet_cv"].data.params) == set(variants["infection_unet_cv"].data.params)
    for name, run in variants.items():
        assert {"eval_case_dice", "cv_case_dice_oof_mean", "cv_case_dice_fold_std"} <= set(run.data.metrics)
        assert run.data.metrics["eval_case_dice"] == pytest.approx(run.data.metrics["cv_case_dice_oof_mean"])
        assert run.data.tags["variant"] == name[: -len("_cv")] and run.data.tags["cross_validation"] == "true"
        assert not [k for k in (*run.data.params, *run.data.metrics) if k.startswith(("lung_unet", "infection_unet"))]
    assert "combined_infection_dice_oof_mean" in variants["infection_unet_cv"].data.metrics
    assert parent.data.tags["task"] == "infection" and parent.data.tags["architecture"] == "unet"


def test_the_fold_models_predict_as_an_ensemble(cv_project):
    from lungseg.inference.ensemble import load_fold_ensemble

    ensemble = load_fold_ensemble(cv_project / "data/06_models/infection_unet_cv", "infection")
    assert ensemble.config["task"] == "infection" and len(ensemble.model.members) == 2
    x = np.random.default_rng(0).random((3, 32, 32, 1), dtype=np.float32)
    members = [np.asarray(m.predict_on_batch(x)) for m in ensemble.model.members]
    np.testing.assert_allclose(np.asarray(ensemble.model.predict_on_batch(x)), np.mean(members, axis=0), rtol=1e-5)


def test_lungseg_predict_uses_the_fold_ensembles(cv_project, tmp_path, caplog):
    import logging

    from lungseg.cli import main

    ct = cv_project.parent / "raw" / "ct_scans" / "case_0_org.nii.gz"
    folder = cv_project / "data/06_models/infection_unet_cv"
    with caplog.at_level(logging.INFO, logger="lungseg"):
        assert main(["predict", str(ct), "-o", str(tmp_path / "out"), "--models", str(folder), "--no-progress"]) == 0
    assert "infection model: ensemble of 2 fold models" in caplog.text
    assert "lung model: ensemble of 2 fold models" in caplog.text  # lung_unet_cv found beside it
    assert (tmp_path / "out" / "lung_and_infection_mask.nii.gz").is_file()

    lonely = tmp_path / "only_infection"
    lonely.mkdir()
    for f in folder.iterdir():
        (lonely / f.name).write_bytes(f.read_bytes())
    code = main(["predict", str(ct), "-o", str(tmp_path / "out2"), "--models", str(lonely)])  # no lung folds beside it
    assert code == 2 and not (tmp_path / "out2").exists()


def test_fold_ensembles_are_offered_after_single_models_and_never_picked_by_default(cv_project, tmp_path):
    import shutil

    from lungseg.errors import ModelNotFoundError
    from lungseg.inference.models import find_latest_model, list_trained_models, load_model_spec

    models = cv_project / "data/06_models"
    entries = list_trained_models(models)["infection"]
    assert [(e["variant"], e["ensemble"]) for e in entries] == [("infection_unet_cv", True)]
    with pytest.raises(ModelNotFoundError):
        find_latest_model("infection", models)  # the default stays a single trained model
    loaded = load_model_spec(entries[0]["path"], "infection", models)  # what the UI does with the choice
    assert loaded.config["ensemble_size"] == 2

    mixed = tmp_path / "infection_unet_cv"
    shutil.copytree(entries[0]["path"], mixed)
    config = json.loads((mixed / "fold_1.json").read_text())
    (mixed / "fold_1.json").write_text(json.dumps({**config, "image_size": 64}))
    from lungseg.errors import ConfigError

    with pytest.raises(ConfigError, match="fold_0 and fold_1 were prepared differently .*image_size: 32 vs 64"):
        load_model_spec(mixed, "infection", models)


def test_flip_tta_averages_the_model_and_its_mirror():
    from lungseg.inference.wrappers import FlipTTAModel

    class LeftEdge:
        """Predicts 1 on the left half of every slice: not mirror-symmetric, so TTA must change it."""

        def predict_on_batch(self, x):
            out = np.zeros_like(x)
            out[:, :, : x.shape[2] // 2] = 1.0
            return out

    x = np.random.default_rng(1).random((2, 8, 8, 1), dtype=np.float32)
    np.testing.assert_allclose(FlipTTAModel(LeftEdge()).predict_on_batch(x), np.full_like(x, 0.5))


class Constant:
    """A fold model that predicts one value everywhere."""

    def __init__(self, value: float):
        self.value, self.inputs = value, None

    def predict_on_batch(self, x):
        return np.full(x.shape, self.value, dtype=np.float32)


def _fold(value: float, val_cases: list[str], **config) -> dict:
    return {"model": Constant(value),
            "config": {"task": "infection", "image_size": 32, "threshold": 0.5, "fold": 0, "val_cases": val_cases,
                       "train_cases": ["b"], **config}}


def test_an_out_of_fold_ensemble_averages_each_fold_with_the_same_fold_of_other_runs():
    from lungseg.evaluation.out_of_fold import join_fold_members

    main = {"fold_0": _fold(0.2, ["a"]), "fold_1": _fold(0.4, ["b"])}
    other = {"fold_0": _fold(0.6, ["a"], trained_at="later"), "fold_1": _fold(1.0, ["b"])}
    joined = join_fold_members(main, {"runs/seed7": other})
    x = np.zeros((1, 4, 4, 1), dtype=np.float32)
    assert joined["fold_0"]["model"].predict_on_batch(x) == pytest.approx(np.full(x.shape, 0.4))
    assert joined["fold_1"]["model"].predict_on_batch(x) == pytest.approx(np.full(x.shape, 0.7))
    assert joined["fold_0"]["config"]["val_cases"] == ["a"] and joined["fold_0"]["config"]["ensemble_size"] == 2
    assert join_fold_members(main, {}) == main


def test_an_out_of_fold_ensemble_refuses_members_of_other_folds_or_preprocessing():
    from lungseg.errors import ConfigError
    from lungseg.evaluation.out_of_fold import join_fold_members

    main = {"fold_0": _fold(0.2, ["a"])}
    with pytest.raises(ConfigError, match=r"folder 'runs/x': fold_0 held out \['c'\], this run's fold_0 held out \['a'\]"):
        join_fold_members(main, {"runs/x": {"fold_0": _fold(0.5, ["c"])}})  # it trained on case a
    with pytest.raises(ConfigError, match="folder 'runs/x' has no fold_0"):
        join_fold_members(main, {"runs/x": {"fold_1": _fold(0.5, ["a"])}})
    with pytest.raises(ConfigError, match="prepared differently .*image_size: 32 vs 64"):
        join_fold_members(main, {"runs/x": {"fold_0": _fold(0.5, ["a"], image_size=64)}})
    with pytest.raises(ConfigError, match="prepared differently .*architecture: 'unet' vs 'deeplabv3plus'"):
        join_fold_members({"fold_0": _fold(0.2, ["a"], architecture="unet")},
                          {"runs/x": {"fold_0": _fold(0.5, ["a"], architecture="deeplabv3plus")}})


def test_an_ensemble_of_two_recipes_reads_one_input_and_keeps_each_recipe_on_record():
    """Members that differ only in how they were built (depth, loss, precision) make one ensemble (#25 item 10)."""
    from lungseg.evaluation.out_of_fold import join_fold_members

    recipe = dict(architecture="unet", loss="bce_dice", precision="float32")
    main = {"fold_0": _fold(0.2, ["a"], model_params={"depth": 4}, **recipe)}
    deeper = {"fold_0": _fold(0.6, ["a"], model_params={"depth": 5}, **{**recipe, "loss": "structure"})}
    config = join_fold_members(main, {"runs/depth5": deeper})["fold_0"]["config"]
    assert config["model_params"] == [{"depth": 4}, {"depth": 5}] and config["loss"] == ["bce_dice", "structure"]
    assert config["precision"] == "float32" and config["architecture"] == "unet" and config["ensemble_size"] == 2


def test_the_combined_cross_validation_scores_a_seed_ensemble_from_other_fold_folders(cv_project, tmp_path):
    import shutil

    import yaml

    project = tmp_path / "project"
    shutil.copytree(cv_project, project)
    mlflow_yml = project / "conf/test/mlflow.yml"
    conf = yaml.safe_load(mlflow_yml.read_text())
    conf["server"]["mlflow_tracking_uri"] = f"sqlite:///{project / 'mlflow.db'}"
    mlflow_yml.write_text(yaml.safe_dump(conf))
    # the same run's folds as the other member: the average of two equal members is the member itself
    other = tmp_path / "seed_b" / "infection_unet_cv"
    shutil.copytree(project / "data/06_models/infection_unet_cv", other)
    params_yml = project / "conf/test/parameters.yml"
    params = yaml.safe_load(params_yml.read_text())
    params_yml.write_text(yaml.safe_dump({**params, "evaluation": {"infection_ensemble_with": [str(other)]}}))
    reports = project / "data/08_reporting/infection_unet_cv"
    (reports / "combined_case_metrics.csv").unlink()
    run_kedro(project, "infection_unet_cv", nodes=["infection_unet_cv.evaluate_combined"])
    before = pd.read_csv(cv_project / "data/08_reporting/infection_unet_cv/combined_case_metrics.csv")
    after = pd.read_csv(reports / "combined_case_metrics.csv")
    pd.testing.assert_frame_equal(after, before)
    summary = json.loads((reports / "combined_summary.json").read_text())
    assert summary["infection_models_per_fold"] == 2 and summary["infection_ensemble_with"] == [str(other)]



def test_a_seed_ensemble_at_inference_is_one_folder_with_the_other_runs_members_beside(cv_project, tmp_path):
    import shutil

    from lungseg.inference.ensemble import load_fold_ensemble

    folder = tmp_path / "infection_unet_cv"
    shutil.copytree(cv_project / "data/06_models/infection_unet_cv", folder)
    for k in (0, 1):  # "another seed": the same files under other names
        for ext in ("keras", "json"):
            shutil.copy(folder / f"fold_{k}.{ext}", folder / f"fold_{k}_seed7.{ext}")
    ensemble = load_fold_ensemble(folder, "infection")
    assert ensemble.config["ensemble_size"] == 4
    assert ensemble.config["ensemble_members"] == ["fold_0", "fold_0_seed7", "fold_1", "fold_1_seed7"]
