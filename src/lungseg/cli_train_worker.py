"""``lungseg train-worker --variant V [--env E]``: one worker of a multi-worker training (#27 item 3).

Start one per host (or per process on one host) with ``TF_CONFIG`` naming the cluster and this worker's
task, from the project folder, after ``kedro run --pipelines=preprocessing`` has written the model inputs
(every worker must see ``data/05_model_input``). Each worker:

1. checks ``TF_CONFIG`` and creates ``tf.distribute.MultiWorkerMirroredStrategy`` before TensorFlow runs
   anything (:mod:`lungseg.models.distribute`);
2. reads the environment's parameters and catalog (Kedro's config loader; no Kedro session, so no hook
   opens an MLflow run on a worker), and the variant's model input and case split;
3. trains the variant (:func:`lungseg.models.run.train_variant`) on its shard of the slices, with the
   global batch and learning rate of the replica rule; backups are off (``backup_dir: null``);
4. the chief alone writes the model and its config into the catalog's ``data/06_models/<variant>/`` and
   one MLflow run (parameters, the epoch metrics, the logged model); the other workers write nothing
   there.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_parser(sub, parents) -> None:
    p = sub.add_parser("train-worker", parents=parents,
                       help="one worker of a multi-worker training (TF_CONFIG; see docs and README 'Scaling out')",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", required=True, help="lung_unet, infection_unet, ...")
    p.add_argument("--env", default=None, help="the Kedro environment (default: local)")
    p.add_argument("--project", default=".", help="the project folder (default: the current folder)")
    p.set_defaults(func=train_worker)


def train_worker(args: argparse.Namespace) -> int:
    from lungseg.errors import ConfigError
    from lungseg.layout import VARIANTS, variant_task
    from lungseg.models.distribute import is_chief, make_strategy, tf_config, worker_shard

    if args.variant not in VARIANTS:
        raise ConfigError(f"--variant {args.variant!r}: not one of {', '.join(VARIANTS)}")
    tf_config()  # a clear error before TensorFlow starts
    strategy = make_strategy("multi_worker")  # first: before any TensorFlow op in this process
    project = Path(args.project).resolve()
    os.chdir(project)  # the catalog's paths are relative to the project folder
    loader, catalog = _config(project, args.env)
    params = loader["parameters"]
    variant, task = args.variant, variant_task(args.variant)
    model_input = catalog.load(f"preprocessing.{task}_model_input")
    split = catalog.load("preprocessing.case_split")
    training = {**params[variant]["training"], "distribution_strategy": "multi_worker", "backup_dir": None}
    from lungseg.models.run import train_variant

    result = train_variant(model_input, split, params[variant]["model"], training, params["dataset_name"],
                           strategy=strategy)
    index, count = worker_shard()
    if not is_chief():
        print(f"lungseg: worker {index} of {count} done; the chief writes the model and the MLflow run")
        return 0
    result.config["distribution"] = {"strategy": "multi_worker", "workers": count,
                                     "replicas": int(strategy.num_replicas_in_sync)}
    catalog.save(f"{variant}.model_config", result.config)  # the config first: a model never lacks it
    catalog.save(f"{variant}.model", result.model)
    run_id = _log_run(loader, catalog, variant, params[variant], training, result, count)
    print(f"lungseg: chief of {count} workers: {variant} saved to data/06_models/{variant}/; MLflow run {run_id}")
    return 0


def _config(project: Path, env: str | None):
    from kedro.framework.project import settings
    from kedro.framework.startup import bootstrap_project
    from kedro.io import DataCatalog

    bootstrap_project(project)
    loader = settings.CONFIG_LOADER_CLASS(conf_source=str(project / "conf"), env=env, **settings.CONFIG_LOADER_ARGS)
    return loader, DataCatalog.from_config(loader["catalog"])


def _log_run(loader, catalog, variant: str, variant_params: dict, training: dict, result, workers: int) -> str:
    import mlflow

    from lungseg.tracking import flatten_params, history_to_steps, log_precision

    conf = loader["mlflow"]
    mlflow.set_tracking_uri(conf["server"]["mlflow_tracking_uri"])
    mlflow.set_experiment(conf["tracking"]["experiment"]["name"])
    tags = {"variant": variant, "distribution_strategy": "multi_worker", "workers": str(workers),
            "dataset": str(result.config.get("dataset"))}
    with mlflow.start_run(run_name=f"{variant} ({workers} workers)", tags=tags) as run:
        mlflow.log_params(flatten_params({"model": variant_params["model"], "training": training}))
        catalog.save(f"{variant}.epoch_metrics", history_to_steps(result.history))
        catalog.save(f"{variant}.mlflow_model", {"model": result.model, "config": result.config})
        log_precision(result.config["precision"])
        return run.info.run_id
