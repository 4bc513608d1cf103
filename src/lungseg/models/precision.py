"""Numeric precision of training and prediction: ``float32``, ``mixed_bfloat16`` or ``auto``.

``mixed_bfloat16`` is Keras' mixed policy: layers compute in bfloat16 and keep their variables
(and so the saved weights) in float32. The output layers of :mod:`lungseg.models.unet` and
:mod:`lungseg.models.deeplabv3plus` are built with ``dtype="float32"``, so the sigmoid, the loss
and the metrics stay in float32. A model trained in bf16 therefore loads and predicts in float32
on any machine, and the other way round.

``auto`` picks ``mixed_bfloat16`` where the hardware computes bf16 natively (a CPU with AMX-BF16 or
AVX512-BF16, or a GPU of compute capability 8.0 or newer), and ``float32`` elsewhere, where bf16 is
emulated and slower. The choice and its reason are logged once per process and setting.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from lungseg.errors import ConfigError

logger = logging.getLogger(__name__)

#: The values ``training.precision`` and ``inference.precision`` accept.
PRECISIONS = ("float32", "mixed_bfloat16", "auto")
#: CPU flags (``/proc/cpuinfo``) under which oneDNN computes bf16 natively.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")

_logged: set[tuple[str, str]] = set()


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags, as Linux lists them; empty where ``/proc/cpuinfo`` is unreadable."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def _gpu_supports_bf16() -> bool:
    """True when TensorFlow sees a GPU of compute capability 8.0 or newer (Ampere on)."""
    try:
        import tensorflow as tf

        for gpu in tf.config.list_physical_devices("GPU"):
            capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
            if capability and tuple(capability) >= (8, 0):
                return True
    except Exception:  # noqa: BLE001 - no TensorFlow, or no usable GPU: the CPU decides
        return False
    return False


def check_precision(value: object, section: str) -> str:
    """``value`` when it is one of :data:`PRECISIONS`, or a ConfigError naming ``section``."""
    if value not in PRECISIONS:
        raise ConfigError(f"{section}.precision must be one of {', '.join(PRECISIONS)}, got {value!r}")
    return str(value)


def resolve_precision(name: str, flags: Iterable[str] | None = None, gpu_bf16: bool | None = None) -> tuple[str, str]:
    """The Keras dtype policy for ``name`` and why it was chosen.

    Args:
        name: one of :data:`PRECISIONS`.
        flags: the CPU flags to decide ``auto`` by; ``None`` reads them from ``/proc/cpuinfo``.
        gpu_bf16: whether a bf16-capable GPU is present; ``None`` asks TensorFlow.

    Returns:
        ``(policy, reason)`` with ``policy`` ``"float32"`` or ``"mixed_bfloat16"``.
    """
    check_precision(name, "precision")
    if name != "auto":
        return name, "set explicitly"
    present = sorted(set(BF16_CPU_FLAGS) & set(cpu_flags() if flags is None else flags))
    if present:
        return "mixed_bfloat16", f"auto: the CPU computes bf16 natively ({', '.join(present)})"
    if _gpu_supports_bf16() if gpu_bf16 is None else gpu_bf16:
        return "mixed_bfloat16", "auto: a GPU of compute capability 8.0 or newer"
    return "float32", f"auto: neither {' nor '.join(BF16_CPU_FLAGS)} in the CPU flags, and no bf16 GPU"


def resolve_and_log(name: str, what: str) -> str:
    """:func:`resolve_precision`, logging the choice once per process for each ``(what, name)``."""
    policy, why = resolve_precision(name)
    if (what, name) not in _logged:
        _logged.add((what, name))
        logger.info("%s precision: %s (%s)", what, policy, why)
    return policy


@contextlib.contextmanager
def precision_policy(policy: str) -> Iterator[None]:
    """Build (and run) models under the Keras dtype ``policy``, restoring the previous one after.

    Keras reads the global policy when a layer is created, so the model must be built inside this
    block; a model built here keeps its policy after the block ends.
    """
    import keras

    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy(previous)


def with_precision(model, policy: str):
    """``model`` itself when it already computes in ``policy``; otherwise a copy that does, with the
    same weights (float32 variables either way).

    Every layer but the inputs and the output layers takes ``policy``; the output layers stay
    float32, as :mod:`lungseg.models.unet` builds them, so the probabilities are float32 whatever
    the policy. Used to save a bf16-trained model as a float32 one, and to predict in bf16 with a
    float32-trained model.
    """
    import keras

    if policy not in ("float32", "mixed_bfloat16"):
        raise ConfigError(f"precision policy must be float32 or mixed_bfloat16, got {policy!r}")
    outputs = {id(t._keras_history[0]) for t in model.outputs}  # noqa: SLF001 - Keras' own link

    def computing(m):  # every layer that takes the policy, inside nested models (a DeepLab backbone) too
        for layer in m.layers:
            if isinstance(layer, keras.Model):
                yield from computing(layer)
            elif id(layer) not in outputs and not isinstance(layer, keras.layers.InputLayer):
                yield layer

    if all(layer.dtype_policy.name == policy for layer in computing(model)):
        return model

    def clone(layer):
        config = layer.get_config()
        if id(layer) not in outputs and not isinstance(layer, keras.layers.InputLayer):
            config["dtype"] = policy
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    copy.set_weights(model.get_weights())
    return copy


def predict_in(model, policy: str):
    """A predictor like ``model`` that computes in ``policy``: a Keras model through
    :func:`with_precision`, and the members of an ensemble (anything with ``members`` or a wrapped
    ``model``, as :mod:`lungseg.inference.ensemble` builds them) one by one."""
    if hasattr(model, "members"):
        model.members = [predict_in(m, policy) for m in model.members]
        return model
    if hasattr(model, "get_weights"):
        return with_precision(model, policy)
    if hasattr(model, "model"):
        model.model = predict_in(model.model, policy)
        return model
    return model


def loaded_in(loaded, policy: str):
    """A loaded model (anything with a ``model``, as :class:`lungseg.inference.models.LoadedModel`)
    set to predict in ``policy``; None and float32 leave it as it is. The CLI and the inference
    pipeline both go through here. The policy is kept as ``loaded.precision``, for the reports."""
    if loaded is not None and policy != "float32":
        loaded.model = predict_in(loaded.model, policy)
    if loaded is not None:
        loaded.precision = policy
    return loaded
