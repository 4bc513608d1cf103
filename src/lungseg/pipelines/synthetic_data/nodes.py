"""Node of the synthetic-data pipeline (a thin wrapper around :mod:`lungseg.synthetic`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import nibabel as nib
import pandas as pd

from lungseg.synthetic import LazyCaseStore, metadata_frame, resolve_params

logger = logging.getLogger(__name__)


def generate_synthetic_dataset(
    params: dict[str, Any],
) -> tuple[dict[str, Callable[[], nib.Nifti1Image]], pd.DataFrame]:
    """Describe the synthetic dataset of the chosen profile; the volumes are generated lazily.

    Args:
        params: ``synthetic_data`` parameters: ``profile`` (``demo`` | ``full`` | ``tiny``, defined in
            :mod:`lungseg.synthetic.profiles`), ``seed``, ``n_cases`` (None: the profile's) and
            ``profiles`` (key-by-key overrides of a profile). An unknown key is a ConfigError.

    Returns:
        One lazy loader per NIfTI file, then ``metadata.csv`` as a DataFrame (in this order, so that
        Kedro writes ``metadata.csv`` last and an interrupted run is never taken for a finished
        one). The loaders are keyed by path
        relative to the dataset root without ``.nii.gz`` (``ct_scans/synth_000_org``,
        ``lung_mask/synth_000``...). A ``PartitionedDataset`` calls the loaders one after another;
        each case is generated once and only one case is held in memory.
    """
    profile, seed, name = resolve_params(params)
    store = LazyCaseStore(profile, seed)
    logger.info("Synthetic dataset: profile %r, %d case(s), seed %d", name, store.n_cases, seed)
    return store.loaders(), metadata_frame(store.n_cases)
