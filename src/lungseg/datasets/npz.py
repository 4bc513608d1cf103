"""``NpzDataset``: a dict of numpy arrays as one (compressed) ``.npz`` file, written atomically."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from kedro.io.core import AbstractDataset, DatasetError, get_filepath_str, get_protocol_and_path

from lungseg.datasets._atomic import atomic_path
from lungseg.errors import DataValidationError


class NpzDataset(AbstractDataset[dict[str, np.ndarray], dict[str, np.ndarray]]):
    """Save a ``dict[str, np.ndarray]`` to ``.npz``; load it back as a dict of arrays.

    Args:
        filepath: local path of the ``.npz`` file.
        compress: use ``np.savez_compressed`` (default) or plain ``np.savez``.
    """

    def __init__(self, filepath: str, compress: bool = True, metadata: dict[str, Any] | None = None) -> None:
        protocol, path = get_protocol_and_path(filepath)
        if protocol != "file":
            raise DatasetError(f"NpzDataset handles local files only, got {filepath!r}")
        self._protocol = protocol
        self._filepath = PurePosixPath(path)
        self._compress = compress
        self.metadata = metadata

    @property
    def filepath(self) -> Path:
        return Path(get_filepath_str(self._filepath, self._protocol))

    def load(self) -> dict[str, np.ndarray]:
        path = self.filepath
        if not path.exists():
            raise DataValidationError("file not found", file=path)
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {key: npz[key] for key in npz.files}
        except Exception as exc:
            raise DataValidationError(f"cannot read .npz ({type(exc).__name__}: {exc})", file=path) from exc

    def save(self, data: dict[str, np.ndarray]) -> None:
        if not isinstance(data, dict):
            raise DatasetError(f"NpzDataset.save expects a dict of arrays, got {type(data).__name__}")
        arrays = {str(k): np.asarray(v) for k, v in data.items()}
        with atomic_path(self.filepath, suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                (np.savez_compressed if self._compress else np.savez)(fh, **arrays)

    def _exists(self) -> bool:
        return self.filepath.exists()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "compress": self._compress}
