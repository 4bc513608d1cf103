"""Scale-out speed (#27): 2 Dask workers against 1 worker and against the serial run, measured in one run.

* **Ingestion + preprocessing** (``kedro run --pipelines=preprocessing``) on a synthetic dataset
  (default: the ``full`` profile, the size of the real set: 20 cases, 3,520 slices of 512-630 px), in
  three fresh processes: SequentialRunner, then ``--runner=lungseg.runner.DaskRunner`` with
  ``--runner-params=n_workers=1`` and ``n_workers=2`` (a LocalCluster of one-thread worker processes).
  The pipeline's own time ("Pipeline execution completed ... in X sec", the cluster's start included)
  and the process's wall time are printed.
* **Batch inference** (``lungseg predict metadata.csv -o OUT``) on the first ``--predict-cases`` cases of
  the same dataset, with untrained demo-size U-Nets (speed only; weights do not matter): serial, then
  ``--dask local --dask-workers 1`` and ``--dask-workers 2``.

Target (#27): 2 workers at least 1.6x faster than 1 worker (and than the serial run) for both. Run it on
an idle machine with at least 2 cores; a busy one gives meaningless ratios.

Usage::

    python benchmarks/bench_scale.py                            # full profile (slow: generates ~1.5 GB once)
    python benchmarks/bench_scale.py --profile demo             # 6 small cases
    python benchmarks/bench_scale.py --profile tiny --predict-cases 2   # a smoke run: proves it executes
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
       "TQDM_DISABLE": "1",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
BIN = Path(sys.executable).parent


def make_project(work: Path, raw: Path, image_size: int) -> Path:
    """This project's conf/base in ``work/project`` with a ``bench`` env reading ``raw``."""
    import yaml

    project = work / "project"
    if project.exists():
        shutil.rmtree(project)
    (project / "src").mkdir(parents=True)
    shutil.copy(ROOT / "pyproject.toml", project / "pyproject.toml")
    shutil.copytree(ROOT / "conf" / "base", project / "conf" / "base")
    (project / "conf" / "local").mkdir()
    env = project / "conf" / "bench"
    env.mkdir()
    (env / "globals.yml").write_text(yaml.safe_dump({"dataset_name": "bench", "raw_root": str(raw),
                                                      "synthetic_root": str(raw)}))
    mlflow_conf = yaml.safe_load((project / "conf" / "base" / "mlflow.yml").read_text())
    mlflow_conf["server"]["mlflow_tracking_uri"] = f"sqlite:///{project / 'mlflow.db'}"
    (env / "mlflow.yml").write_text(yaml.safe_dump(mlflow_conf))
    (env / "parameters.yml").write_text(yaml.safe_dump({"preprocessing": {"image_size": image_size}}))
    return project


def logging_config(work: Path) -> Path:
    """conf/logging.yml with the runners' "Pipeline execution completed ... in X sec" line kept."""
    import yaml

    conf = yaml.safe_load((ROOT / "conf" / "logging.yml").read_text())
    conf["loggers"]["kedro.runner"] = {"level": "INFO"}
    path = work / "logging.yml"
    path.write_text(yaml.safe_dump(conf))
    return path


def timed(cmd: list[str], cwd: Path, ok=(0,)) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode not in ok:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall, proc.stdout + proc.stderr


def bench_preprocessing(project: Path) -> dict[str, dict[str, float]]:
    runs = {"sequential": [], "dask 1 worker": ["--runner=lungseg.runner.DaskRunner", "--runner-params=n_workers=1"],
            "dask 2 workers": ["--runner=lungseg.runner.DaskRunner", "--runner-params=n_workers=2"]}
    out = {}
    for name, extra in runs.items():
        for layer in ("02_intermediate", "03_primary", "05_model_input", "08_reporting"):
            shutil.rmtree(project / "data" / layer, ignore_errors=True)
        wall, log = timed([str(BIN / "kedro"), "run", "--env=bench", "--pipelines=preprocessing", *extra], project)
        found = re.findall(r"Pipeline execution completed successfully in ([0-9.]+) sec", log)
        out[name] = {"pipeline_s": float(found[-1]) if found else float("nan"), "wall_s": wall}
        print(f"  {name:15s} pipeline {out[name]['pipeline_s']:8.1f} s   process {wall:8.1f} s", flush=True)
    return out


