"""Every conf environment's training settings pass the checks a training run makes first: a profile
that only real data (conf/dev_cpu) or a long run would exercise fails here, on no data at all."""

from __future__ import annotations

from pathlib import Path

import pytest
from kedro.config import OmegaConfigLoader

from lungseg.models.run import check_training_params
from lungseg.settings import CONFIG_LOADER_ARGS

CONF = Path(__file__).resolve().parents[2] / "conf"
VARIANTS = ("lung_unet", "lung_deeplabv3plus", "infection_unet", "infection_deeplabv3plus")


@pytest.mark.parametrize("env", sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "local"))
def test_each_profile_s_training_settings_pass_the_run_s_checks(env):
    args = {**CONFIG_LOADER_ARGS, "default_run_env": env}
    params = OmegaConfigLoader(conf_source=str(CONF), **args)["parameters"]
    for variant in VARIANTS:
        checked = check_training_params(params[variant]["model"], params[variant]["training"], f"{variant}.training")
        assert checked["epochs"] >= 1 and checked["validation_freq"] >= 1
