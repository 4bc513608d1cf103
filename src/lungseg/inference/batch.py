"""Segment many cases: a folder of NIfTI files or a dataset ``metadata.csv``.

Each case is written to ``<outdir>/<case>/`` (see :func:`lungseg.inference.report.write_outputs`) and
one row per case goes to the summary table. A case that fails (a LungsegError: unreadable file, not a
CT...) is recorded with its error and the others go on.

Ground truth
    When a ``metadata.csv`` also has ``lung_mask`` and/or ``infection_mask`` columns (the dataset's
    layout), each segmented case is compared with its masks on the input's own voxel grid (both the
    prediction and the mask in canonical order, no resampling): ``lung_dice`` / ``lung_iou`` (predicted
    lung labels > 0 vs mask > 0) and ``infection_dice`` / ``infection_iou`` (predicted infection vs
    mask > 0), with :func:`lungseg.evaluation.metrics.dice` / ``iou`` (1.0 when both are empty). The
    columns stay empty for a case without ground truth, and the infection ones when the infection task
    was not run. A ground-truth mask that cannot be used (missing, unreadable, another shape than the
    CT) is reported in the case's ``eval_error`` column; the case keeps ``status`` ``ok`` (its
    segmentation was written) and the batch goes on. :func:`ground_truth_summary_lines` gives the mean
    lines ("mean lung Dice 0.953 over 4 cases (IoU 0.911)").
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lungseg.errors import DataValidationError, InputError, LungsegError

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
SUMMARY_FILE = "summary.csv"
#: Ground-truth columns of ``metadata.csv`` used for evaluation, and the task each one scores.
GROUND_TRUTH_COLUMNS = {"lung_mask": "lung", "infection_mask": "infection"}
METRIC_COLUMNS = ["lung_dice", "lung_iou", "infection_dice", "infection_iou"]
SUMMARY_COLUMNS = [
    "case", "input", "status", "error", "output_dir", "seconds", "no_lungs_found",
    "lung_ml_left", "lung_ml_right", "lung_ml_total",
    "infection_ml_left", "infection_ml_right", "infection_ml_total",
    "infection_percent_left", "infection_percent_right", "infection_percent_total",
    "severity_left", "severity_right", "severity_total",
    *METRIC_COLUMNS, "eval_error",
]


class BatchCase(NamedTuple):
    """One case of a batch: its id (the output folder name), its CT file and its ground truth, if any.

    Attributes:
        case: case id, unique within the batch.
        file: the CT file.
        lung_mask: the ground-truth lung mask file (any non-zero voxel is lung), or None.
        infection_mask: the ground-truth infection mask file, or None.
        ground_truth_problem: why a ground-truth path written in the csv cannot be used (e.g. an
            absolute path), reported in the case's ``eval_error``; None when there is none.
    """

    case: str
    file: Path
    lung_mask: Path | None = None
    infection_mask: Path | None = None
    ground_truth_problem: str | None = None

    @property
    def has_ground_truth(self) -> bool:
        return self.lung_mask is not None or self.infection_mask is not None or bool(self.ground_truth_problem)


def _strip_nifti_suffix(name: str) -> str:
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


_KAGGLE_RADIOPAEDIA = re.compile(r"^radiopaedia_org_covid-19-pneumonia-(.+?)(?:-dcm)?$")
_KAGGLE_ORG = re.compile(r"^([a-z]+)_org_(.+)$")


def _case_from_ct_name(name: str) -> str:
    """The case id of a CT file name, as the dataset's mask files name it.

    ``coronacases_001_org.nii.gz`` -> ``coronacases_001``; Kaggle's names too:
    ``coronacases_org_001.nii`` -> ``coronacases_001`` and
    ``radiopaedia_org_covid-19-pneumonia-4_85506_1-dcm.nii`` -> ``radiopaedia_4_85506_1``.
    Other names keep their stem.
    """
    stem = _strip_nifti_suffix(Path(name).name)
    if stem.endswith("_org") and len(stem) > 4:
        return stem[: -len("_org")]
    match = _KAGGLE_RADIOPAEDIA.match(stem)
    if match:
        return f"radiopaedia_{match.group(1)}"
    match = _KAGGLE_ORG.match(stem)
    return f"{match.group(1)}_{match.group(2)}" if match else stem


def is_batch_input(path: str | Path) -> bool:
    """True for a ``.csv`` file, or a folder holding ``metadata.csv`` or NIfTI files."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() == ".csv"
    if path.is_dir():
        return (path / "metadata.csv").is_file() or any(
            p.is_file() and p.name.lower().endswith(NIFTI_SUFFIXES) for p in path.iterdir()
        )
    return False


