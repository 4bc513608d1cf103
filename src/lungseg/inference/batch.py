"""Segment many cases: a folder of NIfTI files or a dataset ``metadata.csv``.

Each case is written to ``<outdir>/<case>/`` (see :func:`lungseg.inference.report.write_outputs`) and
one row per case goes to the summary table. A case that fails (a LungsegError: unreadable file, not a
CT...) is recorded with its error and the others go on. The cases are found by
:mod:`lungseg.inference.batch_cases` (re-exported here).

Ground truth
    When a ``metadata.csv`` also has ``lung_mask`` and/or ``infection_mask`` columns (the dataset's
    layout), each segmented case is compared with its masks on the input's own voxel grid (both the
    prediction and the mask in canonical order, no resampling), by the reader and rule of
    :mod:`lungseg.inference.ground_truth` (the web UI's too): ``lung_dice`` / ``lung_iou`` (predicted
    lung labels > 0 vs the mask's lung) and ``infection_dice`` / ``infection_iou`` (predicted infection
    vs the mask's infection), with :func:`lungseg.imaging.overlap.dice` / ``iou`` (1.0 when both are
    empty). A binary mask is the mask of its column's task; a label map gives lung = labels 1-3 and
    infection = label 3. The columns stay empty for a case without ground truth, and the infection ones
    when the infection task was not run. A ground-truth mask that cannot be used (missing, unreadable,
    bad values, another shape or grid than the CT's) is reported in the case's ``eval_error`` column; the case
    keeps ``status`` ``ok`` (its segmentation was written) and the batch goes on.
    :func:`ground_truth_summary_lines` gives the mean lines ("mean lung Dice 0.953 over 4 cases (IoU 0.911)").

Interruption and resume
    Every finished case is recorded in the batch folder's journal, :data:`JOURNAL_FILE` (one JSON line:
    the case, the SHA-256 of its inputs, a key of the models and settings, its summary row). Ctrl-C or
    SIGTERM keeps the finished cases and writes a partial ``summary.csv`` (the cases not reached have
    ``status`` ``not_run``) before the exit. A rerun into the same folder resumes: a case whose folder
    is there, whose inputs (CT and ground-truth masks) have the same SHA-256 and whose models and
    settings are the same is not segmented again; its recorded row goes into the new summary.
    Input files that do not exist are found by a stat before the loop and reported in one line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from lungseg.errors import DataValidationError, InputError, LungsegError, Terminated
from lungseg.inference.batch_cases import (  # re-exported: the CLI and the inference pipeline import them here
    GROUND_TRUTH_COLUMNS,
    BatchCase,
    find_cases,
    is_batch_input,
    missing_inputs,
    select_cases,
    some,
)
from lungseg.layout import TASKS, output_tempfile

__all__ = [
    "GROUND_TRUTH_COLUMNS", "JOURNAL_FILE", "METRIC_COLUMNS", "SUMMARY_COLUMNS", "SUMMARY_FILE", "BatchCase",
    "check_batch_output_dir", "evaluation_failures", "find_cases", "ground_truth_means", "ground_truth_metrics",
    "ground_truth_summary_lines", "input_digest", "is_batch_input", "missing_inputs", "run_batch", "select_cases",
    "some", "write_summary",
]

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.csv"
#: The batch folder's record of finished cases (see "Interruption and resume" above).
JOURNAL_FILE = ".lungseg-batch.jsonl"
NOT_RUN = "not_run"
METRIC_COLUMNS = ["lung_dice", "lung_iou", "infection_dice", "infection_iou"]
SUMMARY_COLUMNS = [
    "case", "input", "status", "error", "output_dir", "seconds", "no_lungs_found", "implausible_input",
    "spacing_assumed", "partial_scan",
    "lung_ml_left", "lung_ml_right", "lung_ml_total",
    "infection_ml_left", "infection_ml_right", "infection_ml_total",
    "infection_percent_left", "infection_percent_right", "infection_percent_total",
    "severity_left", "severity_right", "severity_total", "severity_withheld", "n_lesions",
    *METRIC_COLUMNS, "eval_error",
    "report_json", "lesions_csv", "metrics_csv",
]
#: The summary columns that hold a case's files, relative to the batch folder (``<case>/lesions.csv``).
FILE_COLUMNS = {"report_json": "report", "lesions_csv": "lesions", "metrics_csv": "metrics"}


def check_batch_output_dir(outdir: str | Path, overwrite: bool = False) -> Path:
    """A batch output folder must be absent, empty, or a previous lungseg batch output (its
    ``.lungseg-output.json`` says so), unless ``overwrite`` (see :mod:`lungseg.inference.ownership`)."""
    from lungseg.inference.report import check_output_dir

    return check_output_dir(outdir, "batch", overwrite)


def _claim(outdir: Path, *added: str) -> None:
    """Record ``added`` (case folders, summary.csv) in the batch folder's manifest, keeping what it listed."""
    from lungseg.inference.ownership import read_manifest, write_manifest

    outdir.mkdir(parents=True, exist_ok=True)
    old = read_manifest(outdir)
    write_manifest(outdir, "batch", [*(old["entries"] if old and old["kind"] == "batch" else []), *added])


