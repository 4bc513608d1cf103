"""Write a canonical HU volume as a DICOM CT series (for tests, demos and benchmarks); the series
reads back with :func:`lungseg.inference.dicom.read_series_folder` on the very same grid."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def write_dicom_series(
    hu_zyx: np.ndarray,
    spacing: Sequence[float],
    outdir: str | Path,
    *,
    series_uid: str | None = None,
    study_uid: str | None = None,
    description: str = "lungseg synthetic CT",
    origin_lps: Sequence[float] = (0.0, 0.0, 0.0),
    patient_id: str = "LUNGSEG",
    shuffle_names: bool = True,
) -> list[Path]:
    """Write a canonical (z, y, x) HU volume as an uncompressed axial CT series, one file per slice.

    The standard axial orientation ``[1, 0, 0, 0, 1, 0]`` makes each stored slice exactly the canonical
    slice (columns towards the patient's left, rows towards posterior) and slices go towards superior.
    Values are stored as unsigned 16-bit with ``RescaleIntercept = -1024``. With ``shuffle_names`` the
    file names do not follow the slice order, so readers must sort by position.

    Returns:
        the paths written, in slice order.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    hu = np.asarray(hu_zyx)
    if hu.ndim != 3:
        raise ValueError(f"expected a (z, y, x) volume, got shape {hu.shape}")
    sz, sy, sx = (float(s) for s in spacing)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    stored = np.clip(np.round(hu.astype(np.float32) + 1024.0), 0, 65535).astype("<u2")
    names = np.random.default_rng(0).permutation(hu.shape[0]) if shuffle_names else np.arange(hu.shape[0])
    paths = []
    for k in range(hu.shape[0]):
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SeriesDescription = description
        ds.PatientID = patient_id
        ds.Modality = "CT"
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [float(origin_lps[0]), float(origin_lps[1]), float(origin_lps[2]) + k * sz]
        ds.PixelSpacing = [sy, sx]
        ds.SliceThickness = sz
        ds.Rows, ds.Columns = int(hu.shape[1]), int(hu.shape[2])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.PixelData = stored[k].tobytes()
        path = outdir / f"IM{int(names[k]):05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
