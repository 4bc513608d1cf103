"""The ``lungseg`` command line.

``lungseg predict INPUT -o OUTDIR``
    Segment the lungs and the infection of one CT (a NIfTI file, a DICOM folder or .zip, a PNG/JPEG
    slice), or of every case of a folder of NIfTI files / a ``metadata.csv`` (batch mode: one folder
    per case and ``OUTDIR/summary.csv``). ``--cases a,b`` keeps only those case ids; a metadata.csv with
    ``lung_mask`` / ``infection_mask`` columns also gives per-case Dice/IoU columns and their means.
``lungseg ui``
    Start the web UI (Streamlit).
``lungseg models``
    List the trained models found in the models folder.

Exit codes: 0 done; 2 bad input, a limit, an unusable output folder or another run on the same
OUTDIR (one line ``lungseg: error: ...`` on stderr); 3 implausible input (not a chest CT, no lungs:
the outputs and report.json are written without severity, see :mod:`lungseg.inference.guard`);
130 Ctrl-C; 143 SIGTERM; 1 an internal error (a bug: run with -v for the traceback). Whatever the exit,
nothing half-written is left in OUTDIR and no temporary folder (output, DICOM extraction) remains.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from lungseg.errors import ConfigError, ImplausibleInputError, InputError, LungsegError, Terminated
from lungseg.layout import MODELS_DIR, TASKS
from lungseg.tf_quiet import TF_NOISE as _TF_NOISE  # the UI relay and the tests use it here
from lungseg.tf_quiet import import_quietly as _import_quietly

logger = logging.getLogger("lungseg.cli")

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_ERROR = 2
EXIT_IMPLAUSIBLE = 3  # the plausibility guard refused the input; outputs are written without figures
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

_quiet_tensorflow = False  # set by _setup_logging: True unless -v


def _parse_tasks(text: str) -> tuple[str, ...]:
    tasks = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise argparse.ArgumentTypeError(f"invalid tasks {text!r}: give a comma-separated subset of {','.join(TASKS)}")
    return tasks


def _parse_cases(text: str) -> tuple[str, ...]:
    cases = tuple(dict.fromkeys(c.strip() for c in text.split(",") if c.strip()))
    if not cases:
        raise argparse.ArgumentTypeError(f"invalid case list {text!r}: give comma-separated case ids")
    return cases


def _non_negative(what: str, unit: str):
    """An argparse type: a number >= 0, or an error naming ``what`` and its ``unit``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not value >= 0:
            raise argparse.ArgumentTypeError(f"invalid {what} {text!r}: give a number of {unit} >= 0")
        return value

    return parse


