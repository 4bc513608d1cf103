"""``training.distribution_strategy``: one device, ``mirrored`` (the devices of one host) or ``multi_worker``
(``tf.distribute.MultiWorkerMirroredStrategy`` over the hosts of ``TF_CONFIG``), as TensorFlow's
"Multi-worker training with Keras" tutorial sets it up.

**The replica rule.** ``training.batch_size`` is the batch of one replica (one GPU, or one CPU worker) and
``training.learning_rate`` the rate for that batch. With N replicas in sync the global batch is
``batch_size * N`` and the learning rate ``learning_rate * N`` (the linear scaling rule), so that one
epoch takes N times fewer steps at the same per-sample learning rate. One replica changes nothing.

**multi_worker.** ``TF_CONFIG`` (``{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker",
"index": i}}``) names the workers. Every worker holds the same model input; worker ``i`` trains on its own
shard of the training slices (every N-th slice from ``i``, cut to the same length on every worker so the
collective steps line up), fed as a ``tf.data`` dataset whose auto-sharding is off (the tutorial's rule when
the input is sharded by hand). Validation runs on the whole validation set on every worker. Only the chief
(worker 0, or the ``chief`` task) writes the model, its config and the MLflow run (:func:`is_chief`).

The strategy must exist before TensorFlow runs any op in the process (the tutorial's "create the strategy
at program start"): ``lungseg train-worker`` creates it first and hands it to
:func:`lungseg.models.run.train_variant`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from lungseg.errors import ConfigError

logger = logging.getLogger(__name__)

STRATEGIES = ("none", "mirrored", "multi_worker")


def strategy_key(name: str | None) -> str:
    key = "none" if name is None else str(name).strip().lower()
    key = "none" if key in ("", "null", "default") else key
    if key not in STRATEGIES:
        raise ConfigError(f"unknown distribution_strategy {name!r}; allowed: {', '.join(STRATEGIES)}")
    return key


def tf_config() -> dict[str, Any]:
    """``$TF_CONFIG``, checked: a cluster with at least one worker and this process's task in it."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ConfigError("distribution_strategy multi_worker needs TF_CONFIG (the cluster's workers and this "
                          "process's task), e.g. {\"cluster\": {\"worker\": [\"host1:12345\", \"host2:12345\"]}, "
                          "\"task\": {\"type\": \"worker\", \"index\": 0}}")
    try:
        conf = json.loads(raw)
        cluster, task = conf["cluster"], conf["task"]
        members = cluster[task["type"]]
        if not isinstance(members, list) or not 0 <= int(task["index"]) < len(members):
            raise ValueError(f"task index {task['index']} is not in the {task['type']} list {members}")
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"TF_CONFIG is not a usable cluster description ({type(exc).__name__}: {exc}): {raw!r}") from exc
    return conf


def is_chief() -> bool:
    """True for the process that writes a training's outputs: no ``TF_CONFIG``, the ``chief`` task, or worker
    0 of a cluster without a chief (TensorFlow's rule)."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return True
    conf = tf_config()
    task = conf["task"]
    if task["type"] == "chief":
        return True
    return task["type"] == "worker" and int(task["index"]) == 0 and "chief" not in conf["cluster"]


def worker_shard() -> tuple[int, int]:
    """``(index, count)`` of this process among the training workers of ``TF_CONFIG`` (chief first)."""
    conf = tf_config()
    cluster, task = conf["cluster"], conf["task"]
    chiefs = len(cluster.get("chief", []))
    index = int(task["index"]) + (chiefs if task["type"] == "worker" else 0)
    return index, chiefs + len(cluster.get("worker", []))


def make_strategy(name: str | None):
    """The ``tf.distribute`` strategy of ``distribution_strategy`` (None for ``none``). ``mirrored``: every
    GPU of this host, else every (logical) CPU device; ``multi_worker``: ``MultiWorkerMirroredStrategy``."""
    key = strategy_key(name)
    if key == "none":
        return None
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ConfigError(f"distribution_strategy {key!r} needs the TensorFlow backend, but Keras runs on "
                          f"{keras.backend.backend()!r} (set KERAS_BACKEND=tensorflow or use distribution_strategy: none)")
    import tensorflow as tf  # lazy: the only TensorFlow imports of lungseg.models are here

    if key == "multi_worker":
        tf_config()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or \
                  [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices=devices)
    logger.info("%s over %d replica(s)", type(strategy).__name__, strategy.num_replicas_in_sync)
    return strategy


def replicas(strategy) -> int:
    return 1 if strategy is None else int(strategy.num_replicas_in_sync)


def is_multi_worker(strategy) -> bool:
    if strategy is None:
        return False
    import tensorflow as tf  # MultiWorkerMirroredStrategy's class is CollectiveAllReduceStrategy

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def scaled(batch_size: int, learning_rate: float, strategy) -> tuple[int, float]:
    """The replica rule: ``(global batch, learning rate)`` for ``strategy``'s replicas."""
    n = replicas(strategy)
    return int(batch_size) * n, float(learning_rate) * n


