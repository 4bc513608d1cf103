"""lungseg: lung and COVID-19 infection segmentation in chest CT, as a Kedro project."""

import warnings as _warnings

__version__ = "0.1.0"

# Third-party warnings that every `kedro run` printed, filtered narrowly (by message and by the module that
# emits them) because their cause is not in lungseg. This package is imported (through settings.py) before
# Kedro builds the config loader, the hooks or the pipelines, so the filters are in place in time.
#
# Kedro 1.7's OmegaConfigLoader and kedro-mlflow 2.0's hook call OmegaConf.register_new_resolver(), which
# omegaconf 2.4 deprecates; lungseg registers no resolver of its own.
_warnings.filterwarnings("ignore", message=r"register_new_resolver\(\) is deprecated", category=UserWarning,
                         module=r"(kedro\.config\.omegaconf_config|kedro_mlflow\.)")
# Kedro warns (once per process) when a node of one namespace reads a dataset of another, such as
# "preprocessing.case_split" in the infection_unet pipeline or "infection_unet.metrics" in evaluation:
# that is how the namespaced variant pipelines share the preprocessing outputs, on purpose.
_warnings.filterwarnings("ignore", message=r"One or more dataset names contain '\.' characters",
                         category=UserWarning, module=r"kedro\.pipeline\.node")
# MLflow 3 asks, at import of any PythonModel subclass, for type hints on `predict` to infer a signature; the
# lungseg-combined pyfunc logs an explicit signature (lungseg.serving), so the hint would change nothing.
# (kedro-mlflow's own PythonModel prints it once at `kedro` start-up, before any project code is loaded.)
_warnings.filterwarnings("ignore", message=r"Add type hints to the `predict` method", category=UserWarning)
# kedro-viz 12 imports FastAPI's ORJSONResponse, which FastAPI deprecates: not lungseg's to fix.
_warnings.filterwarnings("ignore", message=r"ORJSONResponse is deprecated")
