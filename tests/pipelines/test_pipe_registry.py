"""The registration node of ``lungseg-combined`` on in-memory inputs (opt-in, partners, parameter checks)."""

from __future__ import annotations

import logging

import pytest

from lungseg.errors import ConfigError
from lungseg.limits import inference_parameters
from lungseg.pipeline_registry import register_pipelines
from lungseg.pipelines.training.registry import combined_model
from lungseg.serving.bundle import SETTINGS_KEYS

REGISTRY = {"register": True, "model_name": "lungseg-combined", "models_dir": "data/06_models"}


def test_nothing_is_registered_unless_opted_in():
    assert combined_model({**REGISTRY, "register": False}, inference_parameters(), "m", {"task": "lung"}) == {
        "register": False}


def test_a_typo_in_the_registry_parameters_is_named():
    with pytest.raises(ConfigError, match="registry"):
        combined_model({**REGISTRY, "registr": True}, inference_parameters())


def test_the_models_of_the_run_and_the_inference_settings_are_packed(tmp_path):
    folds = {"fold_0": {"model": "m0", "config": {"task": "infection"}}}
    out = combined_model({**REGISTRY, "models_dir": str(tmp_path)}, inference_parameters(), lung_model="lung",
                         lung_config={"task": "lung"}, infection_folds=folds)
    assert out["register"] is True and out["name"] == "lungseg-combined"
    assert out["lung"] == ("lung", {"task": "lung"}) and out["infection"] == {"fold_0": ("m0", {"task": "infection"})}
    # the required keys, and the optional infection margin that conf/base sets (0)
    assert set(out["settings"]) == {*SETTINGS_KEYS, "infection_margin_mm", "infection_min_lesion_mm3"} and out["settings"]["infection_margin_mm"] == 0
    assert out["settings"]["guard"] == inference_parameters()["guard"]


def test_a_missing_partner_model_skips_registration_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        out = combined_model({**REGISTRY, "models_dir": str(tmp_path)}, inference_parameters(),
                             infection_model="m", infection_config={"task": "infection"})
    assert out == {"register": False}
    assert "lungseg-combined is not registered by this run" in caplog.text and "no trained lung model" in caplog.text


def test_every_training_pipeline_ends_with_the_registration_node():
    pipes = register_pipelines()
    expected = {  # where each task's model comes from: this run's dataset, or the newest one on disk
        "system": {"lung_unet.model", "infection_unet.model"},
        "__default__": {"lung_unet.model", "infection_unet.model"},
        "infection_deeplabv3plus": {"infection_deeplabv3plus.model"},
        "lung_unet": {"lung_unet.model"},
        "infection_unet_cv": {"lung_unet_cv.fold_models", "infection_unet_cv.fold_models"},
        "lung_deeplabv3plus_cv": {"lung_deeplabv3plus_cv.fold_models"},
    }
    for name, models in expected.items():
        node = next(n for n in pipes[name].nodes if n.name == "register_combined_model")
        configs = {f"{m}_config" for m in models if m.endswith(".model")}  # a single model travels with its config
        assert set(node.inputs) == {"params:registry", "params:inference", *models, *configs}, name
        assert node.outputs == ["registry.combined_model"]
