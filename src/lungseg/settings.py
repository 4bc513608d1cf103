"""Kedro project settings for lungseg."""

import os

from kedro.config import OmegaConfigLoader

from lungseg.hooks import LungsegMlflowHook, ParamsCheckHook, RawDataCheckHook, RunEnvironmentHook
from lungseg.tf_quiet import import_quietly

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "config_patterns": {
        "mlflow": ["mlflow*", "mlflow*/**", "**/mlflow*"],
    },
    # conf/demo and conf/dev_cpu hold only what differs from conf/base: their parameters are merged
    # key by key into base's (a destructive merge would replace a whole top-level key such as
    # `infection_unet`, so every environment had to repeat every setting).
    "merge_strategy": {"parameters": "soft"},
}

# kedro-mlflow's hook is replaced by its subclass LungsegMlflowHook (unprefixed keys, one nested MLflow run
# per variant); the plugin's own instance would log every parameter a second time with its variant prefix.
DISABLE_HOOKS_FOR_PLUGINS = ("kedro_mlflow", "kedro-mlflow")  # the name as installed metadata spells it
HOOKS = (LungsegMlflowHook(), RawDataCheckHook(), ParamsCheckHook(CONFIG_LOADER_CLASS, CONFIG_LOADER_ARGS),
         RunEnvironmentHook())  # the run's Kedro environment for the nodes: training records it

# TensorFlow's start-up lines (oneDNN, the CUDA probes, the CPU-feature note) are held back for every kedro
# command of the project, `kedro run` and `kedro viz` included: TensorFlow is imported here, once, with them
# filtered out of stderr (anything else it writes passes). LUNGSEG_TF_VERBOSE=1 shows them.
if not os.environ.get("LUNGSEG_TF_VERBOSE"):
    import_quietly()