def find_cases(path: str | Path) -> list[BatchCase]:
    """The cases of a batch input.

    Args:
        path: a ``metadata.csv`` (column ``ct_scan``, paths relative to the csv's folder, Kaggle's
            ``../input/<slug>/`` prefix accepted; the case id is taken from a ``case`` column, else from
            the ``lung_mask`` file name, else from the CT file name without ``_org``; the optional
            ``lung_mask`` / ``infection_mask`` columns give the ground truth), or a folder of
            ``.nii``/``.nii.gz`` files (case id as the masks name it, see :func:`_case_from_ct_name`; no ground
            truth), or a folder holding a ``metadata.csv``.

    Returns:
        :class:`BatchCase` tuples, in input order (a folder: sorted by file name). A repeated case id
        gets a ``_2``, ``_3``... suffix.

    Raises:
        InputError: no cases, no ``ct_scan`` column, unreadable csv, a bad ``ct_scan`` path.
    """
    path = Path(path)
    if path.is_dir() and (path / "metadata.csv").is_file():
        path = path / "metadata.csv"
    if path.is_file() and path.suffix.lower() == ".csv":
        cases = _cases_from_csv(path)
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(NIFTI_SUFFIXES))
        cases = [BatchCase(_case_from_ct_name(p.name), p) for p in files]
    else:
        raise InputError(f"file {str(path)!r}: not a folder of NIfTI files nor a metadata.csv")
    if not cases:
        raise InputError(f"file {str(path)!r}: no cases found (no NIfTI files)")
    seen: dict[str, int] = {}
    unique = []
    for item in cases:  # keep case ids unique: they name the output folders
        n = seen.get(item.case, 0)
        seen[item.case] = n + 1
        unique.append(item if n == 0 else item._replace(case=f"{item.case}_{n + 1}"))
    return unique


def _cell(row: pd.Series, column: str) -> str | None:
    """A non-empty string cell of ``row`` (None for a missing column, NaN or blank)."""
    value = row.get(column)
    return value.strip() if isinstance(value, str) and value.strip() else None


def _cases_from_csv(csv: Path) -> list[BatchCase]:
    from lungseg.pipelines.ingestion.paths import case_id_from_path, resolve_relative

    try:
        table = pd.read_csv(csv, dtype=str)
    except Exception as exc:
        raise InputError(f"file {str(csv)!r}: unreadable csv ({type(exc).__name__}: {exc})") from exc
    if "ct_scan" not in table.columns:
        raise InputError(f"file {str(csv)!r}: no 'ct_scan' column (columns: {', '.join(table.columns)})")
    cases = []
    for i, row in table.iterrows():
        raw = str(row["ct_scan"])
        try:
            file = csv.parent / resolve_relative(raw)
        except LungsegError as exc:
            raise InputError(f"file {str(csv)!r}, row {i + 2}: {exc}") from exc
        if _cell(row, "case"):
            case = _cell(row, "case")
        elif _cell(row, "lung_mask"):
            case = case_id_from_path(_cell(row, "lung_mask"))
        else:
            case = _case_from_ct_name(raw)
        masks: dict[str, Path | None] = {}
        problems = []
        for column in GROUND_TRUTH_COLUMNS:
            text = _cell(row, column)
            masks[column] = None
            if text is None:
                continue
            try:
                masks[column] = csv.parent / resolve_relative(text, case=case)
            except LungsegError as exc:  # reported for this case only: the CT can still be segmented
                problems.append(f"file {str(csv)!r}, row {i + 2}, column {column!r}: {getattr(exc, 'problem', exc)}")
        cases.append(BatchCase(case, file, masks["lung_mask"], masks["infection_mask"], "; ".join(problems) or None))
    return cases


