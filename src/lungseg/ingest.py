"""The raw dataset's validation: ``metadata.csv``, every case's files, grids and label sets, and the case table.

The library behind the ingestion pipeline (:mod:`lungseg.pipelines.ingestion`, which only wires
:func:`ingest_dataset`). A bad input raises a :class:`~lungseg.errors.DataValidationError` naming the case
and the file; with ``skip_invalid_cases`` the case is listed in the skipped-cases report instead.

* :func:`check_metadata`: the columns of ``metadata.csv``, one safe case id and four paths relative to the
  dataset root per row.
* :func:`read_case`: one case's CT (finite values) and masks, read onto the CT's canonical grid by
  :func:`lungseg.volume.load_mask` (the ground truth's reader too): each mask must share its CT's shape and
  affine within ``ingestion.geometry_tolerance`` and hold only its column's labels (:data:`LABEL_SETS`).
* :func:`case_facts`: the row of the case table (intensity kind, orientation, spacing, lung and infection
  voxels).

Memory: each case is loaded, checked and released before the next one; the canonical copies are
written lazily (``PartitionedDataset`` calls the loaders one at a time), so one case is held at once.
Under :class:`lungseg.runner.DaskRunner` the cases are checked, and their copies written, one Dask task per
case (:func:`lungseg.parallel.case_map`, :class:`lungseg.datasets.CasePartitionedDataset`); the case
table keeps the order of ``metadata.csv`` either way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lungseg.config import check_section
from lungseg.errors import ConfigError, DataValidationError
from lungseg.imaging import detect_source_kind, looks_unwindowed
from lungseg.layout import REQUIRED_COLUMNS, case_id_from_path, check_case_id, resolve_relative
from lungseg.parallel import bound, case_map
from lungseg.volume import load_canonical, load_mask

logger = logging.getLogger(__name__)

Loader = Callable[[], nib.spatialimages.SpatialImage]

LABEL_SETS = {
    "lung_mask": (0, 1, 2),
    "infection_mask": (0, 1),
    "lung_and_infection_mask": (0, 1, 2, 3),
}
SKIPPED_COLUMNS = ["case_id", "file", "problem"]
#: ``ingestion`` parameters (conf/base/parameters_ingestion.yml).
INGESTION_KEYS = ("skip_invalid_cases", "raw_root", "geometry_tolerance")
TOLERANCE_KEYS = ("spacing_rel", "direction", "origin_mm")
#: The grid check without ``geometry_tolerance``: the stored shape and the orientation only.
NO_TOLERANCE = {key: float("inf") for key in TOLERANCE_KEYS}


def check_metadata(
    metadata: pd.DataFrame, skipped: list[dict[str, str]] | None = None
) -> pd.DataFrame:
    """Check the columns of ``metadata.csv`` and resolve every path relative to the dataset root.

    Returns one row per case: ``case_id`` and the four resolved relative paths. When ``skipped`` is
    a list, a row with a bad path is recorded there and left out instead of stopping the run.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in metadata.columns]
    if missing:
        raise DataValidationError(
            f"missing required column(s) {missing}; found {list(metadata.columns)}",
            file="metadata.csv",
        )
    if metadata.empty:
        raise DataValidationError("has no rows", file="metadata.csv")
    rows = []
    for i, rec in enumerate(metadata[list(REQUIRED_COLUMNS)].itertuples(index=False)):
        rec = rec._asdict()
        case = case_id_from_path(str(rec["lung_mask"]).replace("\\", "/")) if pd.notna(rec["lung_mask"]) else f"row {i + 1}"
        row = {"case_id": case}
        try:
            if pd.notna(rec["lung_mask"]):  # the case id names files and folders downstream: never a path
                check_case_id(case, f"metadata.csv row {i + 2}, column 'lung_mask' ({rec['lung_mask']!r})")
            for col in REQUIRED_COLUMNS:
                value = rec[col]
                if col == "lung_and_infection_mask" and (pd.isna(value) or str(value).strip() == ""):
                    row[col] = ""  # optional: rebuilt from the lung and infection masks
                    continue
                row[col] = resolve_relative(value, case=case)
        except DataValidationError as exc:
            if skipped is None:
                raise
            logger.warning("Skipping %s", exc)
            skipped.append({"case_id": case, "file": exc.file or "", "problem": exc.problem})
            continue
        rows.append(row)
    table = pd.DataFrame(rows, columns=["case_id", *REQUIRED_COLUMNS])
    dupes = table["case_id"][table["case_id"].duplicated()].unique().tolist()
    if dupes:
        raise DataValidationError(f"duplicate case id(s) {dupes}", file="metadata.csv")
    return table


