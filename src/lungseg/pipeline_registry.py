"""Project pipelines, registered by hand.

Kedro 1.7 imports only the pipeline that is asked for, so ``find_pipelines`` can miss pipelines
(kedro#5549); every pipeline is listed here explicitly.

* ``synthetic_data``: write the embedded synthetic dataset.
* ``ingestion``, ``preprocessing``: the shared steps.
* ``lung_unet``, ``lung_deeplabv3plus``, ``infection_unet``, ``infection_deeplabv3plus``: the shared
  steps that variant needs, then training, evaluation, the baseline and the comparison.
* ``lung_unet_cv``... ``infection_deeplabv3plus_cv``: patient-level k-fold cross-validation of a
  variant, scored out of fold; an infection variant's also scores the combined system (lung_unet
  folds, then the infection folds inside the predicted lungs).
* ``system``: the two U-Nets of the combined system (``lung_unet`` and ``infection_unet``), each in
  its own nested MLflow run under the run of the ``kedro run``.
* ``inference``: segment every case of a folder or a metadata.csv with trained models.
* ``__default__``: the shared steps once, then all four variants.

Every training pipeline ends with ``register_combined_model``: with ``registry.register: true`` the
run's lung and infection models (or fold ensembles) are registered as one MLflow model,
``lungseg-combined`` (a task the pipeline does not train: the newest trained model of it).
"""

from __future__ import annotations

import difflib

import click
from kedro.pipeline import Pipeline

from lungseg.errors import ConfigError
from lungseg.layout import VARIANTS, cv_name, variant_task
from lungseg.pipelines.cv import pipeline as cv
from lungseg.pipelines.evaluation import pipeline as evaluation
from lungseg.pipelines.inference import pipeline as inference
from lungseg.pipelines.ingestion import pipeline as ingestion
from lungseg.pipelines.preprocessing import pipeline as preprocessing
from lungseg.pipelines.synthetic_data import pipeline as synthetic_data
from lungseg.pipelines.training import pipeline as training
from lungseg.pipelines.training.registry import create_registry_pipeline


class UnknownPipelineError(ConfigError, click.ClickException):
    """``kedro run --pipelines=NAME`` with a NAME that is not registered."""


class Pipelines(dict):
    """The registered pipelines; an unknown name is one readable line (#28 row 5), not two tracebacks.

    Kedro catches a ``KeyError`` here and re-raises a ``ValueError`` with a traceback; a
    ``click.ClickException`` is printed by ``kedro run`` as one ``Error: ...`` line with exit code 1.
    """

    def __missing__(self, name):
        close = difflib.get_close_matches(str(name), sorted(self), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UnknownPipelineError(f"no pipeline named '{name}'; {hint}the pipelines: {', '.join(sorted(self))}")


#: The variants of the ``system`` pipeline (and of the combined model registered by ``__default__``).
SYSTEM = ("lung_unet", "infection_unet")


def register_pipelines() -> Pipelines:
    """Register the project's pipelines."""
    ingest = ingestion.create_pipeline()
    shared = ingest + preprocessing.create_shared_pipeline()
    pipelines: dict[str, Pipeline] = {
        "synthetic_data": synthetic_data.create_pipeline(),
        "ingestion": ingest,
        "preprocessing": ingest + preprocessing.create_pipeline(),
        "inference": inference.create_pipeline(),
    }
    for variant in VARIANTS:
        task = variant_task(variant)
        pipelines[variant] = (
            shared
            + preprocessing.create_task_pipeline(task)
            + training.create_variant_pipeline(variant)
            + evaluation.create_pipeline([variant])
            + create_registry_pipeline(variant if task == "lung" else None, variant if task == "infection" else None)
        )
    for variant in VARIANTS:  # patient-level k-fold cross-validation (an infection variant includes lung_unet's)
        infection = variant_task(variant) == "infection"
        tasks = ("lung", "infection") if infection else ("lung",)
        pipelines[cv_name(variant)] = (
            ingest + preprocessing.create_pipeline(tasks) + cv.create_pipeline(variant)
            + create_registry_pipeline(cv_name(cv.COMBINED_LUNG_VARIANT if infection else variant),
                                       cv_name(variant) if infection else None)
        )
    pipelines["system"] = (
        ingest + preprocessing.create_pipeline() + sum((training.create_variant_pipeline(v) for v in SYSTEM), Pipeline([]))
        + evaluation.create_pipeline(SYSTEM) + create_registry_pipeline(*SYSTEM)
    )
    pipelines["__default__"] = (
        ingest + preprocessing.create_pipeline() + training.create_pipeline() + evaluation.create_pipeline(VARIANTS)
        + create_registry_pipeline(*SYSTEM)
    )
    return Pipelines(pipelines)
