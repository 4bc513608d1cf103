"""Resolve the paths written in ``metadata.csv`` against the dataset root."""

from __future__ import annotations

import posixpath
import re

from lungseg.errors import DataValidationError

REQUIRED_COLUMNS = ("ct_scan", "lung_mask", "infection_mask", "lung_and_infection_mask")
# Kaggle's copy writes every path as ../input/<dataset-slug>/<folder>/<file>.
_KAGGLE_PREFIX = re.compile(r"^(\.\./)*input/[^/]+/")
NIFTI_SUFFIXES = (".nii.gz", ".nii")


def resolve_relative(path: str, *, case: str | None = None) -> str:
    """Turn a metadata path into a POSIX path relative to the dataset root.

    Accepts plain relative paths (``ct_scans/x.nii.gz``), Kaggle's form
    (``../input/covid19-ct-scans/ct_scans/x.nii``) and Windows separators. Raises
    :class:`DataValidationError` for an absolute path or one that escapes the root.
    """
    raw = str(path).strip().replace("\\", "/")
    if not raw or raw.lower() == "nan":
        raise DataValidationError("empty path in metadata.csv", case=case)
    stripped = _KAGGLE_PREFIX.sub("", raw)
    if stripped.startswith("/") or re.match(r"^[A-Za-z]:/", stripped):
        raise DataValidationError(
            f"absolute path {raw!r} in metadata.csv; paths must be relative to the dataset root", case=case
        )
    norm = posixpath.normpath(stripped)
    if norm == ".." or norm.startswith("../") or norm == ".":
        raise DataValidationError(f"path {raw!r} escapes the dataset root", case=case, file=raw)
    return norm


def case_id_from_path(path: str) -> str:
    """Case id from a mask file name: ``lung_mask/coronacases_001.nii`` -> ``coronacases_001``."""
    name = posixpath.basename(path)
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name.rsplit(".", 1)[0]