# ------------------------------------------------------------------------------------- ground truth


def ground_truth_metrics(
    seg, ct_volume, item: BatchCase, tasks: Sequence[str], tolerance: dict[str, float] | None = None,
    keep: dict | None = None,
) -> dict[str, float | None]:
    """Dice and IoU of a case's prediction against its ground-truth masks (see the module docstring).

    Args:
        seg: the case's :class:`lungseg.inference.segment.Segmentation` (canonical grid of ``ct_volume``).
        ct_volume: the case's CT volume.
        item: the case, with its ground-truth paths.
        tasks: the tasks that were run (infection metrics only when ``"infection"`` is among them).
        tolerance: when given, each NIfTI mask must be stored on the CT's own grid, its affine within it
            (:func:`lungseg.inference.ground_truth.read_mask`).
        keep: when given, receives each scored task's boolean ground truth (``keep[task]``) and the lung
            mask's labels (``keep["lung_labels"]``), for the per-lung and per-slice scores.

    Returns:
        ``{"lung_dice", "lung_iou", "infection_dice", "infection_iou"}``, None where there is no
        ground truth or the task was not run.

    Raises:
        DataValidationError: a ground-truth mask cannot be used.
    """
    from lungseg.imaging.overlap import dice, iou
    from lungseg.inference.ground_truth import predicted, read_mask, task_truth

    if item.ground_truth_problem:
        raise DataValidationError(item.ground_truth_problem, case=item.case)
    out: dict[str, float | None] = {c: None for c in METRIC_COLUMNS}
    for column, task in GROUND_TRUTH_COLUMNS.items():
        path = getattr(item, column)
        if path is None:
            continue
        if task not in tuple(tasks):
            logger.info("case %s: %s not scored (the %s task was not run)", item.case, column, task)
            continue
        labels = read_mask(path, ct_volume, case=item.case, tolerance=tolerance)
        gt = task_truth(labels, task, binary_task=task)
        if keep is not None:
            keep[task] = gt
            if task == "lung":
                keep["lung_labels"] = labels
        pred = predicted(seg, task)
        out[f"{task}_dice"] = dice(pred, gt)
        out[f"{task}_iou"] = iou(pred, gt)
    return out


def ground_truth_means(summary: pd.DataFrame) -> dict[str, tuple[float, int]]:
    """Mean of each metric column over the cases that have it: ``{column: (mean, n cases)}``."""
    means = {}
    for column in METRIC_COLUMNS:
        if column not in summary.columns:
            continue
        values = pd.to_numeric(summary[column], errors="coerce").dropna()
        if len(values):
            means[column] = (float(values.mean()), int(len(values)))
    return means


def ground_truth_summary_lines(summary: pd.DataFrame) -> list[str]:
    """The mean lines of a summary, e.g. ``"mean lung Dice 0.953 over 4 cases (IoU 0.911)"``; [] without
    ground truth."""
    means = ground_truth_means(summary)
    lines = []
    for task in TASKS:
        if f"{task}_dice" in means:
            value, n = means[f"{task}_dice"]
            line = f"mean {task} Dice {value:.3f} over {n} case{'s' if n != 1 else ''}"
            if f"{task}_iou" in means:
                line += f" (IoU {means[f'{task}_iou'][0]:.3f})"
            lines.append(line)
    return lines


# ---------------------------------------------------------------------------------------------- run


def _as_case(item: tuple) -> BatchCase:
    return item if isinstance(item, BatchCase) else BatchCase(str(item[0]), Path(item[1]))


def _row(item: BatchCase) -> dict:
    return {c: None for c in SUMMARY_COLUMNS} | {"case": item.case, "input": str(item.file)}