def _loader(volumes: dict[str, Loader], rel_path: str, case: str) -> Loader:
    """The lazy loader of one file; its errors name the case and the file relative to the root."""
    if rel_path not in volumes:
        raise DataValidationError("file not found under the dataset root", case=case, file=rel_path)

    def load():
        try:
            return volumes[rel_path]()
        except DataValidationError as exc:
            raise DataValidationError(exc.problem, case=case, file=rel_path) from exc
        except Exception as exc:  # kedro wraps dataset errors in DatasetError
            cause = exc.__cause__
            problem = cause.problem if isinstance(cause, DataValidationError) else f"cannot load: {exc}"
            raise DataValidationError(problem, case=case, file=rel_path) from exc

    return load


def read_case(case: str, paths: dict[str, str], volumes: dict[str, Loader], tolerance: dict | None = None) -> dict[str, Any]:
    """Load one case and validate it: ``{"volume": the CT's canonical Volume, "lung": ..., "infection": ...}``
    (uint8 canonical masks). ``tolerance``: ``ingestion.geometry_tolerance`` (None: the masks' stored shape
    and orientation are compared only)."""
    ct_file = paths["ct_scan"]
    ct_img = _loader(volumes, ct_file, case)()
    ct_vol = load_canonical(ct_img, case=case, file=ct_file)
    ct = ct_vol.array
    if np.issubdtype(ct.dtype, np.floating) and not np.isfinite(ct).all():
        n_bad = int(np.size(ct) - np.isfinite(ct).sum())
        raise DataValidationError(f"CT holds {n_bad} NaN or infinite voxel(s)", case=case, file=ct_file)
    if tolerance is None:  # a caller without geometry_tolerance: shape and orientation only
        tolerance = NO_TOLERANCE

    def mask(kind: str) -> np.ndarray:
        file = paths[kind]
        return load_mask(_loader(volumes, file, case)(), ct_vol, what=kind, case=case, file=file,
                         tolerance=tolerance, labels=LABEL_SETS[kind])

    lung = mask("lung_mask")
    infection = mask("infection_mask")
    if paths.get("lung_and_infection_mask"):
        combined = mask("lung_and_infection_mask")
        mismatch = int(np.count_nonzero((combined == 3) != (infection > 0)))
        if mismatch:
            logger.warning("Case %s: combined mask and infection mask disagree on %d voxel(s)", case, mismatch)
        del combined
    return {"volume": ct_vol, "lung": lung, "infection": infection}


def case_facts(case: str, paths: dict[str, str], data: dict[str, Any]) -> dict[str, Any]:
    """The case table's row of a case read by :func:`read_case` (warns of an empty lung mask and of 0-255
    data that does not look lung-windowed)."""
    vol = data["volume"]
    ct, lung, infection = vol.array, data["lung"], data["infection"]
    kind = detect_source_kind(ct)
    lung_any = lung > 0
    lung_slices = int(np.count_nonzero(lung_any.any(axis=(1, 2))))
    if lung_slices == 0:
        logger.warning("Case %s: the lung mask is empty on every slice", case)
    if kind == "uint8" and looks_unwindowed(ct.astype(np.uint8, copy=False)):
        logger.warning("Case %s: 0-255 data that does not look lung-windowed; check its intensities", case)
    segmented = np.count_nonzero(lung_any | (infection > 0))
    inf_vox = int(np.count_nonzero(infection))
    return {
        "case_id": case,
        **{f"{k}_path": v for k, v in paths.items()},
        "source_kind": kind,
        "dtype": str(ct.dtype),
        "orientation": "".join(nib.aff2axcodes(vol.affine)),
        "shape_z": ct.shape[0],
        "shape_y": ct.shape[1],
        "shape_x": ct.shape[2],
        "n_slices": ct.shape[0],
        "spacing_z": vol.spacing[0],
        "spacing_y": vol.spacing[1],
        "spacing_x": vol.spacing[2],
        "ct_min": float(ct.min()),
        "ct_max": float(ct.max()),
        "lung_slices": lung_slices,
        "lung_voxels": int(np.count_nonzero(lung_any)),
        "infection_voxels": inf_vox,
        "infection_outside_lung_voxels": int(np.count_nonzero((infection > 0) & ~lung_any)),
        "infection_fraction": float(inf_vox / segmented) if segmented else 0.0,
    }


def canonical_record(data: dict[str, Any]) -> dict[str, np.ndarray]:
    """The canonical copy of a case read by :func:`read_case`, as the arrays of one ``.npz``."""
    vol = data["volume"]
    return {
        "ct": vol.array,
        "lung": data["lung"],
        "infection": data["infection"],
        "spacing": np.asarray(vol.spacing, dtype=np.float64),
        "affine": vol.affine,
        "shape": np.asarray(vol.shape, dtype=np.int64),
    }