def select_cases(cases: Sequence[tuple], ids: Iterable[str] | None) -> list:
    """Keep the cases whose id is in ``ids`` (input order kept); ``ids=None`` keeps them all.

    Args:
        cases: ``(case, file, ...)`` tuples, e.g. from :func:`find_cases`.
        ids: case ids (e.g. the held-out patients), as printed in the summary's ``case`` column.

    Raises:
        InputError: ``ids`` is empty, or names a case that is not in the batch.
    """
    if ids is None:
        return list(cases)
    wanted = list(dict.fromkeys(str(c).strip() for c in ids if str(c).strip()))
    if not wanted:
        raise InputError("the list of cases to segment is empty; leave it out to segment every case")
    known = [item[0] for item in cases]
    known_set = set(known)
    missing = [c for c in wanted if c not in known_set]
    if missing:
        shown = ", ".join(known[:10]) + (f", ... ({len(known)} in all)" if len(known) > 10 else "")
        raise InputError(f"cases not found in the batch input: {', '.join(missing)} (known cases: {shown})")
    keep = set(wanted)
    selected = [item for item in cases if item[0] in keep]
    logger.info("batch restricted to %d of %d cases", len(selected), len(known))
    return selected


def check_batch_output_dir(outdir: str | Path) -> Path:
    """A batch output folder must be absent, empty, or a previous batch output (holds summary.csv)."""
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"output {str(outdir)!r} exists and is not a folder")
    visible = outdir.is_dir() and any(not p.name.startswith(".") for p in outdir.iterdir())  # .gitkeep is fine
    if visible and not (outdir / SUMMARY_FILE).is_file():
        raise InputError(
            f"output folder {str(outdir)!r} is not empty and holds no previous lungseg batch output; "
            "choose a new or empty folder"
        )
    return outdir


# ------------------------------------------------------------------------------------- ground truth


def load_ground_truth(path: str | Path, ct_volume, *, case: str | None = None) -> np.ndarray:
    """A ground-truth mask as a bool array in canonical (z, y, x) order, on the CT's grid.

    Args:
        path: a NIfTI mask (any non-zero voxel is foreground).
        ct_volume: the canonical :class:`lungseg.volume.Volume` of the case's CT.
        case: the case id, for messages.

    Raises:
        DataValidationError: missing or unreadable file, not 3D, or not of the CT's shape (naming
            the case, the file and both shapes).
    """
    from lungseg.volume import load_canonical

    path = Path(path)
    if not path.is_file():
        raise DataValidationError("ground-truth mask not found", case=case, file=path)
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises ImageFileError, EOFError, zlib errors, OSError...
        raise DataValidationError(
            f"not a readable NIfTI ground-truth mask ({type(exc).__name__}: {exc})", case=case, file=path
        ) from exc
    if len(img.shape) == 2:  # a single slice stored as 2D NIfTI, as the CT reader accepts
        img = nib.Nifti1Image(np.asanyarray(img.dataobj)[..., None], img.affine, header=img.header)
    mask = load_canonical(img, case=case, file=path)
    ct_shape = tuple(int(s) for s in ct_volume.shape)
    if tuple(mask.array.shape) != tuple(ct_volume.array.shape):
        raise DataValidationError(
            f"ground-truth mask of shape {tuple(mask.shape)} does not match the CT's shape {ct_shape} "
            f"(canonical z, y, x: mask {tuple(mask.array.shape)}, CT {tuple(ct_volume.array.shape)})",
            case=case,
            file=path,
        )
    mask_codes, ct_codes = nib.aff2axcodes(mask.affine), nib.aff2axcodes(ct_volume.affine)
    if mask_codes != ct_codes:
        logger.warning(
            "case %s: ground-truth mask %s is oriented %s, the CT %s; compared after reorienting both",
            case, path.name, "".join(mask_codes), "".join(ct_codes),
        )
    return mask.array > 0