def run_batch(
    segmenter,
    cases: Sequence[tuple],
    outdir: str | Path,
    tasks: Sequence[str] = TASKS,
    progress: bool = True,
    *,
    limits,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Segment every case into ``outdir/<case>/`` and return the summary table (one row per case).

    Args:
        segmenter: a :class:`lungseg.inference.segment.Segmenter`.
        cases: :class:`BatchCase` tuples (from :func:`find_cases`, maybe :func:`select_cases`) or
            plain ``(case, file)`` pairs (no ground truth).
        outdir: the batch output folder.
        tasks: the tasks to run.
        progress: show a tqdm bar over the cases.
        limits: the resource limits of :func:`lungseg.inference.readers.read_input` (``Limits`` or the
            ``inference.limits`` dict).
        overwrite: write into ``outdir`` even if it is not a lungseg batch output (``--overwrite``).

    Failures of one case (any :class:`LungsegError`) are logged and recorded in the ``status`` /
    ``error`` columns; nothing is left in that case's folder. A case the plausibility guard refuses
    keeps ``status`` ``ok`` (its masks and report are written) with its reason in ``implausible_input``
    and no severity. Cases with ground truth get the
    metric columns (or ``eval_error``), and the mean lines are logged at the end. Finished cases of an
    earlier run are reused, and an interruption writes a partial ``summary.csv`` before it goes on up
    (see "Interruption and resume" in the module docstring).
    """
    outdir, items, limits = start_batch(outdir, cases, limits, overwrite)
    missing = missing_inputs(items)
    if missing:
        logger.warning("%d of %d cases have no input file (%s): recorded as failed, not read", len(missing),
                       len(items), some(list(missing)))
    key = run_key(segmenter, tasks)
    finished = _finished_cases(outdir, key)
    rows: list[dict] = []
    reused: list[str] = []
    try:
        for item in tqdm(items, desc="cases", unit="case", disable=not progress):
            if item.case in missing:
                rows.append(_row(item) | {"status": "error", "error": missing[item.case], "seconds": 0.0})
                continue
            digest = input_digest(item)
            earlier = finished.get(item.case)
            if earlier is not None and earlier["inputs"] == digest and _case_kept(outdir, item.case):
                rows.append(_row(item) | earlier["row"])
                reused.append(item.case)
                continue
            row = finish_case(outdir, segment_case(segmenter, item, outdir, tasks, limits, overwrite))
            rows.append(row)
            if row["status"] == "ok":
                _record(outdir, key, digest, row)
            if not progress:  # no bar (not a terminal, or --no-progress): one line per case
                log_case(row, len(rows), len(items))
    except (KeyboardInterrupt, Terminated):
        done = len(rows)
        rows += [_row(item) | {"status": NOT_RUN, "error": "the batch was interrupted before this case; rerun the "
                               "same command to resume"} for item in items[done:]]
        path = write_summary(pd.DataFrame(rows, columns=SUMMARY_COLUMNS), outdir)
        logger.warning("batch interrupted after %d of %d cases: they are kept, partial summary in %s; rerun the "
                       "same command to resume", done, len(items), path)
        raise
    if reused:
        logger.info("%d of %d cases were finished by an earlier run with the same inputs, models and settings: "
                    "not segmented again (%s)", len(reused), len(items), some(reused))
    return batch_summary(rows)


def start_batch(outdir: str | Path, cases: Sequence[tuple], limits, overwrite: bool) -> tuple[Path, list[BatchCase], Any]:
    """Check the output folder and the case ids, and claim the folder and its journal (an interrupted batch
    can be rerun into it): ``(outdir, cases, limits)``. Shared by :func:`run_batch` and
    :func:`lungseg.inference.batch_dask.run_batch_dask`."""
    from lungseg.layout import check_case_id
    from lungseg.limits import as_limits

    outdir = check_batch_output_dir(outdir, overwrite)
    items = [_as_case(c) for c in cases]
    for item in items:  # case ids name folders: never a path (find_cases checks them too)
        try:
            check_case_id(item.case, "batch case")
        except LungsegError as exc:
            raise InputError(str(exc)) from exc
    _claim(outdir, JOURNAL_FILE)  # ours from now on: an interrupted batch can be rerun into it
    return outdir, items, as_limits(limits)


def finish_case(outdir: Path, row: dict) -> dict:
    """Record a segmented case's folder in the batch manifest (in the process that holds the ``-o`` lock,
    one case after the other); returns ``row``."""
    if row["status"] == "ok":
        _claim(outdir, row["case"])
    return row


def log_case(row: dict, done: int, total: int) -> None:
    logger.info("case %d of %d: %s %s (%.1f s)", done, total, row["case"],
                row["status"] if row["status"] == "ok" else f"failed: {row['error']}", row["seconds"] or 0.0)


def batch_summary(rows: list[dict]) -> pd.DataFrame:
    """The summary table of the rows (logs the ground-truth mean lines)."""
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    for line in ground_truth_summary_lines(summary):
        logger.info("%s", line)
    return summary


def failed_row(item: BatchCase, error: str) -> dict:
    """The summary row of a case that failed outside :func:`segment_case` (its Dask worker died...)."""
    return _row(item) | {"status": "error", "error": error}


def segment_case(segmenter, item: BatchCase, outdir: Path, tasks: Sequence[str], limits, overwrite: bool) -> dict:
    """Segment one case into ``outdir/<case>/`` (atomic writes) and return its summary row; a failure of
    the case is its row's ``status`` / ``error``, never an exception. ``limits``: a ``Limits``."""
    from lungseg.inference.readers import read_input
    from lungseg.inference.report import make_report, write_outputs

    case = item.case
    row = _row(item)
    start = time.perf_counter()
    try:
        volume, kind = read_input(item.file, limits)
        seg = segmenter.segment(volume, kind, tasks=tasks, progress=False)
        report = make_report(seg, volume.spacing)
        if item.has_ground_truth:  # scored before writing: report.json and metrics.csv hold the scores
            _score(row, report, seg, volume, item, tasks, limits)
        written = write_outputs(volume, seg, report, outdir / case, overwrite=overwrite)
    except LungsegError as exc:
        logger.error("case %s failed: %s", case, exc)
        row.update(status="error", error=str(exc))
    except MemoryError as exc:
        logger.error("case %s failed: not enough memory (%s)", case, exc)
        row.update(status="error", error=f"not enough memory ({exc or 'MemoryError'}); try a smaller batch size")
    except Exception as exc:  # one broken case must not lose the summary of the others
        logger.exception("case %s failed with an internal error", case)
        row.update(status="error", error=f"internal error: {type(exc).__name__}: {exc}")
    else:
        row.update(status="ok", error="", output_dir=str(outdir / case), no_lungs_found=report["no_lungs_found"],
                   implausible_input=report.get("implausible_input") or "",
                   spacing_assumed=bool(volume.meta.get("spacing_assumed", False)),
                   partial_scan=report.get("partial_scan") or "")
        for side in ("left", "right", "total"):
            if report["lung_volume_ml"] is not None:  # None for a slab or a 2D slice (partial_scan)
                row[f"lung_ml_{side}"] = report["lung_volume_ml"][side]
            if report["infection_volume_ml"] is not None:
                row[f"infection_ml_{side}"] = report["infection_volume_ml"][side]
            if report["infection_percent"] is not None:
                row[f"infection_percent_{side}"] = report["infection_percent"][side]
            if report["severity"] is not None:
                row[f"severity_{side}"] = report["severity"][side]
        row.update(severity_withheld=report.get("severity_withheld") or "", n_lesions=len(report.get("lesions") or []),
                   **{col: f"{case}/{written[key].name}" for col, key in FILE_COLUMNS.items() if key in written})
    row["seconds"] = round(time.perf_counter() - start, 3)
    return row


