"""#28 item 6 (row 9, third case): a model whose recorded task is not the slot it is loaded into is refused
by name (exit 2) before it is loaded, whichever way round, and nothing is written."""

from __future__ import annotations

import json
import shutil

from hardening_helpers import (
    FAST,
    VERSION,
    error_lines,
    leftovers,
    phantom,
    predict,
    rule_models_fixture,  # noqa: F401 - the fixture
    save_nifti,
)


def _model(root, task):
    return root / f"{task}_unet" / "model.keras" / VERSION / "model.keras"


def _refused(tmp_path, capsys, src, models_dir, *extra):
    out = tmp_path / "out"
    code, seconds = predict(src, out, models_dir, *extra)
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert seconds < FAST and not out.exists() and leftovers(tmp_path) == []
    return lines[0]


def test_a_model_in_the_other_tasks_slot_is_refused_by_name(tmp_path, rule_models, capsys):
    src = tmp_path / "chest.nii.gz"
    save_nifti(src, phantom(seed=9)[0])
    lung, infection = _model(rule_models, "lung"), _model(rule_models, "infection")
    line = _refused(tmp_path, capsys, src, rule_models, "--infection-model", str(lung))
    assert f"model '{lung}' was trained for the 'lung' task but was given as the infection model" in line
    line = _refused(tmp_path, capsys, src, rule_models, "--lung-model", str(infection))
    assert f"model '{infection}' was trained for the 'infection' task but was given as the lung model" in line


def test_a_models_dir_with_a_misfiled_model_is_refused_before_the_model_loads(tmp_path, rule_models, capsys):
    """``infection_unet/`` holding a lung model's config (a copy into the wrong folder) and an archive that
    is not even a model: the recorded task is read, and refused, before Keras opens the file."""
    src = tmp_path / "chest.nii.gz"
    save_nifti(src, phantom(seed=10)[0])
    models = tmp_path / "models"
    shutil.copytree(rule_models / "lung_unet", models / "lung_unet")
    shutil.copytree(rule_models / "lung_unet", models / "infection_unet")
    misfiled = _model(models, "infection")
    misfiled.write_bytes(b"not a keras archive")
    config = models / "infection_unet" / "model_config.json" / VERSION / "model_config.json"
    assert json.loads(config.read_text())["task"] == "lung"
    line = _refused(tmp_path, capsys, src, models)
    assert f"model '{misfiled}' was trained for the 'lung' task but was given as the infection model" in line
