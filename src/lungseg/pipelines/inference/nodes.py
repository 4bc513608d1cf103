"""Node of the inference pipeline (a thin wrapper around :mod:`lungseg.inference`)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from lungseg.config import check_section
from lungseg.errors import ConfigError

logger = logging.getLogger(__name__)

#: Keys of the ``inference`` parameters (conf/base/parameters_inference.yml); all are required.
INFERENCE_KEYS = (
    "input", "output_dir", "lung_model", "infection_model", "models_dir", "batch_size", "tasks", "progress", "cases",
    "lung_min_ratio", "lung_fill_holes", "flip_tta", "limits", "guard", "precision", "infection_margin_mm",
    "infection_min_lesion_mm3",
)


def _case_ids(value) -> list[str] | None:
    """``inference.cases``: None (every case), a list of case ids, or a comma-separated string."""
    if value is None:
        return None
    if isinstance(value, str):
        ids = [c.strip() for c in value.split(",") if c.strip()]
    elif isinstance(value, (list, tuple)):
        ids = [str(c).strip() for c in value if str(c).strip()]
    else:
        raise ConfigError(f"parameters 'inference.cases': expected null or a list of case ids, got {value!r}")
    if not ids:
        raise ConfigError("parameters 'inference.cases': the list is empty; use null to segment every case")
    return ids


def run_inference(params: dict) -> pd.DataFrame:
    """Segment every case of ``params['input']`` (a folder of NIfTI files or a metadata.csv).

    Each case's masks, overlays and report.json go to ``<output_dir>/<case>/`` (written atomically by
    :func:`lungseg.inference.report.write_outputs`, outside the catalog: one folder of files per case);
    the returned one-row-per-case summary is saved by the catalog (``inference_summary``).

    Args:
        params: ``input``, ``output_dir``, ``lung_model``, ``infection_model`` (None = newest trained
            model in ``models_dir``; a ``.keras`` path or an MLflow URI otherwise), ``models_dir``,
            ``batch_size``, ``tasks``, ``progress``, ``cases`` (None = every case; else a list of
            case ids to segment, e.g. the held-out patients), ``limits`` (resource limits checked
            before reading each case), ``guard`` (the plausibility guard's bounds) and ``precision``
            (float32 | mixed_bfloat16 | auto, as ``lungseg predict --precision``).

    Returns:
        The summary (see :mod:`lungseg.inference.batch`), with Dice/IoU columns for the cases whose
        ``metadata.csv`` row gives ground-truth masks; their means are logged by ``run_batch``.

    Raises:
        ConfigError: no ``input`` given, a missing or unknown key, a bad ``cases`` value.
        InputError: ``cases`` names a case that is not in the input.
    """
    p = check_section(params, "inference", INFERENCE_KEYS)
    if not p["input"]:
        raise ConfigError("parameters 'inference.input': give a folder of NIfTI files or a metadata.csv")
    tasks = tuple(p["tasks"])

    from lungseg.inference.batch import evaluation_failures, find_cases, run_batch, select_cases, some
    from lungseg.inference.models import load_model_spec
    from lungseg.inference.segment import Segmenter
    from lungseg.inference.settings import InferenceSettings
    from lungseg.limits import Limits
    from lungseg.models.precision import check_precision, loaded_in, resolve_and_log

    limits = Limits.from_params(p["limits"])  # checked before any model is loaded
    settings = InferenceSettings.from_params(p)  # the guard too
    policy = resolve_and_log(check_precision(p["precision"], "inference"), "Prediction")
    ids = _case_ids(p["cases"])
    cases = select_cases(find_cases(Path(p["input"]), limits.max_batch_cases), ids)
    lung = loaded_in(load_model_spec(p["lung_model"], "lung", p["models_dir"]), policy)
    infection = loaded_in(load_model_spec(p["infection_model"], "infection", p["models_dir"]), policy) if "infection" in tasks else None
    segmenter = Segmenter.from_models(lung, infection, settings)
    from lungseg.inference.output_lock import output_lock

    with output_lock(p["output_dir"]):  # one run per output folder, as `lungseg predict`
        summary = run_batch(segmenter, cases, p["output_dir"], tasks, bool(p["progress"]), limits=p["limits"])
    n_ok = int((summary["status"] == "ok").sum())
    logger.info("inference: %d of %d cases segmented into %s", n_ok, len(summary), p["output_dir"])
    if n_ok < len(summary):
        logger.warning("inference: failed cases: %s", some(summary.loc[summary["status"] != "ok", "case"]))
    implausible = summary.loc[summary["implausible_input"].fillna("").astype(str) != "", "case"]
    if len(implausible):
        logger.warning("inference: implausible input (no figures reported): %s", some(implausible))
    not_evaluated = evaluation_failures(summary)
    if not_evaluated:
        logger.warning("inference: ground truth unusable for: %s (see eval_error)", some(not_evaluated))
    return summary
