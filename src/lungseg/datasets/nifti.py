"""``NiftiDataset``: a Kedro dataset for ``.nii`` / ``.nii.gz`` volumes.

``load`` returns a lazy ``nibabel`` image (the header is read and checked, the voxels are read only
when asked for), so a ``PartitionedDataset`` of them never holds more than one case in memory.
``save`` takes a ``nibabel`` image and writes it atomically.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
import nibabel as nib
from kedro.io.core import AbstractDataset, DatasetError, get_filepath_str, get_protocol_and_path

from lungseg.datasets._atomic import atomic_path
from lungseg.errors import DataValidationError


class NiftiDataset(AbstractDataset[nib.Nifti1Image, nib.Nifti1Image]):
    """Load and save NIfTI-1/2 images (local files).

    Example catalog entry::

        ct:
          type: lungseg.datasets.NiftiDataset
          filepath: data/01_raw/ct.nii.gz
    """

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        protocol, path = get_protocol_and_path(filepath)
        if protocol != "file":
            raise DatasetError(f"NiftiDataset reads local files only, got {filepath!r}")
        self._protocol = protocol
        self._filepath = PurePosixPath(path)
        self._fs = fsspec.filesystem(protocol)
        self.metadata = metadata

    @property
    def filepath(self) -> Path:
        return Path(get_filepath_str(self._filepath, self._protocol))

    def load(self) -> nib.Nifti1Image:
        path = self.filepath
        if not path.exists():
            raise DataValidationError("file not found", file=path)
        if path.stat().st_size == 0:
            raise DataValidationError("file is empty (0 bytes)", file=path)
        try:
            img = nib.load(str(path))
        except Exception as exc:  # ImageFileError, gzip errors, EOFError...
            raise DataValidationError(
                f"not a readable NIfTI file ({type(exc).__name__}: {exc})", file=path
            ) from exc
        return img

    def save(self, data: nib.Nifti1Image) -> None:
        if not isinstance(data, nib.spatialimages.SpatialImage):
            raise DatasetError(f"NiftiDataset.save expects a nibabel image, got {type(data).__name__}")
        target = self.filepath
        suffix = ".nii.gz" if target.name.endswith(".gz") else ".nii"
        with atomic_path(target, suffix=suffix) as tmp:
            nib.save(data, str(tmp))

    def _exists(self) -> bool:
        return self.filepath.exists()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
