"""lungseg's conventions, in one place: tasks, variants, file suffixes, folders and case ids.

Every module that needs one of these imports it from here instead of spelling it again.

* **Tasks** are ``lung`` and ``infection``; a **variant** is ``<task>_<architecture>``
  (``lung_unet``, ``lung_deeplabv3plus``, ``infection_unet``, ``infection_deeplabv3plus``).
* **Suffixes**: NIfTI (``.nii.gz``, ``.nii``), 2D images (``.png``, ``.jpg``, ``.jpeg``), DICOM
  (``.dcm``, ``.dicom``, ``.ima``) and zipped DICOM series (``.zip``). lungseg writes ``.nii.gz``.
* **Models** live under :data:`MODELS_DIR` (``data/06_models/<variant>/...``); a cross-validation's
  fold models under ``<variant>_cv/`` (:func:`cv_name`). A model given as a URI (``models:/...``,
  ``runs:/...``) is told from a path by :func:`is_model_uri`.
* **Case ids** follow the dataset's mask file names: ``lung_mask/coronacases_001.nii`` is case
  ``coronacases_001``; its CT is ``ct_scans/coronacases_001_org.nii`` (Kaggle's copy names it
  ``coronacases_org_001.nii``). Paths in ``metadata.csv`` are relative to the dataset root; Kaggle's
  ``../input/<dataset-slug>/`` prefix is accepted (:func:`resolve_relative`).

This module imports nothing from lungseg but :mod:`lungseg.errors`, so every layer may use it.
"""

from __future__ import annotations

import os
import posixpath
import re
import tempfile
from pathlib import Path

from lungseg.errors import ConfigError, DataValidationError

# ------------------------------------------------------------------------------ tasks and variants

TASKS: tuple[str, ...] = ("lung", "infection")
#: Model architectures (the builders in :mod:`lungseg.models.factory` carry the same names).
ARCHITECTURES: tuple[str, ...] = ("unet", "deeplabv3plus")
#: Every variant, ``<task>_<architecture>``, task-major: lung_unet, lung_deeplabv3plus, infection_...
VARIANTS: tuple[str, ...] = tuple(f"{task}_{arch}" for task in TASKS for arch in ARCHITECTURES)


def check_task(task: str) -> str:
    """Return ``task`` if it is one of :data:`TASKS`; else raise :class:`ConfigError` naming it."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return task


def variant_name(task: str, architecture: str) -> str:
    """``lung`` + ``unet`` -> ``lung_unet``."""
    return f"{check_task(task)}_{architecture}"


def split_variant(name: str) -> tuple[str, str] | None:
    """``(task, architecture)`` of any ``<task>_<architecture>`` name, or None when ``name`` is not one.

    Lenient on the architecture (a models folder may hold a variant trained with another one);
    :func:`variant_task` and :func:`variant_architecture` accept only :data:`VARIANTS`.
    """
    task, _, architecture = str(name).partition("_")
    return (task, architecture) if task in TASKS and architecture else None


def _check_variant(variant: str) -> tuple[str, str]:
    if variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    return split_variant(variant)  # type: ignore[return-value]


def variant_task(variant: str) -> str:
    """The task of a variant: ``infection_unet`` -> ``infection``. Raises ConfigError for an unknown one."""
    return _check_variant(variant)[0]


def variant_architecture(variant: str) -> str:
    """The architecture of a variant: ``lung_deeplabv3plus`` -> ``deeplabv3plus``."""
    return _check_variant(variant)[1]


# ------------------------------------------------------------------------------ cross-validations

#: A cross-validation of a variant is named ``<variant>_cv``: its pipeline, namespace, tag, MLflow run
#: and folder of fold models (``data/06_models/infection_unet_cv``).
CV_SUFFIX = "_cv"


def cv_name(variant: str) -> str:
    """The name of ``variant``'s cross-validation: ``infection_unet`` -> ``infection_unet_cv``
    (a glob pattern such as ``infection_*`` gives ``infection_*_cv``)."""
    return f"{variant}{CV_SUFFIX}"


def is_cv_name(name: str | None) -> bool:
    """True for the name of a cross-validation (``infection_unet_cv``)."""
    return str(name or "").endswith(CV_SUFFIX)


def strip_cv(name: str) -> str:
    """The variant of a cross-validation's name, any other name unchanged: ``lung_unet_cv`` -> ``lung_unet``."""
    return name[: -len(CV_SUFFIX)] if is_cv_name(name) else name


