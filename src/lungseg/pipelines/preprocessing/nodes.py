"""Preprocessing nodes: wiring only.

Every image operation is a call into :mod:`lungseg.imaging`, the model-input assembly and the split
live in :mod:`lungseg.models.inputs`; the nodes stream cases through them for the catalog.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from lungseg.errors import TrainingDataError
from lungseg.imaging import enhance
from lungseg.models.inputs import build_model_input, enhance_config, preprocess_config, split_cases
from lungseg.parallel import bound

Lazy = Callable[[], dict[str, np.ndarray]]

__all__ = ["build_infection_input", "build_lung_input", "enhance_cases", "preprocess_config", "split_cases"]


def enhance_cases(
    case_table: pd.DataFrame, canonical_cases: dict[str, Lazy], params: dict[str, Any]
) -> dict[str, Lazy]:
    """Window (HU cases) and CLAHE every case once; both tasks reuse the result.

    Returns lazy per-case records ``{image (Z,H,W) uint8, lung, infection, spacing}`` that the
    catalog writes one at a time.
    """
    config = enhance_config(params)
    kinds = dict(zip(case_table["case_id"], case_table["source_kind"]))
    missing = [c for c in case_table["case_id"] if c not in canonical_cases]
    if missing:
        raise TrainingDataError(f"canonical cases missing for {missing}; run the ingestion pipeline")

    return {case: bound(_enhance_case, case, canonical_cases[case], kinds[case], config) for case in case_table["case_id"]}


def _enhance_case(case: str, load: Lazy, kind: str, config) -> dict[str, np.ndarray]:
    """One case's enhanced record (a task on a Dask worker under :class:`lungseg.runner.DaskRunner`)."""
    rec = load()
    return {"image": enhance(rec["ct"], kind, config), "lung": rec["lung"], "infection": rec["infection"],
            "spacing": rec["spacing"]}


def build_lung_input(case_table, enhanced_cases, params):
    """Model input of the lung task: body-cropped slices (or lung-mask-cropped, the paper's protocol)."""
    return build_model_input("lung", case_table, enhanced_cases, params)


def build_infection_input(case_table, enhanced_cases, params):
    """Model input of the infection task: slices cropped to the two largest lung components."""
    return build_model_input("infection", case_table, enhanced_cases, params)
