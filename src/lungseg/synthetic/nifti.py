"""NIfTI output of synthetic cases: LPS affines, stored orientations, the four images of a case."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from nibabel import orientations as nio

from lungseg.layout import SYNTHETIC_PHANTOM_DESCRIP

CANONICAL_AXCODES = "LPS"
#: The four folders of the dataset, in the order of metadata.csv's columns.
COMPONENTS = ("ct_scans", "lung_mask", "infection_mask", "lung_and_infection_mask")


def lps_affine(spacing: tuple[float, float, float], shape_zyx: tuple[int, ...]) -> np.ndarray:
    """Affine of a canonical (z, y, x) array written as ``arr.transpose(2, 1, 0)`` in LPS.

    The in-plane centre of the grid sits on the scanner axis (world x = y = 0).
    """
    sz, sy, sx = (float(s) for s in spacing)
    nz, ny, nx = shape_zyx[:3]
    aff = np.diag([-sx, -sy, sz, 1.0])
    aff[:3, 3] = [sx * (nx - 1) / 2.0, sy * (ny - 1) / 2.0, -sz * (nz - 1) / 2.0]
    return aff


def _ornt_from_lps(orientation: str) -> np.ndarray:
    return nio.ornt_transform(nio.axcodes2ornt(tuple(CANONICAL_AXCODES)), nio.axcodes2ornt(tuple(orientation)))


def stored_affine(spacing: tuple[float, float, float], shape_zyx: tuple[int, ...], orientation: str) -> np.ndarray:
    """Affine of the files of a case stored with axis codes ``orientation`` (same world space)."""
    shape_xyz = tuple(int(s) for s in shape_zyx[:3][::-1])
    ornt = _ornt_from_lps(orientation)
    return lps_affine(spacing, shape_zyx) @ nio.inv_ornt_aff(ornt, shape_xyz)


def to_stored(arr_zyx: np.ndarray, orientation: str) -> np.ndarray:
    """The data array of a canonical (z, y, x) array in a file with axis codes ``orientation``."""
    xyz = np.asarray(arr_zyx).transpose(2, 1, 0)
    if orientation == CANONICAL_AXCODES:
        return xyz
    return nio.apply_orientation(xyz, _ornt_from_lps(orientation))


def make_image(data_xyz: np.ndarray, affine: np.ndarray, dtype) -> nib.Nifti1Image:
    """A NIfTI-1 image with unit scaling, mm units and both qform and sform set to ``affine``, marked as
    the generator's in its header (``descrip``: :data:`lungseg.layout.SYNTHETIC_PHANTOM_DESCRIP`), so that
    inference can tell a phantom from real CT."""
    img = nib.Nifti1Image(np.asarray(data_xyz, dtype=dtype), affine)
    img.set_data_dtype(dtype)
    img.header.set_slope_inter(1, 0)
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = SYNTHETIC_PHANTOM_DESCRIP.encode("ascii")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def case_images(case) -> dict[str, nib.Nifti1Image]:
    """The four images of a :class:`~lungseg.synthetic.phantom.SyntheticCase`, keyed by folder."""
    return {component: component_image(case, component) for component in COMPONENTS}


def component_image(case, component: str) -> nib.Nifti1Image:
    """One of the four images of a case: ``ct_scans``, ``lung_mask``, ``infection_mask`` or
    ``lung_and_infection_mask``."""
    if component == "ct_scans":
        return make_image(to_stored(case.ct, case.orientation), case.affine, case.ct.dtype)
    return mask_image(component, case.lung, case.infection, case.orientation, case.affine)


def mask_image(component: str, lung: np.ndarray, infection: np.ndarray, orientation: str,
               affine: np.ndarray) -> nib.Nifti1Image:
    """A mask image from canonical lung labels (0/1/2) and infection (0/1)."""
    if component == "lung_mask":
        arr = lung
    elif component == "infection_mask":
        arr = infection
    elif component == "lung_and_infection_mask":
        arr = combined_labels(lung, infection)
    else:
        raise ValueError(f"unknown mask component {component!r}; expected one of {COMPONENTS[1:]}")
    return make_image(to_stored(arr, orientation), affine, np.uint8)


def combined_labels(lung: np.ndarray, infection: np.ndarray) -> np.ndarray:
    """1 left lung, 2 right lung, 3 infection (infection overrides)."""
    return np.where(infection > 0, np.uint8(3), lung).astype(np.uint8, copy=False)


def relative_stem(component: str, cid: str) -> str:
    """Path of an image relative to the dataset root, without ``.nii.gz``."""
    return f"{component}/{cid}_org" if component == "ct_scans" else f"{component}/{cid}"
