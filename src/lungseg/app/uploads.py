"""Uploads of the web UI: settings, type and size checks, and reading an uploaded CT.

Nothing here imports Streamlit. Reading reuses :func:`lungseg.inference.readers.read_input`.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lungseg.errors import InputError
from lungseg.inference.ownership import scratch_dir
from lungseg.layout import IMAGE_SUFFIXES, NIFTI_SUFFIXES, ZIP_SUFFIX, file_suffix

#: Environment variable and default of the upload size limit, in MB (10**6 bytes).
MAX_UPLOAD_ENV = "LUNGSEG_MAX_UPLOAD_MB"
DEFAULT_MAX_UPLOAD_MB = 300.0

VOLUME_SUFFIXES = (*NIFTI_SUFFIXES, ZIP_SUFFIX)
INPUT_SUFFIXES = IMAGE_SUFFIXES + VOLUME_SUFFIXES

__all__ = [
    "DEFAULT_MAX_UPLOAD_MB", "INPUT_SUFFIXES", "MAX_UPLOAD_ENV", "VOLUME_SUFFIXES", "LoadedInput", "check_upload",
    "digest_bytes", "file_stem", "file_suffix", "read_upload", "safe_file_name", "server_max_upload_mb",
    "upload_limit_mb", "upload_limits", "with_temp_file",
]


def upload_limit_mb(env: Mapping[str, str] | None = None) -> float:
    """The largest accepted upload in MB: ``$LUNGSEG_MAX_UPLOAD_MB`` or 300.

    Raises:
        InputError: the variable is set but is not a positive number.
    """
    env = os.environ if env is None else env
    raw = env.get(MAX_UPLOAD_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_MAX_UPLOAD_MB
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value) or value <= 0:
        raise InputError(f"{MAX_UPLOAD_ENV}={raw!r} is not a positive number of megabytes")
    return value


def server_max_upload_mb(env: Mapping[str, str] | None = None) -> int:
    """A value for Streamlit's ``--server.maxUploadSize`` (MiB) above the app's own limit.

    Streamlit refuses bigger uploads itself (with its own message); uploads between the app's
    limit and this value reach the page, which refuses them with an ``st.error`` naming the limit.
    """
    return int(math.ceil(2 * upload_limit_mb(env)))


def safe_file_name(name: str) -> str:
    """The base name of an uploaded file, reduced to characters safe in a temporary path."""
    base = Path(str(name).replace("\\", "/")).name
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip(".")
    return base or "upload"


def file_stem(name: str) -> str:
    """A file name without its suffix (``ct.nii.gz`` → ``ct``)."""
    base = safe_file_name(name)
    suffix = file_suffix(base)
    return base[: len(base) - len(suffix)] if suffix else base


def check_upload(
    name: str,
    size_bytes: int,
    *,
    allowed: Sequence[str] = INPUT_SUFFIXES,
    max_mb: float = DEFAULT_MAX_UPLOAD_MB,
    what: str = "image",
) -> str:
    """Check an upload's type and size before reading it; return its suffix.

    Raises:
        InputError: empty file, a suffix not in ``allowed``, or more than ``max_mb`` megabytes.
    """
    suffix = file_suffix(name)
    if suffix not in allowed:
        shown = suffix or "no extension"
        raise InputError(
            f"file {name!r}: unsupported {what} type ({shown}); accepted types: {', '.join(allowed)}"
        )
    if size_bytes <= 0:
        raise InputError(f"file {name!r}: the file is empty")
    size_mb = size_bytes / 1e6
    if size_mb > max_mb:
        raise InputError(
            f"file {name!r}: {size_mb:.1f} MB is over the upload limit of {max_mb:g} MB "
            f"(set {MAX_UPLOAD_ENV} to change it)"
        )
    return suffix


@dataclass
class LoadedInput:
    """An uploaded image read into lungseg's canonical form.

    Attributes:
        name: the uploaded file's name.
        volume: the canonical (z, y, x) :class:`lungseg.volume.Volume`.
        source_kind: ``"hu"`` or ``"uint8"`` (see docs/architecture.md).
        is_2d: the upload was a PNG/JPG slice (its mask is offered as a PNG, not NIfTI).
        digest: SHA-1 of the uploaded bytes (a cache key).
    """

    name: str
    volume: Any
    source_kind: str
    is_2d: bool
    digest: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.volume.array.shape)  # type: ignore[return-value]


def digest_bytes(data: bytes) -> str:
    """SHA-1 hex digest of bytes."""
    return hashlib.sha1(data).hexdigest()



def with_temp_file(name: str, data: bytes, fn):
    """Write ``data`` to a temporary file named like the upload (same suffix) and call ``fn(path)``."""
    with scratch_dir("lungseg-upload-") as tmp:
        path = Path(tmp) / safe_file_name(name)
        path.write_bytes(data)
        return fn(path)


def upload_limits():
    """The resource limits applied to every upload: ``inference.limits`` of the project's parameters, the
    CLI's own (:class:`lungseg.limits.Limits`: header and zip bombs, huge DICOM dimensions...)."""
    from lungseg.limits import load_limits

    return load_limits()


def read_upload(name: str, data: bytes, *, max_mb: float | None = None, limits=None) -> LoadedInput:
    """Read an uploaded CT (PNG/JPG slice, NIfTI, zipped DICOM series) with the inference reader.

    The bytes go to a temporary file that keeps the original suffix (``.nii.gz`` keeps both) and
    :func:`lungseg.inference.readers.read_input` reads it within ``limits`` (default
    :func:`upload_limits`, the CLI's): a header bomb, a zip bomb or huge DICOM dimensions are refused
    from their headers in milliseconds, before anything is allocated or extracted, so one upload cannot
    stall the app. The array is copied into memory, so the temporary file can go.

    Raises:
        InputError: wrong type, empty, too large, over a limit, or unreadable (the reader's message).
    """
    from lungseg.inference.readers import read_input

    suffix = check_upload(
        name, len(data), allowed=INPUT_SUFFIXES, max_mb=upload_limit_mb() if max_mb is None else max_mb
    )
    limits = upload_limits() if limits is None else limits

    def _read(path: Path):
        volume, kind = read_input(path, limits)
        volume.array = np.array(volume.array, copy=True)  # detach from a memory map of the temp file
        return volume, kind

    volume, kind = with_temp_file(name, data, _read)
    if volume.array.ndim != 3 or min(volume.array.shape) < 1:
        raise InputError(f"file {name!r}: expected an image or a volume, got shape {volume.array.shape}")
    return LoadedInput(
        name=name,
        volume=volume,
        source_kind=kind,
        is_2d=suffix in IMAGE_SUFFIXES,
        digest=digest_bytes(data),
    )



def with_spacing(loaded: LoadedInput, text: str) -> LoadedInput:
    """``loaded`` with the voxel size ``text`` (``X,Y,Z`` mm), through the code path of ``lungseg predict
    --spacing`` (:func:`lungseg.inference.readers.override_spacing`): the figures, the guard and the
    views use it; the masks stay on the file's own grid and affine.

    Raises:
        InputError: not three positive numbers in mm, or outside the readers' bounds.
    """
    import dataclasses

    from lungseg.inference.readers import override_spacing, parse_spacing

    spacing = parse_spacing(text, f"file {loaded.name!r}: the voxel size")
    return dataclasses.replace(loaded, volume=override_spacing(loaded.volume, spacing))