# ---------------------------------------------------------------------------------------- model URIs

#: The schemes of a model given as a URI rather than a path: MLflow's own (``runs:/<id>/<path>``,
#: ``models:/<name>/<version>``, ``models:/<name>@<alias>``, ``mlflow-artifacts:/...``), ``file:/`` and
#: the artifact stores MLflow reads (``s3``, ``gs``, ``wasbs``, ``hdfs``, ``dbfs``).
MODEL_URI_SCHEMES: tuple[str, ...] = ("runs", "models", "mlflow-artifacts", "file", "s3", "gs", "wasbs", "hdfs", "dbfs")
_MODEL_URI = re.compile(rf"^({'|'.join(re.escape(s) for s in MODEL_URI_SCHEMES)}):/", re.IGNORECASE)


def is_model_uri(spec: object) -> bool:
    """True when a model is given as a URI (``models:/lungseg-combined/3``, ``runs:/<id>/model``,
    ``s3://bucket/model``...; any case) that MLflow loads, False for a path (``C:/models`` included)."""
    return spec is not None and bool(_MODEL_URI.match(str(spec)))


# ----------------------------------------------------------------------------------------- suffixes

#: NIfTI suffixes, longest first (so that stripping ``.nii.gz`` does not leave ``.nii``).
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
#: The suffix lungseg writes its NIfTI files with.
NIFTI_SUFFIX = ".nii.gz"
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom", ".ima")
#: A zipped DICOM series.
ZIP_SUFFIX = ".zip"


def file_suffix(name: str) -> str:
    """The lower-case suffix of a file name, keeping both parts of ``.nii.gz``."""
    lower = posixpath.basename(str(name).replace("\\", "/")).lower()
    if lower.endswith(".nii.gz"):
        return ".nii.gz"
    stem, dot, ext = lower.rpartition(".")
    return f".{ext}" if dot and stem and ext else ""


def is_nifti(name: str) -> bool:
    """True for a ``.nii`` or ``.nii.gz`` file name (any case)."""
    return str(name).lower().endswith(NIFTI_SUFFIXES)


def strip_nifti_suffix(name: str) -> str:
    """A file's base name without ``.nii.gz`` / ``.nii`` (any case), or without its last suffix."""
    base = posixpath.basename(str(name).replace("\\", "/"))
    for suffix in NIFTI_SUFFIXES:
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    stem, dot, _ = base.rpartition(".")
    return stem if dot and stem else base


# ------------------------------------------------------------------------------------------ folders

#: Where the training pipeline saves models (``<variant>/model.keras/<version>/model.keras``).
MODELS_DIR = "data/06_models"

# ------------------------------------------------------------------------------ synthetic phantoms

#: The ``descrip`` field the synthetic generator writes into the header of every NIfTI file it makes
#: (:mod:`lungseg.synthetic.nifti`): how inference tells the generator's phantoms from other CT
#: (:mod:`lungseg.inference.provenance`). Files generated before it existed carry no marker.
SYNTHETIC_PHANTOM_DESCRIP = "lungseg synthetic phantom"
#: A training dataset whose name starts with this is the synthetic generator's (``synthetic_demo``).
SYNTHETIC_DATASET_PREFIX = "synthetic"
#: The environment variable the Kedro hooks set during a run: the run's Kedro environment, which
#: training records in ``model_config.json`` (``environment``).
RUN_ENV_VARIABLE = "LUNGSEG_KEDRO_ENV"

# ------------------------------------------------------------------------------- dataset and cases

