"""Training throughput: ``model.fit`` fed by ``SliceSequence`` (with augmentation) vs in-memory arrays.

Both modes train the same compiled model on the same synthetic slices, in the same process, after
a warm-up epoch each (graph tracing). Throughput is images per second over one timed epoch of
``--steps`` batches (best of ``--repeats``, modes alternated), and in steady state from the median
step time (the first step of each epoch left out); the ratios (a)/(b) show what the on-the-fly
pipeline costs (target >= 0.95). Short epochs on a busy CPU are noisy: use enough ``--steps``.

    python benchmarks/bench_train.py --image-size 224 --batch-size 8 --steps 10 --arch both

``--precision float32,mixed_bfloat16`` runs both modes under each Keras policy in the same process
and prints float32 / bf16 throughput ratios (#24): with the augmenting input pipeline (what a
``kedro run`` trains with) and on in-memory arrays (the model alone). The dev_cpu U-Nets:

    python benchmarks/bench_train.py --arch unet --image-size 128 --base-filters 16 --depth 4 --batch-size 16 \
        --steps 12 --precision float32,mixed_bfloat16      # the infection U-Net
    python benchmarks/bench_train.py --arch unet --image-size 192 --base-filters 8 --depth 5 --batch-size 8 \
        --steps 12 --precision float32,mixed_bfloat16      # the lung U-Net
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

from lungseg.imaging import to_unit_float  # noqa: E402
from lungseg.models import SliceSequence, build_model, compile_model, set_seeds  # noqa: E402

AUGMENT = {"hflip": True, "rotation_deg": 15, "scale_min": 0.9, "scale_max": 1.1, "p": 1.0}


class _StepTimer(keras.callbacks.Callback):
    """Wall-clock of each training batch (to report a steady-state per-step time)."""

    def __init__(self):
        super().__init__()
        self.times: list[float] = []
        self._t0 = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._t0)


def synthetic_slices(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images with bright ellipses (the masks) on a noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((n, size, size), np.uint8)
    masks = np.empty((n, size, size), np.uint8)
    for k in range(n):
        cy, cx = rng.uniform(0.3, 0.7, 2) * size
        ry, rx = rng.uniform(0.1, 0.25, 2) * size
        m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        masks[k] = m
        images[k] = np.clip(50 + 150 * m + rng.normal(0, 20, (size, size)), 0, 255)
    return images, masks


def _timed_fit(model, data, batch_size: int) -> tuple[float, float]:
    """(wall seconds of one ``fit`` epoch, median seconds per step after the epoch's first step)."""
    timer = _StepTimer()
    t0 = time.perf_counter()
    if isinstance(data, SliceSequence):
        model.fit(data, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
    else:
        x, y = data
        model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=True, verbose=0, callbacks=[timer])
    wall = time.perf_counter() - t0
    steady = timer.times[1:] or timer.times
    return wall, float(np.median(steady)) if steady else float("nan")


def bench_arch(arch: str, args: argparse.Namespace, precision: str = "float32") -> dict:
    from lungseg.models.precision import precision_policy

    set_seeds(0)
    params = (
        {"base_filters": args.base_filters, "depth": args.depth}
        if arch == "unet"
        else {"aspp_filters": args.aspp_filters, "decoder_filters": args.decoder_filters}
    )
    with precision_policy(precision):  # built (and so trained) under the Keras dtype policy
        model = compile_model(build_model(arch, args.image_size, params), loss="bce_dice", learning_rate=1e-4)
    n = args.batch_size * args.steps
    images, masks = synthetic_slices(n, args.image_size)
    seq = SliceSequence(images, masks, args.batch_size, AUGMENT, shuffle=True, seed=0, workers=args.workers)
    arrays = (to_unit_float(images)[..., None], masks.astype(np.float32)[..., None])
    # Warm-up: trace the train function for both input kinds.
    warm_seq = SliceSequence(
        images[: args.batch_size * 2],
        masks[: args.batch_size * 2],
        args.batch_size,
        AUGMENT,
        shuffle=True,
        seed=1,
        workers=args.workers,
    )
    _timed_fit(model, warm_seq, args.batch_size)
    _timed_fit(model, (arrays[0][: args.batch_size * 2], arrays[1][: args.batch_size * 2]), args.batch_size)

    best = {"sequence": (np.inf, np.inf), "arrays": (np.inf, np.inf)}
    for _ in range(args.repeats):
        for mode, data in (("sequence", seq), ("arrays", arrays)):
            wall, step = _timed_fit(model, data, args.batch_size)
            best[mode] = (min(best[mode][0], wall), min(best[mode][1], step))
    result = {
        "arch": arch,
        "precision": precision,
        "params": params,
        "n_params": int(model.count_params()),
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "seq_images_per_s": n / best["sequence"][0],
        "arrays_images_per_s": n / best["arrays"][0],
        "seq_step_s_median": best["sequence"][1],
        "arrays_step_s_median": best["arrays"][1],
    }
    result["ratio"] = result["seq_images_per_s"] / result["arrays_images_per_s"]
    result["ratio_steady"] = result["arrays_step_s_median"] / result["seq_step_s_median"]
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="batches in each timed epoch")
    p.add_argument("--arch", choices=("unet", "deeplabv3plus", "both"), default="both")
    p.add_argument("--base-filters", type=int, default=64, help="U-Net base filters")
    p.add_argument("--depth", type=int, default=4, help="U-Net depth")
    p.add_argument("--aspp-filters", type=int, default=256)
    p.add_argument("--decoder-filters", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2, help="timed epochs per mode (best is kept)")
    p.add_argument("--workers", type=int, default=1, help="SliceSequence loader threads")
    p.add_argument("--json", action="store_true", help="also print one JSON line per architecture")
    p.add_argument("--check", action="store_true", help="exit with status 1 when a ratio is below 0.95")
    p.add_argument(
        "--precision",
        default="float32",
        help="Keras policies, comma-separated (float32,mixed_bfloat16: both, and their ratio)",
    )
    args = p.parse_args(argv)
    precisions = [x.strip() for x in args.precision.split(",") if x.strip()]

    archs = ("unet", "deeplabv3plus") if args.arch == "both" else (args.arch,)
    print(
        f"keras {keras.__version__} ({keras.backend.backend()}), python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    ok = True
    for arch in archs:
        runs = {}
        for precision in precisions:
            r = runs[precision] = bench_arch(arch, args, precision)
            print(
                f"\n{arch} {r['params']} ({r['n_params']:,} params), {args.image_size} px, batch {args.batch_size}, "
                f"{args.steps} steps, {precision}:"
            )
            print(
                f"  (a) fit(SliceSequence + augmentation): {r['seq_images_per_s']:8.2f} images/s, "
                f"median step {r['seq_step_s_median'] * 1000:9.1f} ms"
            )
            print(
                f"  (b) fit(in-memory float32 arrays):     {r['arrays_images_per_s']:8.2f} images/s, "
                f"median step {r['arrays_step_s_median'] * 1000:9.1f} ms"
            )
            print(
                f"  ratio (a)/(b): whole epoch {r['ratio']:.3f}, steady state (median step) "
                f"{r['ratio_steady']:.3f}  (target >= 0.95)",
                flush=True,
            )
            if args.json:
                print(json.dumps(r))
            ok &= min(r["ratio"], r["ratio_steady"]) >= 0.95
        if "float32" in runs and "mixed_bfloat16" in runs:
            f, b = runs["float32"], runs["mixed_bfloat16"]
            print(
                f"  float32 -> bf16, {arch}: images/s x{b['seq_images_per_s'] / f['seq_images_per_s']:.2f} with the "
                f"augmenting SliceSequence (median step x{f['seq_step_s_median'] / b['seq_step_s_median']:.2f}), "
                f"x{b['arrays_images_per_s'] / f['arrays_images_per_s']:.2f} on in-memory arrays (median step "
                f"x{f['arrays_step_s_median'] / b['arrays_step_s_median']:.2f})",
                flush=True,
            )
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
