"""Segment many cases: a folder of NIfTI files or a dataset ``metadata.csv``.

Each case is written to ``<outdir>/<case>/`` (see :func:`lungseg.inference.report.write_outputs`) and
one row per case goes to the summary table. A case that fails (a LungsegError: unreadable file, not a
CT...) is recorded with its error and the others go on.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from lungseg.errors import InputError, LungsegError

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
SUMMARY_FILE = "summary.csv"
SUMMARY_COLUMNS = [
    "case", "input", "status", "error", "output_dir", "seconds", "no_lungs_found",
    "lung_ml_left", "lung_ml_right", "lung_ml_total",
    "infection_ml_left", "infection_ml_right", "infection_ml_total",
    "infection_percent_left", "infection_percent_right", "infection_percent_total",
    "severity_left", "severity_right", "severity_total",
]


def _strip_nifti_suffix(name: str) -> str:
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _case_from_ct_name(name: str) -> str:
    """``coronacases_001_org.nii.gz`` -> ``coronacases_001`` (the dataset's CT files end in ``_org``)."""
    stem = _strip_nifti_suffix(Path(name).name)
    return stem[: -len("_org")] if stem.endswith("_org") and len(stem) > 4 else stem


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


def find_cases(path: str | Path) -> list[tuple[str, Path]]:
    """The ``(case id, CT file)`` pairs of a batch input.

    Args:
        path: a ``metadata.csv`` (column ``ct_scan``, paths relative to the csv's folder, Kaggle's
            ``../input/<slug>/`` prefix accepted; the case id is taken from a ``case`` column, else from
            the ``lung_mask`` file name, else from the CT file name without ``_org``), or a folder of
            ``.nii``/``.nii.gz`` files (case id = file name without suffix and ``_org``), or a folder
            holding a ``metadata.csv``.

    Raises:
        InputError: no cases, no ``ct_scan`` column, unreadable csv.
    """
    path = Path(path)
    if path.is_dir() and (path / "metadata.csv").is_file():
        path = path / "metadata.csv"
    if path.is_file() and path.suffix.lower() == ".csv":
        cases = _cases_from_csv(path)
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(NIFTI_SUFFIXES))
        cases = [(_case_from_ct_name(p.name), p) for p in files]
    else:
        raise InputError(f"file {str(path)!r}: not a folder of NIfTI files nor a metadata.csv")
    if not cases:
        raise InputError(f"file {str(path)!r}: no cases found (no NIfTI files)")
    seen: dict[str, int] = {}
    unique = []
    for case, file in cases:  # keep case ids unique: they name the output folders
        n = seen.get(case, 0)
        seen[case] = n + 1
        unique.append((case if n == 0 else f"{case}_{n + 1}", file))
    return unique


def _cases_from_csv(csv: Path) -> list[tuple[str, Path]]:
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
        if "case" in table.columns and isinstance(row.get("case"), str) and row["case"].strip():
            case = row["case"].strip()
        elif "lung_mask" in table.columns and isinstance(row.get("lung_mask"), str) and row["lung_mask"].strip():
            case = case_id_from_path(row["lung_mask"])
        else:
            case = _case_from_ct_name(raw)
        cases.append((case, file))
    return cases


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


def _row(case: str, file: Path) -> dict:
    return {c: None for c in SUMMARY_COLUMNS} | {"case": case, "input": str(file)}


def run_batch(
    segmenter,
    cases: Sequence[tuple[str, Path]],
    outdir: str | Path,
    tasks: Sequence[str] = ("lung", "infection"),
    progress: bool = True,
) -> pd.DataFrame:
    """Segment every case into ``outdir/<case>/`` and return the summary table (one row per case).

    Failures of one case (any :class:`LungsegError`) are logged and recorded in the ``status`` /
    ``error`` columns; nothing is left in that case's folder.
    """
    from lungseg.inference.readers import read_input
    from lungseg.inference.report import make_report, write_outputs

    outdir = check_batch_output_dir(outdir)
    rows = []
    for case, file in tqdm(list(cases), desc="cases", unit="case", disable=not progress):
        row = _row(case, file)
        start = time.perf_counter()
        try:
            volume, kind = read_input(file)
            seg = segmenter.segment(volume, kind, tasks=tasks, progress=False)
            report = make_report(seg, volume.spacing)
            write_outputs(volume, seg, report, outdir / case)
        except LungsegError as exc:
            logger.error("case %s failed: %s", case, exc)
            row.update(status="error", error=str(exc))
        else:
            row.update(status="ok", error="", output_dir=str(outdir / case), no_lungs_found=report["no_lungs_found"])
            for side in ("left", "right", "total"):
                row[f"lung_ml_{side}"] = report["lung_volume_ml"][side]
                if report["infection_volume_ml"] is not None:
                    row[f"infection_ml_{side}"] = report["infection_volume_ml"][side]
                    row[f"infection_percent_{side}"] = report["infection_percent"][side]
                    row[f"severity_{side}"] = report["severity"][side]
        row["seconds"] = round(time.perf_counter() - start, 3)
        rows.append(row)
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


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
