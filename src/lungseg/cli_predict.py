"""``lungseg predict``: the command's body (the parser and the exit codes are in :mod:`lungseg.cli`).

Order of work, so that a bad run fails before the slow parts: the input exists and is not the output;
the output folder is checked (absent, empty or lungseg's own, by its manifest; not a symlink), its lock is taken (which also proves
that its parent is writable, and stops a second run to the same ``-o``); the input is read within the
limits of ``inference.limits``; only then are the models loaded and the CT segmented.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable
from pathlib import Path

from lungseg.errors import ConfigError, ImplausibleInputError, InputError


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars unless ``--no-progress``, and only on a terminal: redirected to a file, a bar is one
    endless carriage-return line (a batch logs one line per case instead)."""
    stream = sys.stderr
    return not args.no_progress and bool(getattr(stream, "isatty", lambda: False)())


def _warn(text: str) -> None:
    print(f"lungseg: warning: {text}", file=sys.stderr)


def _print_provenance(provenance: dict) -> None:
    """One ``lungseg: <task> model ...: trained on ...`` line per model (dataset, environment, score)."""
    from lungseg.inference.provenance import provenance_line

    for task, described in provenance.items():
        if described is not None:
            print(f"lungseg: {provenance_line(task, described)}")


def predict(args: argparse.Namespace, load_models: Callable) -> int:
    """Run ``lungseg predict`` for parsed ``args``; ``load_models(args)`` gives ``(lung, infection)``.

    Returns 0; raises :class:`ImplausibleInputError` (exit 3) after writing the outputs of an input the
    plausibility guard refused, and other :class:`lungseg.errors.LungsegError` (exit 2) for bad input.
    """
    from lungseg.inference.output_lock import output_lock

    src = Path(args.input)
    outdir = Path(args.outdir)
    if not src.exists():
        raise InputError(f"file {str(src)!r}: no such file or folder")
    if outdir.resolve() == src.resolve() or outdir.resolve() in src.resolve().parents:
        raise ConfigError(f"output folder {str(outdir)!r} must not be the input or hold it")
    from lungseg.inference.batch import is_batch_input

    if is_batch_input(src):
        if getattr(args, "spacing", None) is not None:
            raise ConfigError("--spacing applies to one input, not to a batch (cases may differ in voxel size)")
        return _batch(args, src, outdir, load_models, output_lock)
    for flag in ("cases", "dask"):
        if getattr(args, flag, None) is not None:
            raise ConfigError(f"--{flag} applies to batch mode only (a folder of NIfTI files or a metadata.csv)")
    from lungseg.inference.readers import override_spacing, read_input
    from lungseg.inference.report import check_output_dir
    from lungseg.limits import load_guard, load_limits

    overwrite = bool(getattr(args, "overwrite", False))
    check_output_dir(outdir, "case", overwrite)
    limits, guard = load_limits(), load_guard()
    with output_lock(outdir):
        volume, kind = read_input(src, limits)
        if getattr(args, "spacing", None) is not None:
            volume = override_spacing(volume, args.spacing)
        lung, infection = load_models(args)
        from lungseg.inference.report import make_report, write_outputs
        from lungseg.inference.segment import Segmenter

        segmenter = Segmenter.from_models(lung, infection, _settings(args, guard))
        _print_provenance({t: p for t, p in segmenter.provenance.items() if t == "lung" or t in args.tasks})
        seg = segmenter.segment(volume, kind, tasks=args.tasks, progress=show_progress(args))
        report = make_report(seg, volume.spacing)
        report["models"] = {"lung": lung.source, "infection": infection.source if infection else None}
        report["precision"] = getattr(lung, "precision", "float32")  # the prediction precision (--precision)
        written = write_outputs(volume, seg, report, outdir, overwrite=overwrite)
    names = ", ".join(sorted(p.relative_to(outdir).as_posix() for p in written.values()))
    print(f"lungseg: outputs written to {outdir}: {names}")
    if report.get("severity_withheld"):
        _warn(f"{src.name}: no severity grade: {report['severity_withheld']}; its figures are not for "
              "interpretation (report.json: severity_withheld)")
    if report.get("volumes_nominal"):
        note = volume.meta.get("spacing_note") or "the voxel size was assumed"
        _warn(f"{src.name}: volumes in ml are nominal: {note}; give the voxel size with --spacing X,Y,Z")
    if seg.implausible_input:
        raise ImplausibleInputError(
            f"{src.name}: {seg.implausible_input}; no figures reported (report.json: implausible_input)"
        )
    print(f"lungseg: {report['message']}")
    return 0


def _settings(args: argparse.Namespace, guard):
    """The Segmenter's settings of ``lungseg predict``: its options and the project's guard bounds."""
    from lungseg.inference.settings import InferenceSettings

    return InferenceSettings(guard=guard, batch_size=args.batch_size, flip_tta=args.tta,
                             lung_fill_holes=args.fill_lung_holes,
                             infection_margin_mm=getattr(args, "infection_margin", 0.0),
                             infection_min_lesion_mm3=getattr(args, "min_lesion", 0.0))


