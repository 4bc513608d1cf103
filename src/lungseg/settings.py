"""Kedro project settings for lungseg."""

from kedro.config import OmegaConfigLoader

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "config_patterns": {
        "mlflow": ["mlflow*", "mlflow*/**", "**/mlflow*"],
    },
}

from lungseg.hooks import MlflowTagsHook  # noqa: E402

HOOKS = (MlflowTagsHook(),)