_non_negative_mm = _non_negative("margin", "mm")
_non_negative_mm3 = _non_negative("lesion volume", "mm³")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _parse_spacing(text: str) -> tuple[float, float, float]:
    from lungseg.inference.readers import parse_spacing

    try:
        return parse_spacing(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--spacing: ")) from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lungseg", description="Lung and COVID-19 infection segmentation in chest CT.")
    _add_verbosity(parser, False)
    # The same flags after the command (``lungseg predict ... -q``); SUPPRESS keeps the top-level value.
    common = argparse.ArgumentParser(add_help=False)
    _add_verbosity(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "predict",
        parents=[common],
        help="segment a CT (NIfTI, DICOM folder/.zip, PNG/JPEG slice) or a batch of cases",
        description="Segment the lungs and COVID-19 infection of a CT. INPUT: a .nii/.nii.gz file, a DICOM "
        "series folder or .zip, a .png/.jpg slice; or, for batch mode, a folder of NIfTI files or a "
        "metadata.csv (writes OUTDIR/<case>/ and OUTDIR/summary.csv).",
    )
    p.add_argument("input", metavar="INPUT", help="CT file, DICOM folder/.zip, NIfTI folder or metadata.csv")
    p.add_argument("-o", "--output", "--outdir", dest="outdir", required=True, metavar="OUTDIR",
                   help="output folder: new, empty, or a previous lungseg output (its .lungseg-output.json)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty OUTDIR that is not a lungseg output (only same-named files are replaced)")
    p.add_argument("--lung-model", metavar="SPEC", help="a .keras file or an MLflow URI (default: newest in --models-dir)")
    p.add_argument("--infection-model", metavar="SPEC", help="a .keras file or an MLflow URI (default: newest in --models-dir)")
    p.add_argument("--model", metavar="URI", help="a registered lungseg-combined model (both tasks): "
                   "models:/lungseg-combined/<version> in the MLflow store of MLFLOW_TRACKING_URI, or its folder")
    p.add_argument("--models-dir", default=MODELS_DIR, help="where trained models are (default: %(default)s)")
    p.add_argument("--models", metavar="FOLDER", default=None,
                   help="cross-validation fold models used as an ensemble per task: a <variant>_cv folder (its "
                        "sibling of the other task is found too) or a folder holding them, e.g. data/06_models")
    p.add_argument("--precision", choices=("float32", "mixed_bfloat16", "auto"), default="float32",
                   help="compute in float32 (default) or bf16 (mixed_bfloat16; auto: bf16 where the CPU has "
                   "AMX-BF16 / AVX512-BF16); check the masks against float32 on your own models first")
    p.add_argument("--batch-size", type=_positive_int, default=16, help="slices per model call (default: %(default)s)")
    p.add_argument("--tasks", type=_parse_tasks, default=TASKS, help="lung, infection or lung,infection (default)")
    p.add_argument("--spacing", type=_parse_spacing, default=None, metavar="X,Y,Z",
                   help="the voxel size in mm (x: left-right, y: front-back, z: between slices), overriding the "
                   "input's header, e.g. for 0-255 files whose header says a placeholder 1x1x1 mm; one input only")
    p.add_argument("--no-progress", action="store_true",
                   help="hide progress bars (they are off anyway when stderr is not a terminal)")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation: also predict the mirrored "
                   "slices and average (twice the model calls)")
    p.add_argument("--fill-lung-holes", action="store_true",
                   help="count every hole of the predicted lungs as lung (default: a hole is lung only where "
                   "infection is found in it, as the dataset's lung masks leave vessels out)")
    p.add_argument("--infection-margin", type=_non_negative_mm, default=0.0, metavar="MM",
                   help="keep an infection region that enters or borders the predicted lungs up to MM outside them "
                   "(in-plane) and make that part lung: consolidation the lung model cut off at the lungs' edge "
                   "(default 0: infection only inside the predicted lungs)")
    p.add_argument("--min-lesion", type=_non_negative_mm3, default=0.0, metavar="MM3",
                   help="drop infection regions (3D, 6-connected) smaller than MM3 cubic millimetres "
                   "(default 0: keep every region)")
    p.add_argument("--cases", type=_parse_cases, default=None, metavar="A,B,C",
                   help="batch mode: segment only these case ids (e.g. the held-out patients)")
    p.add_argument("--dask", metavar="ADDRESS", default=None,
                   help="batch mode: one Dask task per case on the scheduler at ADDRESS (tcp://host:8786), or "
                   "'local' for a LocalCluster of one worker per core; the models are loaded once per worker")
    p.add_argument("--dask-workers", type=_positive_int, default=None, metavar="N",
                   help="with --dask local: N workers (default: one per core)")
    p.set_defaults(func=cmd_predict)

    u = sub.add_parser("ui", parents=[common], help="start the web UI", description="Start the Streamlit web UI.")
    u.add_argument("--port", type=_positive_int, default=8501, help="default: %(default)s")
    u.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    u.set_defaults(func=cmd_ui)

    m = sub.add_parser("models", parents=[common], help="list trained models", description="List the trained models found.")
    m.add_argument("--models-dir", default=MODELS_DIR, help="default: %(default)s")
    m.set_defaults(func=cmd_models)

    from lungseg.fetch.command import add_parser as add_fetch_data_parser

    add_fetch_data_parser(sub, [common])  # `lungseg fetch-data`
    from lungseg.cli_train_worker import add_parser as add_train_worker_parser

    add_train_worker_parser(sub, [common])  # `lungseg train-worker` (multi-worker training, TF_CONFIG)
    return parser


def _add_verbosity(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="debug logging; show tracebacks of internal errors")
    parser.add_argument("-q", "--quiet", action="store_true", default=default, help="only warnings and errors")


def _setup_logging(verbose: bool, quiet: bool) -> None:
    global _quiet_tensorflow
    _quiet_tensorflow = not verbose
    if not verbose:  # before TensorFlow is imported; -v leaves TensorFlow's logging as the environment sets it
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("lungseg").setLevel(level)


def import_tensorflow_quietly(quiet: bool | None = None) -> None:
    """Import TensorFlow with its start-up lines held back (:func:`lungseg.tf_quiet.import_quietly`) when
    ``quiet`` (default: the CLI's setting, False under -v)."""
    _import_quietly(_quiet_tensorflow if quiet is None else quiet)


def _relay_stderr(stream) -> None:
    """Pass a child process's stderr on, line by line, without TensorFlow's start-up lines."""
    for line in stream:
        if not _TF_NOISE.match(line):
            sys.stderr.write(line)
            sys.stderr.flush()


def _load_models(args: argparse.Namespace):
    from lungseg.inference.models import load_model_spec

    import_tensorflow_quietly()
    if getattr(args, "model", None):  # lungseg-combined from the MLflow registry (#13)
        from lungseg.serving.bundle import load_combined_models

        return tuple(_in_precision(args, m) for m in load_combined_models(args.model, args.tasks))

    specs = {"lung": args.lung_model, "infection": args.infection_model}
    if getattr(args, "models", None):
        from lungseg.inference.ensemble import fold_folder_for

        for task in args.tasks if "infection" in args.tasks else ("lung",):
            specs[task] = specs[task] or fold_folder_for(args.models, task)
    lung = load_model_spec(specs["lung"], "lung", args.models_dir)
    infection = load_model_spec(specs["infection"], "infection", args.models_dir) if "infection" in args.tasks else None
    return _in_precision(args, lung), _in_precision(args, infection)


