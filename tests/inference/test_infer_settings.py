"""InferenceSettings: the Segmenter's settings, read once from the ``inference`` parameters (#26 item 1)."""

from __future__ import annotations

import dataclasses

import pytest

from lungseg.errors import ConfigError
from lungseg.inference.segment import Segmenter
from lungseg.inference.settings import SEGMENTER_KEYS, InferenceSettings
from lungseg.limits import GuardParams, inference_parameters, load_guard


def test_from_params_reads_the_inference_section():
    params = inference_parameters()
    settings = InferenceSettings.from_params(params)
    assert settings.batch_size == params["batch_size"] and settings.lung_min_ratio == params["lung_min_ratio"]
    assert settings.lung_fill_holes is params["lung_fill_holes"] and settings.flip_tta is params["flip_tta"]
    assert settings.guard == load_guard() and isinstance(settings.guard, GuardParams)
    assert settings.input_equalised is False and settings.chunk_slices == 64
    assert InferenceSettings.from_params(params, flip_tta=True, batch_size=2).flip_tta is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.batch_size = 3  # type: ignore[misc]
    assert settings.replace(batch_size=3).batch_size == 3 and settings.batch_size == params["batch_size"]


def test_from_params_names_what_is_missing_or_wrong():
    params = {k: inference_parameters()[k] for k in SEGMENTER_KEYS}
    with pytest.raises(ConfigError, match=r"parameters 'inference' lack 'flip_tta'"):
        InferenceSettings.from_params({k: v for k, v in params.items() if k != "flip_tta"})
    with pytest.raises(ConfigError, match=r"inference\.guard"):
        InferenceSettings.from_params({**params, "guard": {**params["guard"], "max_lung_mll": 1}})
    with pytest.raises(ConfigError, match="batch_size must be at least 1"):
        InferenceSettings.from_params({**params, "batch_size": 0})
    with pytest.raises(ConfigError, match="guard"):
        InferenceSettings(guard=None)  # type: ignore[arg-type]


def test_the_segmenter_takes_its_settings_and_reads_nothing():
    settings = InferenceSettings(guard=dict(inference_parameters()["guard"]), batch_size=4, chunk_slices=5,
                                 input_equalised=True, lung_fill_holes=True)
    seg = Segmenter.from_models(None, None, settings)
    assert isinstance(seg.guard, GuardParams) and seg.settings is settings
    assert (seg.batch_size, seg.chunk_slices, seg.lung_fill_holes) == (4, 8, True)  # chunks of whole batches
    assert seg._overrides == {"clahe_clip_limit": 0.0}
    with pytest.raises(ConfigError, match="InferenceSettings"):
        Segmenter(None, None, {"batch_size": 4})  # type: ignore[arg-type]


def test_the_library_reads_no_parameters_behind_the_callers_back(tmp_path, monkeypatch):
    from lungseg.limits import CONF_DIR_ENV, Limits, as_limits

    limits = inference_parameters()["limits"]
    guard = inference_parameters()["guard"]
    monkeypatch.setenv(CONF_DIR_ENV, str(tmp_path))  # no parameters_inference.yml there
    assert isinstance(as_limits(limits), Limits) and as_limits(as_limits(limits)) == as_limits(limits)
    assert Segmenter.from_models(None, None, InferenceSettings(guard=guard)).guard == GuardParams.from_params(guard)
    with pytest.raises(ConfigError, match="no resource limits given"):
        as_limits(None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="parameters_inference.yml"):
        load_guard()  # only a front end's explicit call reads them
