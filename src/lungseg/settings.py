"""Kedro project settings for lungseg."""

from kedro.config import OmegaConfigLoader

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

from lungseg.hooks import MlflowTagsHook, RawDataCheckHook  # noqa: E402

HOOKS = (MlflowTagsHook(), RawDataCheckHook())
