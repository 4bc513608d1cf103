"""Embedded synthetic chest-CT dataset that mimics the COVID-19 CT Lung and Infection Segmentation
Dataset (Ma et al. 2020; Kaggle ``covid19-ct-scans``).

Layout written under a dataset root (paths in ``metadata.csv`` use Kaggle's
``../input/covid19-ct-scans/...`` form)::

    metadata.csv                             ct_scan, lung_mask, infection_mask, lung_and_infection_mask
    ct_scans/synth_XXX_org.nii.gz            int16 HU with FOV padding, or uint8 windowed to [-1250, 250]
    lung_mask/synth_XXX.nii.gz               1 left lung, 2 right lung
    infection_mask/synth_XXX.nii.gz          1 infection
    lung_and_infection_mask/synth_XXX.nii.gz 1 left, 2 right, 3 infection

Public API:

- :func:`generate_case` -> :class:`SyntheticCase` (canonical (z, y, x) LPS arrays);
- :func:`write_dataset` writes a whole profile, one case at a time;
- :class:`LazyCaseStore` gives Kedro lazy loaders (see ``pipelines/synthetic_data``);
- :data:`DEFAULT_PROFILES` (``tiny``, ``demo``, ``full``) and :func:`resolve_profile`.
"""

from lungseg.synthetic.dataset import (
    KAGGLE_PREFIX,
    METADATA_COLUMNS,
    LazyCaseStore,
    metadata_frame,
    write_case,
    write_dataset,
)
from lungseg.synthetic.nifti import COMPONENTS, case_images, component_image, lps_affine, stored_affine
from lungseg.synthetic.phantom import CaseSpec, SyntheticCase, case_id, generate_case
from lungseg.synthetic.profiles import DEFAULT_PROFILES, resolve_params, resolve_profile

__all__ = [
    "COMPONENTS",
    "DEFAULT_PROFILES",
    "KAGGLE_PREFIX",
    "METADATA_COLUMNS",
    "CaseSpec",
    "LazyCaseStore",
    "SyntheticCase",
    "case_id",
    "case_images",
    "component_image",
    "generate_case",
    "lps_affine",
    "metadata_frame",
    "resolve_params",
    "resolve_profile",
    "stored_affine",
    "write_case",
    "write_dataset",
]