def bench_predict(work: Path, csv: Path, n_cases: int) -> dict[str, dict[str, float]]:
    import pandas as pd

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_inference import DEMO, save_models  # the demo-size untrained U-Nets of the inference benchmark

    models = save_models(work / "models", DEMO)
    cases = ",".join(pd.read_csv(csv)["lung_mask"].map(lambda p: Path(str(p)).name.split(".")[0]).head(n_cases))
    base = [str(BIN / "lungseg"), "predict", str(csv), "--lung-model", str(models["lung"]),
            "--infection-model", str(models["infection"]), "--cases", cases, "--no-progress", "-q"]
    runs = {"serial": [], "dask 1 worker": ["--dask", "local", "--dask-workers", "1"],
            "dask 2 workers": ["--dask", "local", "--dask-workers", "2"]}
    out = {}
    for name, extra in runs.items():
        target = work / f"predict_{name.replace(' ', '_')}"
        shutil.rmtree(target, ignore_errors=True)
        wall, _ = timed([*base, "-o", str(target), *extra], ROOT, ok=(0, 3))  # 3: untrained models' implausible masks
        summary = pd.read_csv(target / "summary.csv")
        assert (summary["status"] == "ok").all(), summary[["case", "status", "error"]]
        out[name] = {"wall_s": wall, "cases": len(summary)}
        print(f"  {name:15s} {wall:8.1f} s for {len(summary)} cases (the whole command: models loaded, cluster started)",
              flush=True)
    return out


def ratios(label: str, res: dict, key: str) -> dict[str, float]:
    one, two = res["dask 1 worker"][key], res["dask 2 workers"][key]
    serial = res.get("sequential", res.get("serial"))[key]
    r = {"1_worker_over_2_workers": one / two, "serial_over_2_workers": serial / two}
    print(f"  {label}: 1 worker / 2 workers = {r['1_worker_over_2_workers']:.2f}x, serial / 2 workers = "
          f"{r['serial_over_2_workers']:.2f}x   (target >= 1.6x)")
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="full", choices=["tiny", "demo", "full"])
    ap.add_argument("--image-size", type=int, default=224, help="preprocessing.image_size (default: the paper's 224)")
    ap.add_argument("--predict-cases", type=int, default=8, help="cases of the batch-inference benchmark")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "lungseg_bench_scale")
    ap.add_argument("--skip-preprocess", action="store_true")
    ap.add_argument("--skip-predict", action="store_true")
    args = ap.parse_args()

    from lungseg.synthetic import write_dataset

    raw = args.workdir / f"raw_{args.profile}"
    if not (raw / "metadata.csv").exists():
        print(f"generating the synthetic {args.profile} dataset in {raw} (once)", flush=True)
        write_dataset(raw, profile=args.profile, seed=42)
    print(f"machine: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} (should be near 0)")
    results: dict = {"profile": args.profile, "cores": os.cpu_count()}
    if not args.skip_preprocess:
        print(f"ingestion + preprocessing, {args.profile} profile, image_size {args.image_size}:")
        project = make_project(args.workdir, raw, args.image_size)
        ENV["KEDRO_LOGGING_CONFIG"] = str(logging_config(args.workdir))
        results["preprocessing"] = res = bench_preprocessing(project)
        results["preprocessing_ratio"] = ratios("pipeline time", res, "pipeline_s")
    if not args.skip_predict:
        print(f"batch inference, first {args.predict_cases} cases of the {args.profile} profile, demo-size U-Nets:")
        results["predict"] = res = bench_predict(args.workdir, raw / "metadata.csv", args.predict_cases)
        results["predict_ratio"] = ratios("whole command", res, "wall_s")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