# ------------------------------------------------------------------------------------------- resume


def input_digest(item: BatchCase) -> str:
    """SHA-256 over a case's inputs: its CT (a file, or every file of a DICOM folder by relative path)
    and its ground-truth masks, each with its role, so that a changed or swapped file changes it."""
    digest = hashlib.sha256()
    for role, path in (("ct", item.file), ("lung_mask", item.lung_mask), ("infection_mask", item.infection_mask)):
        if path is not None:
            _digest_files(digest, role, Path(path))  # a missing mask: its eval_error comes from the scoring
    digest.update(f"problem:{item.ground_truth_problem or ''}".encode())
    return digest.hexdigest()


def _digest_files(digest, role: str, path: Path) -> None:
    """Feed ``digest`` the SHA-256 of ``path`` (a file, or every file of a folder by relative path), or
    ``missing``."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(f"{role}:{file.relative_to(path) if path.is_dir() else ''}\n".encode())
        if file.is_file():
            with file.open("rb") as fh:
                digest.update(hashlib.file_digest(fh, "sha256").digest())
        else:
            digest.update(b"missing")


def model_digest(loaded) -> str | None:
    """SHA-256 of a loaded model: its preprocessing config and, when its source is a local file or fold
    folder, every byte of it (a model overwritten at the same path is another model). An MLflow URI is
    named by the URI and its config only. Hashing reads the model file once more, about 0.3 s per 100 MB."""
    if loaded is None:
        return None
    digest = hashlib.sha256(json.dumps(getattr(loaded, "config", None), sort_keys=True, default=str).encode())
    source = Path(str(getattr(loaded, "source", "")))
    if str(source) and source.exists():
        _digest_files(digest, "model", source)
    return digest.hexdigest()


def run_key(segmenter, tasks: Sequence[str]) -> str:
    """A key of what makes a case's result: the tasks, the models (their sources and :func:`model_digest`)
    and the settings."""
    lung, infection = getattr(segmenter, "lung", None), getattr(segmenter, "infection", None)
    text = json.dumps({"tasks": list(tasks), "lung": getattr(lung, "source", None),
                       "infection": getattr(infection, "source", None),
                       "models": [model_digest(lung), model_digest(infection)],
                       "precision": getattr(lung, "precision", None),
                       "settings": repr(getattr(segmenter, "settings", None))}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _plain(value):
    """numpy scalars as Python values in a journal line."""
    return value.item() if hasattr(value, "item") else str(value)


def _record(outdir: Path, key: str, digest: str, row: dict) -> None:
    """Append a finished case to the journal (one line, flushed to disk before the next case starts)."""
    line = json.dumps({"case": row["case"], "inputs": digest, "run": key, "row": row}, default=_plain)
    with (outdir / JOURNAL_FILE).open("a") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _finished_cases(outdir: Path, key: str) -> dict[str, dict]:
    """The journal's finished cases of runs with ``key`` (the last line of a case wins; a line cut short
    by a kill is ignored)."""
    path = outdir / JOURNAL_FILE
    if not path.is_file():
        return {}
    finished: dict[str, dict] = {}
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("row"), dict) and "case" in entry:
            if entry.get("run") == key:
                finished[str(entry["case"])] = entry
            else:  # another model or setting: that case is segmented again
                finished.pop(str(entry["case"]), None)
    if finished:
        logger.info("%s: %d finished case(s) recorded by an earlier run", outdir, len(finished))
    return finished


def _case_kept(outdir: Path, case: str) -> bool:
    """The case's folder is still there, as the lungseg output it wrote."""
    from lungseg.inference.ownership import read_manifest

    manifest = read_manifest(outdir / case)
    return manifest is not None and manifest["kind"] == "case"