#: The columns of the dataset's ``metadata.csv``, in its order (ingestion requires all four).
METADATA_COLUMNS: tuple[str, ...] = ("ct_scan", "lung_mask", "infection_mask", "lung_and_infection_mask")
REQUIRED_COLUMNS = METADATA_COLUMNS
#: The prefix of every path in Kaggle's ``metadata.csv``.
KAGGLE_PREFIX = "../input/covid19-ct-scans"
#: Kaggle's copy writes every path as ../input/<dataset-slug>/<folder>/<file>.
_KAGGLE_PREFIX = re.compile(r"^(\.\./)*input/[^/]+/")
#: A CT file is named after its case with this tag: ``coronacases_001_org.nii``.
CT_TAG = "_org"
_KAGGLE_RADIOPAEDIA = re.compile(r"^radiopaedia_org_covid-19-pneumonia-(.+?)(?:-dcm)?$")
_KAGGLE_ORG = re.compile(r"^([a-z]+)_org_(.+)$")


def resolve_relative(path: str, *, case: str | None = None) -> str:
    """Turn a metadata path into a POSIX path relative to the dataset root.

    Accepts plain relative paths (``ct_scans/x.nii.gz``), Kaggle's form
    (``../input/covid19-ct-scans/ct_scans/x.nii``) and Windows separators.

    Raises:
        DataValidationError: an empty path, an absolute path or one that escapes the root.
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
    return strip_nifti_suffix(path)


def case_id_from_ct_name(name: str) -> str:
    """The case id of a CT file name, as the dataset's mask files name it.

    ``coronacases_001_org.nii.gz`` -> ``coronacases_001``; Kaggle's names too:
    ``coronacases_org_001.nii`` -> ``coronacases_001`` and
    ``radiopaedia_org_covid-19-pneumonia-4_85506_1-dcm.nii`` -> ``radiopaedia_4_85506_1``.
    Other names keep their stem.
    """
    stem = strip_nifti_suffix(name)
    if stem.endswith(CT_TAG) and len(stem) > len(CT_TAG):
        return stem[: -len(CT_TAG)]
    match = _KAGGLE_RADIOPAEDIA.match(stem)
    if match:
        return f"radiopaedia_{match.group(1)}"
    match = _KAGGLE_ORG.match(stem)
    return f"{match.group(1)}_{match.group(2)}" if match else stem


#: A case id names an output folder: letters, digits, ``.``, ``_`` and ``-`` only, starting with a
#: letter, a digit or "_" (so never ``.``, ``..`` or a hidden name), at most 128 characters.
CASE_ID_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


def check_case_id(case: object, where: str = "case id") -> str:
    """Return ``case`` if it is a safe case id (:data:`CASE_ID_PATTERN`, no ``..``); else raise.

    Case ids come from data (a ``case`` column, a mask or CT file name) and name folders, so they are
    never allowed to be paths: no separator, no ``..``, not empty, nothing outside ``[A-Za-z0-9._-]``.

    Raises:
        DataValidationError: naming the id and ``where`` it came from.
    """
    text = "" if case is None else str(case)
    if not CASE_ID_PATTERN.match(text) or ".." in text:
        raise DataValidationError(
            f"{where}: unsafe case id {text!r}; a case id is 1-128 letters, digits, '.', '_' or '-', starting "
            "with a letter, digit or '_', without '..' or path separators",
            case=None,
        )
    return text


# ------------------------------------------------------------------------------ temporary outputs


def umask() -> int:
    """The process's umask (read from /proc on Linux; elsewhere set and put back at once)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def output_tempdir(prefix: str, dir: str | Path) -> Path:
    """``tempfile.mkdtemp`` for a folder that becomes an output by a rename: it gets an ordinary folder's
    permissions (0777 less the umask), not mkdtemp's private 0700."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=dir))
    os.chmod(path, 0o777 & ~umask())
    return path


def output_tempfile(prefix: str, dir: str | Path, suffix: str = "") -> tuple[int, str]:
    """``tempfile.mkstemp`` for a file that becomes an output by a rename: 0666 less the umask, not 0600."""
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=dir)
    os.fchmod(fd, 0o666 & ~umask())
    return fd, path