@contextlib.contextmanager
def multi_worker_fit(model, batch) -> Iterator[None]:
    """Keras 3's ``model.fit`` under ``MultiWorkerMirroredStrategy`` across several workers, made to run
    (keras-team/keras#20585, tensorflow/tensorflow#72388; found on Keras 3.15 / TensorFlow 2.21 with two
    worker processes on 127.0.0.1). ``fit`` fails there twice, both outside the training step itself:

    1. it builds the model's metrics and loss from the first batch of the *distributed* dataset, whose
       elements are ``PerReplica`` values without a shape ("Attempt to convert a value (PerReplica...)").
       Building them beforehand from one local batch (``batch``, a ``(x, y)`` of numpy arrays; Keras' own
       ``_symbolic_build``), and skipping ``fit``'s build step for this model (its
       ``_maybe_symbolic_build``, which reads a distributed batch even when all is built), removes the first;
    2. it reduces each step's scalar logs (the loss, the metrics) across the workers with
       ``strategy.reduce("MEAN", v, axis=0)``, and a scalar has no axis 0 ("Invalid reduction dimension 0
       for input with 0 dimensions"). While this context is open Keras' ``reduce_per_replica`` reduces a
       scalar with ``axis=None`` (the all-reduce mean of the workers' values, as for any other strategy),
       and everything else as before.

    The training step, the all-reduce of the gradients and the callbacks are Keras' own. Enter it inside
    ``strategy.scope()``."""
    from keras.src.backend.tensorflow import trainer as tf_trainer

    model._symbolic_build(data_batch=batch)
    # fit's own build step reads a distributed batch even when everything is built: skipped for this model
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    original = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):
            from keras.src import tree

            def reduce(v):
                parts = v.values if tf_trainer._is_per_replica_instance(v) else (v,)
                if all(getattr(getattr(part, "shape", None), "rank", None) == 0 for part in parts):
                    return strategy.reduce("MEAN", v, axis=None)
                return original(v, strategy, reduction)

            return tree.map_structure(reduce, values)
        return original(values, strategy, reduction)

    tf_trainer.reduce_per_replica = reduce_per_replica
    try:
        yield
    finally:
        tf_trainer.reduce_per_replica = original
        with contextlib.suppress(AttributeError):
            del model._maybe_symbolic_build


def shard(x: np.ndarray, y: np.ndarray, index: int, count: int, batch: int, *extra: np.ndarray) -> tuple[np.ndarray, ...]:
    """Worker ``index`` of ``count``'s training slices: every ``count``-th from ``index``, cut so that every
    worker has the same number of slices (and so of steps). ``extra`` arrays of the same rows (the paint
    regions) are cut alike and returned after ``x`` and ``y``."""
    n = (len(x) // count)
    if n < 1:
        raise ConfigError(f"{len(x)} training slices cannot feed {count} workers")
    keep = np.arange(index, index + n * count, count)
    if n < batch:
        logger.warning("worker %d: %d training slices, fewer than one per-worker batch of %d", index, n, batch)
    return (x[keep], y[keep], *(e[keep] for e in extra))


def as_distributed_input(sequence):
    """A ``keras.utils.PyDataset`` as a ``tf.data.Dataset`` with auto-sharding off and its length known (each
    worker feeds its own shard). Each pass over it is one epoch of the sequence (``set_epoch``)."""
    import tensorflow as tf

    x0, y0 = sequence[0]
    state = {"epoch": -1}

    def batches():
        state["epoch"] += 1
        if hasattr(sequence, "set_epoch"):
            sequence.set_epoch(state["epoch"])
        for i in range(len(sequence)):
            yield sequence[i]

    spec = (tf.TensorSpec((None, *x0.shape[1:]), tf.float32), tf.TensorSpec((None, *y0.shape[1:]), tf.float32))
    ds = tf.data.Dataset.from_generator(batches, output_signature=spec)
    ds = ds.apply(tf.data.experimental.assert_cardinality(len(sequence)))
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options)

