"""training.precision / inference.precision: choosing bf16, building and saving under it."""

from __future__ import annotations

import numpy as np
import pytest

from lungseg.errors import ConfigError
from lungseg.models.precision import PRECISIONS, cpu_flags, precision_policy, resolve_precision, with_precision


def test_auto_picks_bf16_only_where_the_cpu_or_a_gpu_computes_it_natively():
    assert resolve_precision("auto", flags={"sse4_2", "amx_bf16", "amx_tile"}, gpu_bf16=False)[0] == "mixed_bfloat16"
    policy, why = resolve_precision("auto", flags={"avx512f", "avx512_bf16"}, gpu_bf16=False)
    assert policy == "mixed_bfloat16" and "avx512_bf16" in why
    policy, why = resolve_precision("auto", flags={"avx2", "avx512f"}, gpu_bf16=False)
    assert policy == "float32" and "neither amx_bf16 nor avx512_bf16" in why
    assert resolve_precision("auto", flags=set(), gpu_bf16=True) == (
        "mixed_bfloat16", "auto: a GPU of compute capability 8.0 or newer")
    # an explicit choice is kept whatever the hardware
    assert resolve_precision("float32", flags={"amx_bf16"})[0] == "float32"
    assert resolve_precision("mixed_bfloat16", flags=set(), gpu_bf16=False)[0] == "mixed_bfloat16"


def test_an_unknown_precision_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"precision must be one of float32, mixed_bfloat16, auto, got 'bf16'"):
        resolve_precision("bf16")
    from lungseg.models.run import check_training_params

    base = {"epochs": 2, "batch_size": 4, "learning_rate": 1e-3, "loss": "bce", "seed": 0, "threshold": 0.5,
            "reduce_lr": None, "early_stopping": None, "augment": None, "distribution_strategy": "none",
            "verbose": 0, "backup_dir": None, "max_train_slices": None, "repeats": 1,
            "lr_schedule": "plateau", "weights": "best", "validation_freq": 1, "precision": "float32"}
    for value in PRECISIONS:
        assert check_training_params({"architecture": "unet"}, {**base, "precision": value})["precision"] == value
    with pytest.raises(ConfigError, match=r"training.precision must be one of .*, got 'float16'"):
        check_training_params({"architecture": "unet"}, {**base, "precision": "float16"})
    del base["precision"]
    with pytest.raises(ConfigError, match=r"missing parameter training.precision"):
        check_training_params({"architecture": "unet"}, base)


def test_cpu_flags_are_read_from_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: test\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def _policies(model):
    import keras

    out = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.update(_policies(layer))
        elif not isinstance(layer, keras.layers.InputLayer):
            out[layer.name] = layer.dtype_policy.name
    return out


def test_a_model_built_under_bf16_keeps_float32_weights_and_a_float32_output_and_the_policy_is_restored():
    import keras

    from lungseg.models.unet import build_unet

    before = keras.mixed_precision.dtype_policy().name
    with precision_policy("mixed_bfloat16"):
        model = build_unet(image_size=16, base_filters=2, depth=1)
    assert keras.mixed_precision.dtype_policy().name == before
    policies = _policies(model)
    assert policies["enc1_conv1"] == "mixed_bfloat16" and policies["mask"] == "float32"
    assert {str(w.dtype) for w in model.weights} == {"float32"}
    out = model.predict(np.zeros((1, 16, 16, 1), np.float32), verbose=0)
    assert out.dtype == np.float32


@pytest.mark.parametrize("arch", ["unet", "deeplabv3plus"])
def test_with_precision_switches_every_layer_but_the_head_and_keeps_the_weights(arch):
    from lungseg.models.factory import build_model

    params = ({"base_filters": 4, "depth": 2} if arch == "unet"
              else {"aspp_filters": 8, "decoder_filters": 8, "low_level_filters": 8})
    model = build_model(arch, 32, params)
    assert with_precision(model, "float32") is model  # nothing to do
    bf16 = with_precision(model, "mixed_bfloat16")
    policies = _policies(bf16)
    computing = {n: p for n, p in policies.items() if n != "mask"}
    assert set(computing.values()) == {"mixed_bfloat16"}, "a nested backbone layer stayed float32"
    assert policies["mask"] == "float32"
    for a, b in zip(model.get_weights(), bf16.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)
    p32, p16 = model.predict(x, verbose=0), bf16.predict(x, verbose=0)
    assert p16.dtype == np.float32 and np.abs(p32 - p16).max() < 0.2  # bf16 keeps ~3 significant digits
    back = with_precision(bf16, "float32")
    np.testing.assert_allclose(back.predict(x, verbose=0), p32, atol=1e-6)
    with pytest.raises(ConfigError, match="float32 or mixed_bfloat16"):
        with_precision(model, "auto")