def _pinned(args: argparse.Namespace, lung, infection) -> argparse.Namespace:
    """``args`` naming the models the driver loaded (absolute paths), so that every Dask worker loads those
    same models even if a newer one is trained meanwhile."""
    pinned = argparse.Namespace(**vars(args))
    if getattr(args, "model", None):  # a registered lungseg-combined version: the URI names it
        return pinned
    for task, loaded in (("lung", lung), ("infection", infection)):
        if loaded is not None:
            source = Path(loaded.source)
            setattr(pinned, f"{task}_model", str(source.resolve()) if source.exists() else loaded.source)
    pinned.models = None
    return pinned


def _worker_segmenter(args: argparse.Namespace, load_models: Callable, settings):
    """A Dask worker's Segmenter (:func:`lungseg.inference.batch_dask.worker_segmenter` calls it once)."""
    from lungseg.inference.segment import Segmenter

    lung, infection = load_models(args)
    return Segmenter.from_models(lung, infection, settings)


@contextlib.contextmanager
def _dask_client(args: argparse.Namespace):
    from lungseg.parallel import open_client

    with open_client(args.dask, n_workers=getattr(args, "dask_workers", None)) as client:
        from lungseg.inference.batch_dask import warm_up_workers

        warm_up_workers(client)  # the workers import TensorFlow while this process loads the models
        print(f"lungseg: batch on the Dask cluster {args.dask} ({len(client.scheduler_info()['workers'])} workers)")
        yield client


def _dask_batch(client, args, lung, infection, load_models: Callable, settings, cases, outdir: Path, limits,
                overwrite: bool):
    """The batch on a Dask cluster (``--dask ADDRESS|local``; :mod:`lungseg.inference.batch_dask`)."""
    import functools

    from lungseg.inference.batch_dask import run_batch_dask

    make = functools.partial(_worker_segmenter, _pinned(args, lung, infection), load_models, settings)
    return run_batch_dask(client, make, cases, outdir, args.tasks, show_progress(args), limits=limits,
                          overwrite=overwrite)


def _batch(args: argparse.Namespace, src: Path, outdir: Path, load_models: Callable, output_lock) -> int:
    from lungseg.inference.batch import (
        check_batch_output_dir,
        evaluation_failures,
        find_cases,
        ground_truth_summary_lines,
        missing_inputs,
        run_batch,
        select_cases,
        some,
        write_summary,
    )
    from lungseg.inference.segment import Segmenter
    from lungseg.limits import load_guard, load_limits

    overwrite = bool(getattr(args, "overwrite", False))
    check_batch_output_dir(outdir, overwrite)
    limits, guard = load_limits(), load_guard()
    cases = select_cases(find_cases(src, limits.max_batch_cases), getattr(args, "cases", None))
    missing = missing_inputs(cases)
    if len(missing) == len(cases):  # checked before any model is loaded: nothing could be segmented
        raise InputError(f"{src}: none of the {len(cases):,} cases' input files exists ({some(list(missing.values()), 3)})")
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(_dask_client(args)) if getattr(args, "dask", None) else None  # before any write
        stack.enter_context(output_lock(outdir))
        lung, infection = load_models(args)
        segmenter = Segmenter.from_models(lung, infection, _settings(args, guard))
        _print_provenance({t: p for t, p in segmenter.provenance.items() if t == "lung" or t in args.tasks})
        if client is not None:
            summary = _dask_batch(client, args, lung, infection, load_models, _settings(args, guard), cases, outdir,
                                  limits, overwrite)
        else:
            summary = run_batch(segmenter, cases, outdir, args.tasks, show_progress(args), limits=limits,
                                overwrite=overwrite)
        path = write_summary(summary, outdir)
    failed = summary[summary["status"] != "ok"]
    print(f"lungseg: {len(summary) - len(failed)} of {len(summary)} cases segmented into {outdir}; summary: {path}")
    withheld = summary.loc[summary["severity_withheld"].fillna("").astype(str) != "", "case"]
    if len(withheld):
        reason = summary.loc[withheld.index[0], "severity_withheld"]
        _warn(f"no severity grade for {len(withheld)} of {len(summary)} cases ({some(withheld)}): {reason}; "
              f"their figures are not for interpretation (the severity_withheld column of {path})")
    nominal = summary.loc[summary["spacing_assumed"].map(lambda v: v is True or str(v) == "True"), "case"]
    if len(nominal):
        _warn(f"volumes in ml are nominal for {len(nominal)} case(s) ({some(nominal)}): their voxel size was "
              f"assumed or is probably a placeholder (the spacing_assumed column of {path})")
    for line in ground_truth_summary_lines(summary):
        print(f"lungseg: {line}")
    not_evaluated = evaluation_failures(summary)
    if not_evaluated:
        print(
            f"lungseg: ground truth unusable for {len(not_evaluated)} case(s) ({some(not_evaluated)}); "
            f"see the eval_error column of {path}"
        )
    if len(failed):
        raise InputError(f"{len(failed)} of {len(summary)} cases failed ({some(failed['case'])}); see {path}")
    implausible = summary.loc[summary["implausible_input"].fillna("").astype(str) != "", "case"]
    if len(implausible):
        raise ImplausibleInputError(
            f"{len(implausible)} of {len(summary)} cases ({some(implausible)}); see the implausible_input "
            f"column of {path}"
        )
    return 0
