"""Ingestion nodes: wiring only. The validation is in :mod:`lungseg.ingest`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd


def ingest_cases(
    metadata: pd.DataFrame, volumes: dict[str, Callable], params: dict[str, Any]
) -> tuple[pd.DataFrame, dict[str, Callable[[], dict[str, np.ndarray]]], pd.DataFrame]:
    """Validate every case of ``metadata.csv`` and prepare its canonical copy, with
    :func:`lungseg.ingest.ingest_dataset` (the ``ingestion`` parameters are described there).

    Returns:
        The case table, lazy canonical cases (one ``.npz`` each) and the skipped-cases report.
    """
    from lungseg.ingest import ingest_dataset

    return ingest_dataset(metadata, volumes, params)