def _score(row: dict, report: dict, seg, volume, item: BatchCase, tasks: Sequence[str], limits) -> None:
    """Score a case against its ground truth: the summary's metric columns (or ``eval_error``), and the
    report's score tables (:func:`lungseg.inference.export.ground_truth_scores`, ``metrics.csv``)."""
    from lungseg.inference.export import ground_truth_scores

    truths: dict = {}
    try:
        row.update(ground_truth_metrics(seg, volume, item, tasks, limits.geometry_tolerance, keep=truths))
        row["eval_error"] = ""
    except LungsegError as exc:
        logger.warning("case %s: not evaluated: %s", item.case, exc)
        row["eval_error"] = str(exc)
        return
    lung_labels = truths.pop("lung_labels", None)
    report.update(ground_truth_scores(seg, truths, lung_labels))


def evaluation_failures(summary: pd.DataFrame) -> list[str]:
    """Case ids whose ground truth could not be used (a non-empty ``eval_error``)."""
    if "eval_error" not in summary.columns:
        return []
    errors = summary["eval_error"].fillna("").astype(str).str.strip()
    return list(summary.loc[errors != "", "case"].astype(str))


def write_summary(summary: pd.DataFrame, outdir: str | Path) -> Path:
    """Write ``outdir/summary.csv`` atomically (temporary file, then rename)."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    fd, tmp = output_tempfile(f".{SUMMARY_FILE}.", outdir)
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            summary.to_csv(fh, index=False, float_format="%.10g")  # no float noise (828.2860000000001)
        os.replace(tmp, outdir / SUMMARY_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _claim(outdir, SUMMARY_FILE)
    return outdir / SUMMARY_FILE