def _tolerance(value) -> dict | None:
    if value is None:
        return None
    t = check_section(value, "ingestion.geometry_tolerance", TOLERANCE_KEYS)
    for key, v in t.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ConfigError(f"parameter 'ingestion.geometry_tolerance.{key}' must be a non-negative number, got {v!r}")
    return {k: float(v) for k, v in t.items()}


def _check_inside_root(raw_root, paths: dict[str, str], case: str) -> None:
    """Every file of a case stays inside the dataset root once symlinks are followed."""
    if not raw_root:
        return
    root = Path(raw_root).resolve()
    for rel in paths.values():
        if not rel:
            continue
        real = (Path(raw_root) / rel).resolve()
        if root not in real.parents:
            raise DataValidationError(
                f"a symlink under the dataset root {str(raw_root)!r} leads outside it (to {str(real)!r}); refused",
                case=case, file=rel,
            )


def volumes_of(volumes: dict[str, Loader], paths: dict[str, str]) -> dict[str, Loader]:
    """The loaders of one case's files (what a task on a Dask worker needs, not the whole dataset's)."""
    return {rel: volumes[rel] for rel in paths.values() if rel and rel in volumes}


def _ingest_one(job: tuple[str, dict[str, str], dict[str, Loader]], raw_root, tolerance,
                skip: bool) -> tuple[dict[str, Any] | None, DataValidationError | None]:
    """Check one case: ``(its case-table row, None)``, or ``(None, the problem)`` when ``skip`` (else it raises).
    One task per case under :class:`lungseg.runner.DaskRunner` (:func:`lungseg.parallel.case_map`)."""
    case, paths, volumes = job
    try:
        _check_inside_root(raw_root, paths, case)
        return case_facts(case, paths, read_case(case, paths, volumes, tolerance)), None
    except DataValidationError as exc:
        if not skip:
            raise
        return None, exc


def _canonical_case(case: str, paths: dict[str, str], volumes: dict[str, Loader], tolerance) -> dict[str, np.ndarray]:
    return canonical_record(read_case(case, paths, volumes, tolerance))


def ingest_dataset(
    metadata: pd.DataFrame, volumes: dict[str, Loader], params: dict[str, Any]
) -> tuple[pd.DataFrame, dict[str, Callable[[], dict[str, np.ndarray]]], pd.DataFrame]:
    """Validate every case of ``metadata.csv`` and prepare its canonical copy.

    Args:
        metadata: ``metadata.csv`` as loaded by ``pandas.CSVDataset``.
        volumes: the dataset root as a ``PartitionedDataset`` of lazy NIfTI loaders, keyed by
            path relative to the root.
        params: ``ingestion`` parameters: ``skip_invalid_cases`` carries on past bad cases and lists
            them in the skipped-cases report; ``raw_root`` (the dataset root: no file may be a symlink
            leading outside it); ``geometry_tolerance`` (``spacing_rel``, ``direction``, ``origin_mm``:
            every mask must share its CT's shape and affine). A caller may leave them out (tests of
            other layers): then nothing is skipped, symlinks are not checked and only the shape and
            orientation of the masks are compared.

    Returns:
        The case table, lazy canonical cases (one ``.npz`` each) and the skipped-cases report.
    """
    p = check_section(params, "ingestion", (), INGESTION_KEYS)
    skip = bool(p.get("skip_invalid_cases", False))
    tolerance = _tolerance(p.get("geometry_tolerance"))
    skipped: list[dict[str, str]] = []
    table = check_metadata(metadata, skipped if skip else None)
    facts, valid = [], []
    rows = table.to_dict("records")
    jobs = [(row.pop("case_id"), row, volumes_of(volumes, row)) for row in rows]
    # a case's facts are a few numbers: every case in flight at once, so that a long one holds up no worker
    checked = case_map(_ingest_one, jobs, p.get("raw_root"), tolerance, skip, ahead=len(jobs))
    for (case, rec, _), (fact, problem) in tqdm(zip(jobs, checked), total=len(jobs), desc="ingest cases", unit="case"):
        if problem is not None:
            logger.warning("Skipping %s", problem)
            skipped.append({"case_id": case, "file": problem.file or "", "problem": problem.problem})
            continue
        facts.append(fact)
        valid.append((case, rec))
    if not facts:
        raise DataValidationError(
            f"no valid case left out of {len(table)} (see the skipped-cases report)", file="metadata.csv"
        )
    case_table = pd.DataFrame(facts)
    logger.info(
        "Ingested %d case(s), %d slices (%s); skipped %d",
        len(case_table), int(case_table["n_slices"].sum()),
        ", ".join(f"{k}: {v}" for k, v in case_table["source_kind"].value_counts().items()), len(skipped),
    )

    canonical = {case: bound(_canonical_case, case, paths, volumes_of(volumes, paths), tolerance)
                 for case, paths in valid}
    return case_table, canonical, pd.DataFrame(skipped, columns=SKIPPED_COLUMNS)