def ground_truth_metrics(seg, ct_volume, item: BatchCase, tasks: Sequence[str]) -> dict[str, float | None]:
    """Dice and IoU of a case's prediction against its ground-truth masks (see the module docstring).

    Args:
        seg: the case's :class:`lungseg.inference.segment.Segmentation` (canonical grid of ``ct_volume``).
        ct_volume: the case's CT volume.
        item: the case, with its ground-truth paths.
        tasks: the tasks that were run (infection metrics only when ``"infection"`` is among them).

    Returns:
        ``{"lung_dice", "lung_iou", "infection_dice", "infection_iou"}``, None where there is no
        ground truth or the task was not run.

    Raises:
        DataValidationError: a ground-truth mask cannot be used.
    """
    from lungseg.evaluation.metrics import dice, iou

    if item.ground_truth_problem:
        raise DataValidationError(item.ground_truth_problem, case=item.case)
    out: dict[str, float | None] = {c: None for c in METRIC_COLUMNS}
    predictions = {"lung": np.asarray(seg.lung_labels) > 0, "infection": np.asarray(seg.infection) > 0}
    for column, task in GROUND_TRUTH_COLUMNS.items():
        path = getattr(item, column)
        if path is None:
            continue
        if task not in tuple(tasks):
            logger.info("case %s: %s not scored (the %s task was not run)", item.case, column, task)
            continue
        gt = load_ground_truth(path, ct_volume, case=item.case)
        out[f"{task}_dice"] = dice(predictions[task], gt)
        out[f"{task}_iou"] = iou(predictions[task], gt)
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
    """The mean lines of a summary, e.g. ``"mean lung Dice 0.953 over 4 cases (IoU 0.911)"``; [] without ground truth."""
    means = ground_truth_means(summary)
    lines = []
    for task in ("lung", "infection"):
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
    tasks: Sequence[str] = ("lung", "infection"),
    progress: bool = True,
) -> pd.DataFrame:
    """Segment every case into ``outdir/<case>/`` and return the summary table (one row per case).

    Args:
        segmenter: a :class:`lungseg.inference.segment.Segmenter`.
        cases: :class:`BatchCase` tuples (from :func:`find_cases`, maybe :func:`select_cases`) or
            plain ``(case, file)`` pairs (no ground truth).
        outdir: the batch output folder.
        tasks: the tasks to run.
        progress: show a tqdm bar over the cases.

    Failures of one case (any :class:`LungsegError`) are logged and recorded in the ``status`` /
    ``error`` columns; nothing is left in that case's folder. Cases with ground truth get the
    metric columns (or ``eval_error``), and the mean lines are logged at the end.
    """
    from lungseg.inference.readers import read_input
    from lungseg.inference.report import make_report, write_outputs

    outdir = check_batch_output_dir(outdir)
    rows = []
    for item in tqdm([_as_case(c) for c in cases], desc="cases", unit="case", disable=not progress):
        case = item.case
        row = _row(item)
        start = time.perf_counter()
        try:
            volume, kind = read_input(item.file)
            seg = segmenter.segment(volume, kind, tasks=tasks, progress=False)
            report = make_report(seg, volume.spacing)
            write_outputs(volume, seg, report, outdir / case)
        except LungsegError as exc:
            logger.error("case %s failed: %s", case, exc)
            row.update(status="error", error=str(exc))
        except Exception as exc:  # one broken case must not lose the summary of the others
            logger.exception("case %s failed with an internal error", case)
            row.update(status="error", error=f"internal error: {type(exc).__name__}: {exc}")
        else:
            row.update(status="ok", error="", output_dir=str(outdir / case), no_lungs_found=report["no_lungs_found"])
            for side in ("left", "right", "total"):
                row[f"lung_ml_{side}"] = report["lung_volume_ml"][side]
                if report["infection_volume_ml"] is not None:
                    row[f"infection_ml_{side}"] = report["infection_volume_ml"][side]
                    row[f"infection_percent_{side}"] = report["infection_percent"][side]
                    row[f"severity_{side}"] = report["severity"][side]
            if item.has_ground_truth:
                try:
                    row.update(ground_truth_metrics(seg, volume, item, tasks))
                    row["eval_error"] = ""
                except LungsegError as exc:
                    logger.warning("case %s: not evaluated: %s", case, exc)
                    row["eval_error"] = str(exc)
        row["seconds"] = round(time.perf_counter() - start, 3)
        rows.append(row)
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    for line in ground_truth_summary_lines(summary):
        logger.info("%s", line)
    return summary


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
    fd, tmp = tempfile.mkstemp(prefix=f".{SUMMARY_FILE}.", dir=outdir)
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            summary.to_csv(fh, index=False)
        os.replace(tmp, outdir / SUMMARY_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return outdir / SUMMARY_FILE
