"""Kedro project settings for lungseg."""

from kedro.config import OmegaConfigLoader

from lungseg.hooks import LungsegMlflowHook, ParamsCheckHook, RawDataCheckHook, RunEnvironmentHook

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
