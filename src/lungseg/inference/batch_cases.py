"""Find the cases of a batch: a folder of NIfTI files or a dataset ``metadata.csv``.

Case ids follow :mod:`lungseg.layout` (the dataset's mask names); the ground-truth mask paths of a
``metadata.csv`` travel with each case (see :mod:`lungseg.inference.batch`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from lungseg.errors import InputError, LungsegError, some
from lungseg.layout import case_id_from_ct_name, case_id_from_path, check_case_id, is_nifti, resolve_relative

logger = logging.getLogger(__name__)

#: Ground-truth columns of ``metadata.csv`` used for evaluation, and the task each one scores.
GROUND_TRUTH_COLUMNS = {"lung_mask": "lung", "infection_mask": "infection"}


class BatchCase(NamedTuple):
    """One case of a batch: its id (the output folder name), its CT file and its ground truth, if any.

    Attributes:
        case: case id, unique within the batch.
        file: the CT file.
        lung_mask: the ground-truth lung mask file, or None.
        infection_mask: the ground-truth infection mask file, or None. Both are read by the rule of
            :mod:`lungseg.inference.ground_truth`.
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


def is_batch_input(path: str | Path) -> bool:
    """True for a ``.csv`` file, or a folder holding ``metadata.csv`` or NIfTI files."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() == ".csv"
    if path.is_dir():
        return (path / "metadata.csv").is_file() or any(
            p.is_file() and is_nifti(p.name) for p in path.iterdir()
        )
    return False


def find_cases(path: str | Path, max_cases: int | None = None) -> list[BatchCase]:
    """The cases of a batch input.

    Args:
        path: a ``metadata.csv`` (column ``ct_scan``, paths relative to the csv's folder, Kaggle's
            ``../input/<slug>/`` prefix accepted; the case id is taken from a ``case`` column, else from
            the ``lung_mask`` file name, else from the CT file name without ``_org``; the optional
            ``lung_mask`` / ``infection_mask`` columns give the ground truth), or a folder of
            ``.nii``/``.nii.gz`` files (case id as the masks name it, see
            :func:`lungseg.layout.case_id_from_ct_name`; no ground truth), or a folder holding a
            ``metadata.csv``.
        max_cases: refuse a batch of more cases than this (``inference.limits.max_batch_cases``),
            counted before any row is parsed.

    Returns:
        :class:`BatchCase` tuples, in input order (a folder: sorted by file name). A repeated case id
        gets the first ``_2``, ``_3``... suffix no other case uses (:func:`unique_case_ids`).

    Raises:
        InputError: no cases, no ``ct_scan`` column, unreadable csv, a bad ``ct_scan`` path (one that
            escapes the csv's folder, also through a symlink), or an unsafe case id
            (:func:`lungseg.layout.check_case_id`: case ids name output folders, so they are never paths).
    """
    path = Path(path)
    if path.is_dir() and (path / "metadata.csv").is_file():
        path = path / "metadata.csv"
    if path.is_file() and path.suffix.lower() == ".csv":
        cases = _cases_from_csv(path, max_cases)
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and is_nifti(p.name))
        _check_count(len(files), max_cases, f"folder {str(path)!r}", "NIfTI files")
        cases = [BatchCase(_safe_id(case_id_from_ct_name(p.name), f"file {str(p)!r}"), p) for p in files]
    else:
        raise InputError(f"file {str(path)!r}: not a folder of NIfTI files nor a metadata.csv")
    if not cases:
        raise InputError(f"file {str(path)!r}: no cases found (no NIfTI files)")
    return unique_case_ids(cases)


def unique_case_ids(cases: list[BatchCase]) -> list[BatchCase]:
    """Case ids made unique against the whole set (they name the output folders): the first of a
    repeated id keeps it, the next get the first free ``_2``, ``_3``... that no other case uses
    (ids ``a, a, a_2`` become ``a, a_3, a_2``). Each renaming is logged."""
    taken = {item.case for item in cases}
    first: set[str] = set()
    unique = []
    for item in cases:
        if item.case not in first:
            first.add(item.case)
            unique.append(item)
            continue
        n = 2
        while f"{item.case}_{n}" in taken:
            n += 1
        new = f"{item.case}_{n}"
        taken.add(new)
        logger.warning("case id %r is repeated: %s is written as case %r", item.case, item.file, new)
        unique.append(item._replace(case=new))
    return unique


def _safe_id(case: str, where: str) -> str:
    try:
        return check_case_id(case, where)
    except LungsegError as exc:
        raise InputError(str(exc)) from exc


def inside(file: Path, root: Path, where: str) -> Path:
    """``file`` if it stays inside ``root`` once symlinks are followed; else an InputError naming both."""
    real, real_root = Path(file).resolve(), Path(root).resolve()
    if real != real_root and real_root not in real.parents:
        raise InputError(f"{where}: {str(file)!r} leads outside {str(root)!r} (to {str(real)!r}, through a symlink)")
    return Path(file)


def _cell(row: pd.Series, column: str) -> str | None:
    """A non-empty string cell of ``row`` (None for a missing column, NaN or blank)."""
    value = row.get(column)
    return value.strip() if isinstance(value, str) and value.strip() else None


def _check_count(n: int, max_cases: int | None, where: str, what: str) -> None:
    if max_cases is not None and n > max_cases:
        raise InputError(f"{where}: {n:,} {what}, over the limit of {max_cases:,} cases a batch "
                         "(inference.limits.max_batch_cases); split the batch, or pick cases with --cases")


def _cases_from_csv(csv: Path, max_cases: int | None = None) -> list[BatchCase]:
    try:
        table = pd.read_csv(csv, dtype=str)
    except Exception as exc:
        raise InputError(f"file {str(csv)!r}: unreadable csv ({type(exc).__name__}: {exc})") from exc
    if "ct_scan" not in table.columns:
        raise InputError(f"file {str(csv)!r}: no 'ct_scan' column (columns: {', '.join(table.columns)})")
    if table.empty:
        raise InputError(f"file {str(csv)!r}: a header and no rows: no cases to segment")
    _check_count(len(table), max_cases, f"file {str(csv)!r}", "rows")
    cases = []
    for i, row in table.iterrows():
        raw = str(row["ct_scan"])
        where = f"file {str(csv)!r}, row {i + 2}"
        try:
            file = inside(csv.parent / resolve_relative(raw), csv.parent, where)
        except LungsegError as exc:
            raise InputError(f"{where}: {exc}" if not str(exc).startswith(where) else str(exc)) from exc
        if _cell(row, "case"):
            case = _safe_id(_cell(row, "case"), f"{where}, column 'case'")
        elif _cell(row, "lung_mask"):
            case = _safe_id(case_id_from_path(_cell(row, "lung_mask")), f"{where}, column 'lung_mask'")
        else:
            case = _safe_id(case_id_from_ct_name(raw), f"{where}, column 'ct_scan'")
        masks: dict[str, Path | None] = {}
        problems = []
        for column in GROUND_TRUTH_COLUMNS:
            text = _cell(row, column)
            masks[column] = None
            if text is None:
                continue
            try:
                masks[column] = inside(csv.parent / resolve_relative(text, case=case), csv.parent, column)
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
        raise InputError(f"cases not found in the batch input: {some(missing)} (known cases: {some(known)})")
    keep = set(wanted)
    selected = [item for item in cases if item[0] in keep]
    logger.info("batch restricted to %d of %d cases", len(selected), len(known))
    return selected


def missing_inputs(cases: Sequence[tuple]) -> dict[str, str]:
    """``{case: problem}`` for the cases whose input file or folder does not exist (a stat each, no read),
    so that a batch can say so in one line before any model is loaded."""
    return {str(item[0]): f"file {str(item[1])!r}: no such file or folder"
            for item in cases if not Path(item[1]).exists()}
