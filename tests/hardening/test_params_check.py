"""#28 item 3 (rows 3 and 4): a misspelt or mistyped `kedro run --params` is refused before anything runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import make_kedro_project, write_case

from lungseg.config import check_runtime_params

CONFIGURED = {
    "preprocessing": {"clahe_clip_limit": 2.0, "image_size": {"lung": 128, "infection": 96}, "window": None},
    "lung_unet": {"training": {"epochs": 30, "augment": {"hflip": True}, "reduce_lr": {"patience": 3}, "loss": "bce",
                               "early_stopping": None}},
    "infection_unet": {"training": {"epochs": 30}},
    "_training": {"epochs": 30},
}


def test_known_keys_with_their_configured_types_pass():
    assert check_runtime_params({"lung_unet": {"training": {"epochs": 3, "loss": "dice", "reduce_lr": None}},
                                 "preprocessing.image_size.lung": 64, "preprocessing.window": [-1000, 400],
                                 "preprocessing.clahe_clip_limit": 3}, CONFIGURED) == []
    # a null setting may be given as a mapping: the reference run sets reduce_lr.* where dev_cpu has reduce_lr: null
    assert check_runtime_params({"lung_unet.training.early_stopping.patience": 2,
                                 "lung_unet.training.early_stopping.monitor": "val_loss"}, CONFIGURED) == []


@pytest.mark.parametrize(("runtime", "message"), [
    ({"trainig": {"epochs": 1}}, "no 'trainig' as a parameter section (did you mean 'infection_unet.training', "
                                 "'lung_unet.training'?)"),
    ({"lung_unet.training.epoch": 3}, "no 'epoch' in 'lung_unet.training' (did you mean 'lung_unet.training.epochs'?)"),
    ({"lung_unet": {"training": {"epochs": "abc"}}}, "'lung_unet.training.epochs' must be a number (configured 30), got 'abc'"),
    ({"lung_unet.training.augment.hflip": "yes"}, "must be true or false"),
    ({"lung_unet.training.loss": 3}, "'lung_unet.training.loss' must be a string"),
    ({"lung_unet.training.epochs.max": 3}, "'lung_unet.training.epochs' is a value, not a section"),
    ({"preprocessing.clahe_clip": 3}, "no 'clahe_clip' in 'preprocessing' (did you mean 'preprocessing.clahe_clip_limit'?)"),
])
def test_a_misspelt_or_mistyped_parameter_is_named(runtime, message):
    (problem,) = check_runtime_params(runtime, CONFIGURED)
    assert message in problem


def test_kedro_run_with_a_misspelt_param_writes_nothing_and_opens_no_mlflow_run(tmp_path):
    raw = tmp_path / "raw"
    import pandas as pd

    pd.DataFrame([write_case(raw, "c0", shape=(4, 32, 32))]).to_csv(raw / "metadata.csv", index=False)
    project = make_kedro_project(tmp_path, raw)
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    # one run, row 3's two mistakes and row 4's (caught only when its node ran, after ingestion wrote)
    for params in ("trainig.epochs=1,lung_unet.training.epochs=abc,preprocessing.clahe_clip=3",):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "kedro", "run", "--env=test", "--pipelines=lung_unet",
                               f"--params={params}"], cwd=project, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 1, proc.stderr[-2000:]
        errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: --params:")]
        assert len(errors) == 1 and "(nothing was run)" in errors[0] and "Traceback" not in proc.stderr
        assert "no 'trainig' as a parameter section" in errors[0] and "got 'abc'" in errors[0]
        assert "no 'clahe_clip' in 'preprocessing'" in errors[0] and time.perf_counter() - start < 120
        _assert_nothing_written(project)
    # row 5, through the CLI: a misspelt pipeline name is one line, and nothing is written either
    proc = subprocess.run([sys.executable, "-m", "kedro", "run", "--env=test", "--pipelines=infection_unte"],
                          cwd=project, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "no pipeline named 'infection_unte'; did you mean 'infection_unet'?" in errors[0]
    _assert_nothing_written(project)


def _assert_nothing_written(project) -> None:
    written = sorted(p.relative_to(project).as_posix() for p in (project / "data").rglob("*") if p.is_file())
    assert written == [], written
    if (project / "mlflow.db").exists():
        import sqlite3

        with sqlite3.connect(project / "mlflow.db") as db:
            tables = {r[0] for r in db.execute("select name from sqlite_master where type='table'")}
            assert "runs" not in tables or db.execute("select count(*) from runs").fetchone()[0] == 0


def test_an_unknown_pipeline_name_is_one_line_listing_the_pipelines():
    """#28 row 5: `kedro run --pipelines=infection_unte` gave two tracebacks (53 lines)."""
    import click

    from lungseg.pipeline_registry import register_pipelines

    pipelines = register_pipelines()
    assert "infection_unet" in pipelines and pipelines.get("nope") is None
    with pytest.raises(click.ClickException) as caught:
        pipelines["infection_unte"]
    message = caught.value.format_message()
    assert message.startswith("no pipeline named 'infection_unte'; did you mean 'infection_unet'? the pipelines: ")
    assert "\n" not in message and "lung_unet_cv" in message
