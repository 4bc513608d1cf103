"""Benchmark of combined lung + infection inference (``lungseg.inference.Segmenter``).

What it measures, on a synthetic 512 x 512 x 300 HU chest (``--slices`` / ``--size`` for shorter runs):

* seconds per volume with demo-size models (U-Net 128 px, base_filters 8, depth 3) and paper-size
  models (U-Net 224 px, base_filters 64, depth 4), built untrained with ``build_model`` (weights do not
  matter for speed), saved as ``.keras`` with a ``model_config.json`` and loaded through the normal
  path (``load_model_spec``);
* conv FLOPs per slice of each model (counted analytically from its layers), the FLOP/s this machine
  reaches on a float32 numpy matmul (2048^3) and on a Keras 3x3 convolution, and the fraction of it
  that inference reaches;
* peak resident memory (``resource.getrusage``);
* a ratio against a baseline measured in the same run: the same Segmenter with ``batch_size=1``
  (one model call per slice) against the batched default;
* the cost of a fold ensemble (``--ensemble K``, default 5: what ``lungseg predict --models`` runs
  after a 5-fold cross-validation): K demo-size lung and K infection models averaged, against the
  single demo models in the same run.

The untrained lung model's output is meaningless, so its config uses a threshold of 1e-6: every
pixel of the body crop counts as lung, the infection model then runs on every slice (an upper bound
of the work; real scans have lungs in fewer slices).

* issue #24's targets, at the ``conf/dev_cpu`` model sizes (lung U-Net 192 px, base 8, depth 5;
  infection U-Net 128 px, base 16, depth 4): the single models and the 5-fold ensembles of both
  tasks, each in float32 and in bf16 (``--precision``), with the share of the time spent inside the
  model calls and the time of every stage outside them (windowing and CLAHE, crop and resize, mapping
  back, the 3D lung clean-up, the hole filling, the plausibility guard). ``--models DIR`` uses the
  trained fold folders of a cross-validation (``DIR/lung_unet_cv``, ``DIR/infection_unet_cv``) for the
  ensemble instead of untrained models; ``--profile`` adds ``cProfile``'s top functions.

Targets: demo models <= 60 s per volume, peak RSS <= 3 GB; #24: per 300 slices, the 5-fold ensembles
<= 12 s, the single dev_cpu models <= 4 s, >= 60 % of the time in model calls.

Usage::

    python benchmarks/bench_inference.py                 # full 512x512x300 volume, demo + paper models
    python benchmarks/bench_inference.py --slices 32     # shorter
    python benchmarks/bench_inference.py --skip-paper    # demo models only
    python benchmarks/bench_inference.py --ensemble 5 --slices 300 --skip-paper --no-baseline   # #24's targets
    python benchmarks/bench_inference.py --ensemble 5 --models data/06_models --profile        # trained folds
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

DEMO = {"image_size": 128, "base_filters": 8, "depth": 3}
PAPER = {"image_size": 224, "base_filters": 64, "depth": 4}
TARGET_DEMO_S = 60.0
TARGET_RSS_GB = 3.0
#: conf/dev_cpu's U-Nets (parameters_training.yml, parameters_preprocessing.yml)
DEV_CPU = {
    "lung": {"image_size": 192, "base_filters": 8, "depth": 5},
    "infection": {"image_size": 128, "base_filters": 16, "depth": 4},
}
TARGET_ENSEMBLE_S, TARGET_SINGLE_S, TARGET_MODEL_SHARE = 12.0, 4.0, 0.60
#: The stages outside the model calls, timed by wrapping these functions (module, name, label).
#: ``prepare_slices`` = ``enhance`` + ``crop_and_resize``; the rest of a segment() call is "other".
STAGES = (
    ("lungseg.imaging.pipeline", "enhance", "window + CLAHE"),
    ("lungseg.imaging.pipeline", "crop_and_resize", "crop + resize"),
    ("lungseg.imaging", "restore_slices", "map back (restore_slices)"),
    ("lungseg.imaging", "restore_masks", "map back + threshold (restore_masks)"),
    ("lungseg.imaging", "clean_lung_mask", "3D lung clean-up"),
    ("lungseg.imaging", "fill_holes_2d", "lung outline (fill_holes_2d)"),
    ("lungseg.imaging", "split_left_right", "left/right split"),
    ("lungseg.inference.guard", "check_plausibility", "plausibility guard"),
)


def peak_rss_gb() -> float:
    """Peak resident set size of this process so far, in GB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def synthetic_chest(slices: int, size: int, seed: int = 0) -> np.ndarray:
    """A canonical (z, y, x) int16 HU chest: air, body ellipse, two tapering lungs, lesions, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    body = ((yy - 0.5) / 0.38) ** 2 + ((xx - 0.5) / 0.45) ** 2 < 1
    base = np.where(body, np.int16(40), np.int16(-1000)).astype(np.int16)
    noise = rng.normal(0, 20, size=(8, size, size)).astype(np.int16)  # a pool of noise slices
    ct = np.empty((slices, size, size), np.int16)
    for k in range(slices):
        s = np.sqrt(max(0.0, 1 - (((k + 0.5) / slices - 0.5) / 0.45) ** 2))
        sl = base.copy()
        if s > 0.15:
            for cx in (0.3, 0.7):
                lung = ((yy - 0.48) / (0.25 * s)) ** 2 + ((xx - cx) / (0.14 * s)) ** 2 < 1
                sl[lung] = -850
            lesion = ((yy - 0.55) / 0.05) ** 2 + ((xx - 0.72) / 0.04) ** 2 < 1
            sl[lesion & (sl == -850)] = -300
        ct[k] = sl + noise[k % 8]
    return ct


# ------------------------------------------------------------------------------------------ FLOPs


def conv_flops(model) -> int:
    """Multiply-add FLOPs (2 per MAC) of one forward pass of one slice, convolution and dense layers only."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += conv_flops(layer)
            continue
        try:
            in_shape = tuple(layer.input.shape)
            out_shape = tuple(layer.output.shape)
        except (AttributeError, ValueError):
            continue
        name = type(layer).__name__
        if name in ("Conv2D", "Conv2DTranspose", "DepthwiseConv2D", "SeparableConv2D"):
            kh, kw = layer.kernel_size
            cin, cout = in_shape[-1], out_shape[-1]
            if name == "Conv2D":
                total += 2 * out_shape[1] * out_shape[2] * kh * kw * (cin // layer.groups) * cout
            elif name == "Conv2DTranspose":
                total += 2 * in_shape[1] * in_shape[2] * kh * kw * cin * cout
            elif name == "DepthwiseConv2D":
                total += 2 * out_shape[1] * out_shape[2] * kh * kw * cin * layer.depth_multiplier
            else:
                mult = layer.depth_multiplier
                total += 2 * out_shape[1] * out_shape[2] * (kh * kw * cin * mult + cin * mult * cout)
        elif name == "Dense":
            spatial = int(np.prod([d for d in in_shape[1:-1] if d])) if len(in_shape) > 2 else 1
            total += 2 * spatial * in_shape[-1] * out_shape[-1]
    return int(total)


def matmul_flops_per_s(n: int = 2048, repeats: int = 3) -> float:
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = np.random.default_rng(1).random((n, n), dtype=np.float32)
    a @ b  # warm-up
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best


def keras_conv_flops_per_s(repeats: int = 3) -> float:
    """FLOP/s of a Keras 3x3 convolution (64 -> 64 channels, 8 x 112 x 112), via predict_on_batch."""
    import keras

    inp = keras.Input((112, 112, 64))
    model = keras.Model(inp, keras.layers.Conv2D(64, 3, padding="same", use_bias=False)(inp))
    x = np.random.default_rng(0).random((8, 112, 112, 64), dtype=np.float32)
    model.predict_on_batch(x)
    best = min(_timed(lambda: model.predict_on_batch(x)) for _ in range(repeats))
    return 2 * 8 * 112 * 112 * 9 * 64 * 64 / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ---------------------------------------------------------------------------------------- models


def save_models(folder: Path, spec: dict) -> dict[str, Path]:
    """Build untrained lung and infection U-Nets of ``spec`` (one spec for both, or one per task as in
    :data:`DEV_CPU`) and save them with their configs."""
    from lungseg.models import build_model

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for task in ("lung", "infection"):
        t = spec.get(task, spec)
        model = build_model("unet", t["image_size"], {"base_filters": t["base_filters"], "depth": t["depth"]})
        path = folder / f"{task}_{t['image_size']}_{t['base_filters']}.keras"
        model.save(path)
        config = {
            "task": task,
            "architecture": "unet",
            "image_size": t["image_size"],
            "crop_mode": "body" if task == "lung" else "lung_mask",
            "window": [-1250, 250],
            "clahe_clip_limit": 2.0,
            "clahe_tile_grid": 8,
            "crop_margin": 4,
            "threshold": 1e-6 if task == "lung" else 0.5,
        }
        path.with_suffix(".json").write_text(json.dumps(config))
        paths[task] = path
    return paths


def timed_segmenter_class():
    """A Segmenter that also adds up the seconds spent in model calls (``model_s``)."""
    from lungseg.inference.segment import Segmenter

    class TimedSegmenter(Segmenter):
        model_s = 0.0

        def predict_slices(self, loaded, images_u8):
            t = time.perf_counter()
            out = super().predict_slices(loaded, images_u8)
            self.model_s += time.perf_counter() - t
            return out

    return TimedSegmenter


def run_models(name: str, spec: dict, volume, folder: Path, batch_size: int, baseline: bool) -> dict:
    """Seconds per volume (batched and, optionally, one slice per call) for one model size."""
    from lungseg.inference.models import load_model_spec
    from lungseg.inference.settings import InferenceSettings
    from lungseg.limits import load_guard

    Segmenter = timed_segmenter_class()
    paths = save_models(folder, spec)
    t = time.perf_counter()
    lung = load_model_spec(paths["lung"], "lung", folder)
    infection = load_model_spec(paths["infection"], "infection", folder)
    load_s = time.perf_counter() - t
    flops = {task: conv_flops(m.model) for task, m in (("lung", lung), ("infection", infection))}

    from lungseg.volume import from_canonical_array

    z = volume.array.shape[0]
    result = {"model": name, **spec, "load_s": load_s, "gflops_per_slice": {k: v / 1e9 for k, v in flops.items()}}
    for label, bs in (("batched", batch_size), ("per_slice", 1)):
        if label == "per_slice" and not baseline:
            continue
        segmenter = Segmenter.from_models(lung, infection, InferenceSettings(guard=load_guard(), batch_size=bs))
        # Warm-up on a full batch plus the remainder: traces both batch shapes the timed run uses
        # (a one-off cost per model and process, reported apart).
        warm = from_canonical_array(volume.array[: min(z, bs + z % bs)], volume.spacing)
        t = time.perf_counter()
        segmenter.segment(warm, "hu", progress=False)
        warm_s = time.perf_counter() - t
        segmenter.model_s = 0.0
        t = time.perf_counter()
        seg = segmenter.segment(volume, "hu", progress=False)
        seconds = time.perf_counter() - t
        model_s = segmenter.model_s
        n_inf = int(np.count_nonzero(seg.lung_labels.reshape(seg.lung_labels.shape[0], -1).any(axis=1)))
        work = flops["lung"] * volume.array.shape[0] + flops["infection"] * n_inf
        result[label] = {
            "batch_size": bs,
            "seconds": seconds,
            "model_s": model_s,
            "warmup_s": warm_s,
            "infection_slices": n_inf,
            "gflop": work / 1e9,
            "gflop_per_s": work / seconds / 1e9,
            "model_gflop_per_s": work / model_s / 1e9,
        }
        result["peak_rss_gb_after"] = peak_rss_gb()
    return result


def save_fold_folder(folder: Path, spec: dict, task: str, k: int) -> Path:
    """K untrained models of one task saved as a cross-validation's fold folder."""
    import shutil

    out = folder / f"{task}_unet_cv"
    out.mkdir(parents=True, exist_ok=True)
    for fold in range(k):
        paths = save_models(folder / f"fold{fold}", spec)
        shutil.copyfile(paths[task], out / f"fold_{fold}.keras")
        config = json.loads(paths[task].with_suffix(".json").read_text())
        (out / f"fold_{fold}.json").write_text(json.dumps({**config, "fold": fold}))
    return out


def warm_segmenter(lung, infection, volume, batch_size: int):
    """A timed Segmenter of the two models, warmed up on a full batch plus the remainder (traces every
    batch shape the timed run uses), its model-call clock reset."""
    from lungseg.inference.settings import InferenceSettings
    from lungseg.limits import load_guard
    from lungseg.volume import from_canonical_array

    segmenter = timed_segmenter_class().from_models(
        lung, infection, InferenceSettings(guard=load_guard(), batch_size=batch_size)
    )
    z = volume.array.shape[0]
    warm = from_canonical_array(volume.array[: min(z, batch_size + z % batch_size)], volume.spacing)
    segmenter.segment(warm, "hu", progress=False)
    segmenter.model_s = 0.0
    return segmenter


def run_ensemble(spec: dict, volume, folder: Path, batch_size: int, k: int) -> dict:
    """Seconds per volume of a K-fold ensemble per task (both tasks), batched."""
    from lungseg.inference.ensemble import load_fold_ensemble
    lung = load_fold_ensemble(save_fold_folder(folder, spec, "lung", k), "lung")
    infection = load_fold_ensemble(save_fold_folder(folder, spec, "infection", k), "infection")
    segmenter = warm_segmenter(lung, infection, volume, batch_size)
    seconds = _timed(lambda: segmenter.segment(volume, "hu", progress=False))
    return {"members": k, "seconds": seconds, "model_s": segmenter.model_s, "peak_rss_gb_after": peak_rss_gb()}


# ------------------------------------------------------------------------- #24: stages, precision


class StageTimer:
    """Adds up the seconds spent in each function of :data:`STAGES` while active (the functions are
    wrapped in their modules, where ``segment()`` looks them up at call time)."""

    def __init__(self):
        self.seconds = {label: 0.0 for _, _, label in STAGES}
        self._saved = []

    def __enter__(self):
        import importlib

        for module_name, name, label in STAGES:
            module = importlib.import_module(module_name)
            original = getattr(module, name)
            self._saved.append((module, name, original))
            setattr(module, name, self._wrap(original, label))
        return self

    def _wrap(self, fn, label):
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - t

        return timed

    def __exit__(self, *exc):
        for module, name, original in reversed(self._saved):
            setattr(module, name, original)
        self._saved.clear()


def load_dev_cpu(folder: Path, k: int, models_dir: Path | None) -> dict[str, dict]:
    """``{"single": {task: LoadedModel}, "ensemble": {task: LoadedModel}}`` at the dev_cpu sizes:
    untrained models (the lung threshold 1e-6: infection runs on every body slice, an upper bound), or
    the trained fold folders of ``models_dir`` for the ensemble (their first fold as the single model)."""
    from lungseg.inference.ensemble import load_fold_ensemble
    from lungseg.inference.models import load_model_spec

    out = {"single": {}, "ensemble": {}}
    if models_dir is not None:
        for task in ("lung", "infection"):
            fold_dir = models_dir / f"{task}_unet_cv"
            out["ensemble"][task] = load_fold_ensemble(fold_dir, task)
            first = sorted(fold_dir.glob("fold_*.keras"))[0]
            out["single"][task] = load_model_spec(first, task, models_dir)
        return out
    paths = save_models(folder / "single", DEV_CPU)
    for task in ("lung", "infection"):
        out["single"][task] = load_model_spec(paths[task], task, folder)
        if k > 0:
            out["ensemble"][task] = load_fold_ensemble(save_fold_folder(folder / "folds", DEV_CPU, task, k), task)
    return out


def _own_copy(loaded):
    """A copy of a LoadedModel that ``loaded_in`` may set to another precision without touching the
    original: an ensemble or TTA wrapper is copied too (``predict_in`` reassigns its members), a Keras
    model is not (``with_precision`` returns a clone)."""
    import copy

    out = copy.copy(loaded)
    if hasattr(out.model, "members") or not hasattr(out.model, "get_weights"):
        out.model = copy.copy(out.model)
    return out


def run_dev_cpu(volume, loaded: dict, batch_size: int, precision: str, profile: bool) -> dict:
    """Seconds of one segment() call (after a warm-up) with ``loaded`` set to ``precision``, its model
    calls and its stages; the cProfile top functions when ``profile``."""

    from lungseg.models.precision import loaded_in
    lung = loaded_in(_own_copy(loaded["lung"]), precision)
    infection = loaded_in(_own_copy(loaded["infection"]), precision)
    segmenter = warm_segmenter(lung, infection, volume, batch_size)
    profiler = None
    with StageTimer() as stages:
        if profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        t = time.perf_counter()
        seg = segmenter.segment(volume, "hu", progress=False)
        seconds = time.perf_counter() - t
        if profiler is not None:
            profiler.disable()
    n_inf = int(np.count_nonzero(seg.lung_labels.reshape(seg.lung_labels.shape[0], -1).any(axis=1)))
    result = {
        "precision": precision,
        "seconds": seconds,
        "model_s": segmenter.model_s,
        "infection_slices": n_inf,
        "stages_s": dict(stages.seconds),
        "peak_rss_gb_after": peak_rss_gb(),
    }
    result["other_s"] = seconds - segmenter.model_s - sum(stages.seconds.values())
    if profiler is not None:
        import io
        import pstats

        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(15)
        result["profile"] = buf.getvalue()
    return result


def print_dev_cpu(name: str, r: dict, scale: float) -> None:
    stages = "; ".join(f"{label} {s:.2f} s" for label, s in r["stages_s"].items() if s >= 0.005)
    print(
        f"dev_cpu {name:8s} {r['precision']:14s}: {r['seconds']:.2f} s/volume (x{scale:.2f} -> "
        f"{r['seconds'] * scale:.2f} s per 300 slices; {r['infection_slices']} infection slices), model calls "
        f"{r['model_s']:.2f} s = {100 * r['model_s'] / r['seconds']:.0f} %; outside them: {stages}; "
        f"other {r['other_s']:.2f} s; peak RSS {r['peak_rss_gb_after']:.2f} GB"
    )
    if "profile" in r:
        print(r["profile"])


def dev_cpu_suite(volume, folder: Path, args) -> dict:
    """#24's figures: single models and K-fold ensembles, float32 against bf16, in this one run."""
    loaded = load_dev_cpu(folder, args.ensemble, args.models)
    scale = 300 / volume.array.shape[0]
    out = {}
    names = ("single", "ensemble") if args.ensemble > 0 or args.models is not None else ("single",)
    for name in names:
        for precision in args.precision:
            r = run_dev_cpu(volume, loaded[name], args.batch_size, precision, args.profile)
            out[f"{name}/{precision}"] = r
            print_dev_cpu(name, r, scale)
    for name, target in (("single", TARGET_SINGLE_S), ("ensemble", TARGET_ENSEMBLE_S))[: len(names)]:
        runs = {p: out[f"{name}/{p}"] for p in args.precision}
        if "float32" in runs and "mixed_bfloat16" in runs:
            f, b = runs["float32"], runs["mixed_bfloat16"]
            print(
                f"ratio dev_cpu {name}: float32 {f['seconds']:.2f} s vs bf16 {b['seconds']:.2f} s -> "
                f"{f['seconds'] / b['seconds']:.2f}x (model calls {f['model_s'] / b['model_s']:.2f}x)"
            )
        for p, r in runs.items():
            s, share = r["seconds"] * scale, r["model_s"] / r["seconds"]
            verdict = "PASS" if s <= target else f"FAIL by {s - target:.1f} s ({s / target:.2f}x the target)"
            print(
                f"target #24 {name} {p}: {s:.1f} s per 300 slices <= {target:.0f} s: {verdict}; model calls "
                f"{100 * share:.0f} % >= {100 * TARGET_MODEL_SHARE:.0f} %: "
                f"{'PASS' if share >= TARGET_MODEL_SHARE else 'FAIL'}"
            )
    if "single/float32" in out and "ensemble/float32" in out:
        print(
            f"ratio dev_cpu ensemble vs single (float32): "
            f"{out['ensemble/float32']['seconds'] / out['single/float32']['seconds']:.2f}x"
        )
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=300, help="slices of the synthetic volume (default 300)")
    parser.add_argument("--size", type=int, default=512, help="in-plane size (default 512)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--paper-slices", type=int, default=None, help="slices for the paper-size models (default --slices)"
    )
    parser.add_argument("--skip-paper", action="store_true", help="demo-size models only")
    parser.add_argument("--no-baseline", action="store_true", help="skip the batch_size=1 baseline")
    parser.add_argument(
        "--paper-baseline", action="store_true", help="also run the baseline with paper-size models (slow)"
    )
    parser.add_argument("--ensemble", type=int, default=5, help="members of the fold-ensemble run (0: skip; default 5)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument(
        "--precision",
        default="float32,mixed_bfloat16",
        help="precisions of the dev_cpu runs, comma-separated (default float32,mixed_bfloat16)",
    )
    parser.add_argument(
        "--models",
        type=Path,
        default=None,
        help="a folder with trained fold folders (lung_unet_cv, infection_unet_cv) for the dev_cpu runs",
    )
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions of each dev_cpu run")
    parser.add_argument("--skip-demo", action="store_true", help="skip the demo-size (and paper-size) runs")
    parser.add_argument("--skip-dev-cpu", action="store_true", help="skip the dev_cpu runs (#24's targets)")
    args = parser.parse_args(argv)
    args.precision = [p.strip() for p in args.precision.split(",") if p.strip()]
    logging.basicConfig(level=logging.WARNING)

    from lungseg.volume import from_canonical_array

    t = time.perf_counter()
    ct = synthetic_chest(args.slices, args.size)
    volume = from_canonical_array(ct, (1.0, 0.7, 0.7), source="synthetic")
    print(f"volume: {ct.shape} int16 HU, built in {time.perf_counter() - t:.1f} s; peak RSS {peak_rss_gb():.2f} GB")

    import keras

    print(f"keras {keras.__version__} backend {keras.backend.backend()}; {os.cpu_count()} CPUs")
    matmul = matmul_flops_per_s()
    conv = keras_conv_flops_per_s()
    print(f"machine: numpy float32 matmul 2048^3 {matmul / 1e9:.1f} GFLOP/s; keras conv3x3 {conv / 1e9:.1f} GFLOP/s")

    results = {
        "volume_shape": list(ct.shape),
        "matmul_gflop_per_s": matmul / 1e9,
        "keras_conv_gflop_per_s": conv / 1e9,
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="lungseg-bench-") as tmp:
        if not args.skip_dev_cpu:
            results["dev_cpu"] = {
                k: {x: y for x, y in v.items() if x != "profile"}
                for k, v in dev_cpu_suite(volume, Path(tmp) / "dev_cpu", args).items()
            }
        runs = [] if args.skip_demo else [("demo", DEMO, volume, not args.no_baseline)]
        if not args.skip_paper and not args.skip_demo:
            n = args.paper_slices or args.slices
            paper_volume = (
                volume if n == args.slices else from_canonical_array(ct[:n], volume.spacing, source="synthetic")
            )
            runs.append(("paper", PAPER, paper_volume, args.paper_baseline and not args.no_baseline))
        for name, spec, vol, baseline in runs:
            r = run_models(name, spec, vol, Path(tmp), args.batch_size, baseline)
            results["runs"].append(r)
            b = r["batched"]
            print(
                f"{name:5s} U-Net {spec['image_size']}px base {spec['base_filters']} depth {spec['depth']}: "
                f"{r['gflops_per_slice']['lung']:.2f} GFLOP/slice; volume {vol.array.shape}: "
                f"{b['seconds']:.2f} s/volume (batch {b['batch_size']}, {b['infection_slices']} infection slices, "
                f"warm-up {b['warmup_s']:.1f} s, load {r['load_s']:.1f} s), of which model calls {b['model_s']:.2f} s "
                f"at {b['model_gflop_per_s']:.1f} GFLOP/s = {100 * b['model_gflop_per_s'] * 1e9 / matmul:.0f}% of matmul, "
                f"{100 * b['model_gflop_per_s'] * 1e9 / conv:.0f}% of keras conv (whole pipeline "
                f"{b['gflop_per_s']:.1f} GFLOP/s); peak RSS {r['peak_rss_gb_after']:.2f} GB"
            )
            if "per_slice" in r:
                p = r["per_slice"]
                print(
                    f"ratio {name}: batched (batch {b['batch_size']}) {b['seconds']:.2f} s vs per-slice baseline "
                    f"(batch 1) {p['seconds']:.2f} s -> {p['seconds'] / b['seconds']:.2f}x faster "
                    f"(model calls alone: {b['model_s']:.2f} s vs {p['model_s']:.2f} s -> "
                    f"{p['model_s'] / b['model_s']:.2f}x)"
                )
        if args.ensemble > 0 and not args.skip_demo:
            e = run_ensemble(DEMO, volume, Path(tmp) / "ensemble", args.batch_size, args.ensemble)
            results["ensemble"] = e
            single = results["runs"][0]["batched"]["seconds"]
            print(
                f"ensemble: {e['members']} demo-size models per task, {e['seconds']:.2f} s/volume vs "
                f"{single:.2f} s for the single models -> ratio {e['seconds'] / single:.2f}x "
                f"(model calls {e['model_s']:.2f} s); peak RSS {e['peak_rss_gb_after']:.2f} GB"
            )
    scale = 300 / args.slices
    rss = peak_rss_gb()
    results["peak_rss_gb"] = rss
    if args.skip_demo:
        print(f"peak RSS {rss:.2f} GB <= {TARGET_RSS_GB:.0f} GB: {'PASS' if rss <= TARGET_RSS_GB else 'FAIL'}")
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return 0
    demo = results["runs"][0]["batched"]["seconds"]
    print(
        f"targets: demo {demo:.1f} s/volume of {args.slices} slices (x{scale:.2f} -> {demo * scale:.1f} s for 300) "
        f"<= {TARGET_DEMO_S:.0f} s: {'PASS' if demo * scale <= TARGET_DEMO_S else 'FAIL'}; "
        f"peak RSS {rss:.2f} GB <= {TARGET_RSS_GB:.0f} GB: {'PASS' if rss <= TARGET_RSS_GB else 'FAIL'}"
    )
    if "ensemble" in results:
        ens = results["ensemble"]["seconds"] * scale
        print(
            f"target: {args.ensemble}-member ensembles {ens:.1f} s for 300 slices <= {TARGET_DEMO_S:.0f} s: "
            f"{'PASS' if ens <= TARGET_DEMO_S else 'FAIL'}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