def _in_precision(args: argparse.Namespace, loaded):
    """``loaded`` computing in ``--precision`` (resolved and logged once; float32 leaves it as it is)."""
    from lungseg.models.precision import loaded_in, resolve_and_log

    return loaded_in(loaded, resolve_and_log(getattr(args, "precision", "float32"), "Prediction"))


def cmd_predict(args: argparse.Namespace) -> int:
    """``lungseg predict``: one input to OUTDIR, or a batch to OUTDIR/<case>/ + summary.csv
    (:mod:`lungseg.cli_predict`)."""
    from lungseg.cli_predict import predict

    return predict(args, _load_models)


_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


def streamlit_app_path() -> Path:
    """Path of the Streamlit script shipped in the package (``lungseg/app/streamlit_app.py``)."""
    import lungseg

    return Path(lungseg.__file__).resolve().parent / "app" / "streamlit_app.py"


def cmd_ui(args: argparse.Namespace) -> int:
    """``lungseg ui``: run ``python -m streamlit run <app> --server.address HOST --server.port PORT``."""
    app = streamlit_app_path()
    if not app.is_file():
        raise ConfigError(f"the web UI script is missing: {app}")
    from lungseg.app.logic import server_max_upload_mb

    if str(args.host) not in _LOOPBACK:
        logger.warning("the web UI listens on %s, not only on this machine: it has no authentication, so anyone who "
                       "can reach port %s can upload images and read the results", args.host, args.port)
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(app),
        "--server.address", str(args.host),
        "--server.port", str(args.port),
        "--server.headless", "true",
        # above the page's own limit, so an oversized file gets the page's clear message
        "--server.maxUploadSize", str(server_max_upload_mb()),
        "--browser.gatherUsageStats", "false",  # no usage statistics leave the machine
        "--client.toolbarMode", "minimal",  # no "Deploy" button (a local tool, not an app to publish)
    ]
    logger.info("starting the web UI on http://%s:%s", args.host, args.port)
    import signal

    # the app's TensorFlow start-up lines are dropped from the server's stderr unless -v
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE if _quiet_tensorflow else None, text=True, errors="replace")
    relay = None
    if proc.stderr is not None:
        relay = threading.Thread(target=_relay_stderr, args=(proc.stderr,), name="ui-stderr", daemon=True)
        relay.start()
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # run the finally below on SIGTERM too
    try:
        return int(proc.wait())
    except KeyboardInterrupt:
        return EXIT_OK
    finally:  # never leave the server behind (Ctrl-C, SIGTERM turned into SystemExit, errors)
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if relay is not None:
            relay.join(timeout=5)


def cmd_models(args: argparse.Namespace) -> int:
    """``lungseg models``: list trained models, newest first, each with its provenance: the training
    dataset, the Kedro environment (when recorded) and the recorded score."""
    from lungseg.inference.models import list_trained_models
    from lungseg.inference.provenance import model_summary

    found = list_trained_models(args.models_dir)
    for task, entries in found.items():
        print(f"{task}:")
        if not entries:
            print(f"  (none; train one with `kedro run --pipelines={task}_unet` or `make demo`)")
        for e in entries:
            print(f"  {e['variant']:<26} {e['version']:<26} {e['path']}")
            print(f"  {'':<26} {model_summary(e)}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lungseg`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    _setup_logging(args.verbose, args.quiet)
    previous = None
    if args.command != "ui":  # SIGTERM (kill, timeout) cleans up like Ctrl-C; `lungseg ui` handles its own
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return int(args.func(args))
    except ImplausibleInputError as exc:
        print(f"lungseg: implausible input: {exc}", file=sys.stderr)
        return EXIT_IMPLAUSIBLE
    except LungsegError as exc:
        print(f"lungseg: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("lungseg: interrupted; temporary files removed", file=sys.stderr)
        return EXIT_SIGINT
    except Terminated:
        print("lungseg: terminated (SIGTERM); temporary files removed", file=sys.stderr)
        return EXIT_SIGTERM
    except MemoryError as exc:
        print(f"lungseg: error: not enough memory ({exc or 'MemoryError'}); try a smaller --batch-size", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:
        if args.verbose:
            raise
        print(f"lungseg: internal error: {type(exc).__name__}: {exc} (run with -v for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_terminated(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one clean-up, even if the signal comes again
    raise Terminated(signum)


# Kedro loads project-specific commands from ``<package>.cli:cli``; this module is also the
# ``lungseg`` console script, so it exposes an (empty) click group for Kedro to merge.
import click  # noqa: E402


@click.group(name="lungseg")
def cli() -> None:
    """lungseg project commands (the app CLI itself is ``lungseg --help``)."""


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
