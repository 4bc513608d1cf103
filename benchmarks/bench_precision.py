"""Training and prediction speed in float32 against ``mixed_bfloat16``, side by side in one process.

For each network the same architecture is built twice, once under each Keras dtype policy, on the
same random slices; training steps (``train_on_batch``, Adam, BCE + Dice) and ``predict`` calls are
timed alternately, after a warm-up, and the median is kept. The ratio float32 / bf16 is printed
(the issue's target for the dev_cpu U-Nets: >= 2x per training step).

``--ablate`` also times U-Net variants that each drop one ingredient, to show what holds bf16 back:
BatchNorm, the transposed-convolution up-sampling, the skip concatenations, and a plain conv stack
(no BN, no skips, no up-sampling) as the ceiling.

    python benchmarks/bench_precision.py                     # dev_cpu U-Nets and DeepLabV3+
    python benchmarks/bench_precision.py --paper --steps 4   # the paper's sizes (224 px, base 64)
    python benchmarks/bench_precision.py --only unet --ablate
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402

from lungseg.models import build_model, compile_model, set_seeds  # noqa: E402
from lungseg.models.precision import BF16_CPU_FLAGS, cpu_flags, precision_policy  # noqa: E402

POLICIES = ("float32", "mixed_bfloat16")

#: name -> (architecture, image size, model params, batch size)
DEV_CPU = {
    "infection U-Net (dev_cpu)": ("unet", 128, {"base_filters": 16, "depth": 4, "bn_momentum": 0.9}, 16),
    "lung U-Net (dev_cpu)": ("unet", 192, {"base_filters": 8, "depth": 5, "bn_momentum": 0.9}, 8),
    "DeepLabV3+ (dev_cpu)": ("deeplabv3plus", 128, {"aspp_filters": 64, "decoder_filters": 64, "bn_momentum": 0.9}, 16),
}
PAPER = {
    "U-Net (paper)": ("unet", 224, {"base_filters": 64, "depth": 4}, 8),
    "DeepLabV3+ (paper)": ("deeplabv3plus", 224, {"aspp_filters": 256, "decoder_filters": 256}, 8),
}


def ablation_unet(image_size: int, base: int, depth: int, bn: bool = True, up: str = "transpose",
                  skips: bool = True) -> keras.Model:
    """A U-Net like :func:`lungseg.models.unet.build_unet` with one ingredient switched off."""
    def block(x, f):
        for _ in range(2):
            x = layers.Conv2D(f, 3, padding="same", use_bias=not bn)(x)
            if bn:
                x = layers.BatchNormalization(momentum=0.9)(x)
            x = layers.Activation("relu")(x)
        return x

    inputs = keras.Input((image_size, image_size, 1), dtype="float32")
    x, saved = inputs, []
    for k in range(depth):
        x = block(x, base * 2**k)
        saved.append(x)
        x = layers.MaxPooling2D(2)(x) if up != "none" else x
    x = block(x, base * 2**depth)
    for k in reversed(range(depth)):
        if up == "transpose":
            x = layers.Conv2DTranspose(base * 2**k, 2, strides=2, padding="same")(x)
        elif up == "upsample":
            x = layers.Conv2D(base * 2**k, 1)(layers.UpSampling2D(2)(x))
        if skips:
            x = layers.Concatenate()([x, saved[k]])
        x = block(x, base * 2**k)
    out = layers.Activation("sigmoid", dtype="float32")(layers.Conv2D(1, 1)(x))
    return keras.Model(inputs, out)


def _data(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((n, size, size, 1), dtype=np.float32)
    return x, (x > 0.6).astype(np.float32)


def time_pair(build, size: int, batch: int, steps: int, predict_batches: int = 2) -> dict:
    """Median training step and predict time of ``build()`` under each policy, alternated."""
    x, y = _data(batch, size)
    xp = np.concatenate([x] * predict_batches)
    models = {}
    for policy in POLICIES:
        set_seeds(0)
        with precision_policy(policy):
            models[policy] = compile_model(build(), loss="bce_dice", learning_rate=1e-4)
        for _ in range(2):  # trace and warm up
            models[policy].train_on_batch(x, y)
        models[policy].predict(xp, batch_size=batch, verbose=0)
    train = {p: [] for p in POLICIES}
    pred = {p: [] for p in POLICIES}
    for _ in range(steps):
        for policy, model in models.items():
            t0 = time.perf_counter()
            model.train_on_batch(x, y)
            train[policy].append(time.perf_counter() - t0)
    for _ in range(max(2, steps // 2)):
        for policy, model in models.items():
            t0 = time.perf_counter()
            model.predict(xp, batch_size=batch, verbose=0)
            pred[policy].append(time.perf_counter() - t0)
    out = {"n_params": int(models["float32"].count_params()), "image_size": size, "batch_size": batch}
    for policy in POLICIES:
        out[f"train_ms_{policy}"] = 1000 * float(np.median(train[policy]))
        out[f"predict_ms_{policy}"] = 1000 * float(np.median(pred[policy]))
    out["train_speedup"] = out["train_ms_float32"] / out["train_ms_mixed_bfloat16"]
    out["predict_speedup"] = out["predict_ms_float32"] / out["predict_ms_mixed_bfloat16"]
    return out


def _print(name: str, r: dict) -> None:
    print(f"{name:34s} {r['image_size']:4d} px  batch {r['batch_size']:3d}  {r['n_params']:>10,} params | "
          f"train step {r['train_ms_float32']:8.1f} -> {r['train_ms_mixed_bfloat16']:8.1f} ms  "
          f"x{r['train_speedup']:.2f} | predict {r['predict_ms_float32']:8.1f} -> "
          f"{r['predict_ms_mixed_bfloat16']:8.1f} ms  x{r['predict_speedup']:.2f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=8, help="timed training steps per policy (median kept)")
    p.add_argument("--paper", action="store_true", help="also the paper's sizes (224 px, base 64 / 256 filters)")
    p.add_argument("--only", choices=("unet", "deeplabv3plus"), help="one architecture")
    p.add_argument("--ablate", action="store_true", help="U-Net variants without BN / up-sampling / skips")
    p.add_argument("--json", action="store_true", help="also print one JSON line per network")
    args = p.parse_args(argv)

    import tensorflow as tf

    flags = sorted(set(BF16_CPU_FLAGS) & cpu_flags())
    print(f"keras {keras.__version__} ({keras.backend.backend()}), tensorflow {tf.__version__}, python "
          f"{platform.python_version()}, {os.cpu_count()} CPUs, bf16 CPU flags: {', '.join(flags) or 'none'}; "
          f"TF threads intra {tf.config.threading.get_intra_op_parallelism_threads()} / inter "
          f"{tf.config.threading.get_inter_op_parallelism_threads()} (0: TensorFlow picks, one per core)")
    print("float32 -> mixed_bfloat16, median of alternated runs in this process; xN = float32 time / bf16 time\n")
    nets = {**DEV_CPU, **(PAPER if args.paper else {})}
    for name, (arch, size, params, batch) in nets.items():
        if args.only and arch != args.only:
            continue
        r = time_pair(lambda arch=arch, size=size, params=params: build_model(arch, size, params), size, batch, args.steps)
        _print(name, r)
        if args.json:
            print(json.dumps({"name": name, **r}))
    if args.ablate:
        print("\nU-Net ablation, the infection U-Net's size (128 px, base 16, depth 4, batch 16):")
        variants = {
            "as built (BN, transpose up, skips)": {},
            "no BatchNorm": {"bn": False},
            "UpSampling2D + 1x1 conv, not transpose": {"up": "upsample"},
            "no skip concatenations": {"skips": False},
            "no BN, no skips": {"bn": False, "skips": False},
            "plain conv stack (no BN/pool/up/skips)": {"bn": False, "up": "none", "skips": False},
        }
        for name, kw in variants.items():
            depth = 2 if kw.get("up") == "none" else 4  # a full-resolution stack of depth 4 would be a different cost
            r = time_pair(lambda kw=kw, depth=depth: ablation_unet(128, 16, depth, **kw), 128, 16, args.steps)
            _print(name, r)
            if args.json:
                print(json.dumps({"name": name, **r}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
