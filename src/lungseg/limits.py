"""Resource limits and plausibility bounds of inference, read from ``conf/base/parameters_inference.yml``.

``lungseg predict`` and the web UI run outside Kedro, so they read the ``inference.limits`` and
``inference.guard`` sections of the project's parameters here (``$LUNGSEG_CONF_DIR`` names another
folder holding a ``parameters_inference.yml``); the Kedro ``inference`` pipeline gets the same sections
from its parameters. Defaults live only in that file. Only :func:`inference_parameters`,
:func:`load_limits` and :func:`load_guard` read it, when a front end calls them: the library
(readers, the Segmenter, batches) takes the limits and the guard from its caller.

The checks themselves are cheap and run before any array is allocated:

* :func:`check_volume_shape`: a NIfTI header's or a DICOM series' shape against ``max_voxels``,
  ``max_slices`` and ``max_inplane``;
* :func:`check_payload_size`: the bytes a NIfTI header promises against the file's size (a ``.nii``
  must hold them; a ``.nii.gz`` cannot inflate past deflate's maximum ratio of 1032:1);
* :func:`check_zip`: a zip's member count, total uncompressed size and compression ratio, before
  anything is extracted.

This module imports nothing from lungseg but :mod:`lungseg.errors` and :mod:`lungseg.config`.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from lungseg.config import check_section
from lungseg.errors import ConfigError, InputError

#: Environment variable naming a folder that holds ``parameters_inference.yml`` (default: conf/base).
CONF_DIR_ENV = "LUNGSEG_CONF_DIR"
#: Deflate cannot expand data by more than about 1032:1 (RFC 1951: a 258-byte match per 2 bits at best).
DEFLATE_MAX_RATIO = 1032
#: Members under this size are not held to ``max_zip_ratio`` on their own (headers, tiny files).
_RATIO_MIN_MEMBER_BYTES = 1 << 20
_GAP_MODES = ("refuse", "resample")
#: Limits added after models were first registered with their settings: conf/base sets them; settings
#: stored without them (a registered ``lungseg-combined`` bundle) get the dataclass's value.
LATER_LIMITS = ("max_batch_cases", "max_payload_mb")
#: The same for ``inference.guard``.
LATER_GUARD = ("min_lung_ml_per_mm",)


@dataclass(frozen=True)
class Limits:
    """``inference.limits`` (see conf/base/parameters_inference.yml for the meaning of each)."""

    max_voxels: int
    max_slices: int
    max_inplane: int
    max_dicom_pixels: int
    max_zip_members: int
    max_zip_mb: float
    max_zip_ratio: float
    dicom_spacing_tolerance_mm: float
    dicom_orientation_tolerance: float
    dicom_slice_gap: str
    geometry_spacing_rel: float
    geometry_direction: float
    geometry_origin_mm: float
    max_batch_cases: int = 10000
    max_payload_mb: float = 1200.0

    @property
    def geometry_tolerance(self) -> dict[str, float]:
        """The keyword arguments of :func:`lungseg.volume.geometry_mismatch`."""
        return {
            "spacing_rel": self.geometry_spacing_rel,
            "direction": self.geometry_direction,
            "origin_mm": self.geometry_origin_mm,
        }

    @classmethod
    def from_params(cls, params: Mapping[str, Any], section: str = "inference.limits") -> Limits:
        names = [f.name for f in fields(cls) if f.name not in LATER_LIMITS]
        p = check_section(params, section, names, optional=LATER_LIMITS)
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in p:  # a limit added after these settings were stored (a registered model's)
                continue
            value = p[f.name]
            if f.name == "dicom_slice_gap":
                if value not in _GAP_MODES:
                    raise ConfigError(f"parameter '{section}.{f.name}' must be one of {_GAP_MODES}, got {value!r}")
                values[f.name] = value
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ConfigError(f"parameter '{section}.{f.name}' must be a non-negative number, got {value!r}")
            values[f.name] = int(value) if f.type == "int" else float(value)
        return cls(**values)


@dataclass(frozen=True)
class GuardParams:
    """``inference.guard``: the bounds of :func:`lungseg.inference.guard.check_plausibility`."""

    enabled: bool
    dark_level: float
    tissue_level: float
    min_dark_fraction: float
    min_tissue_fraction: float
    min_hu_range_fraction: float
    min_body_fraction: float
    max_lung_fov_fraction: float
    min_lung_inside_body: float
    max_lung_ml: float
    min_lung_ml: float
    min_extent_mm: float
    min_lung_ml_per_mm: float = 0.01

    @classmethod
    def from_params(cls, params: Mapping[str, Any], section: str = "inference.guard") -> GuardParams:
        names = [f.name for f in fields(cls) if f.name not in LATER_GUARD]
        p = check_section(params, section, names, optional=LATER_GUARD)
        values: dict[str, Any] = {"enabled": bool(p["enabled"])}
        for f in fields(cls)[1:]:
            if f.name not in p:  # a bound added after these settings were stored (a registered model's)
                continue
            value = p[f.name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ConfigError(f"parameter '{section}.{f.name}' must be a non-negative number, got {value!r}")
            values[f.name] = float(value)
        return cls(**values)


def conf_dir() -> Path:
    """The folder holding ``parameters_inference.yml``: ``$LUNGSEG_CONF_DIR`` or the project's conf/base."""
    env = os.environ.get(CONF_DIR_ENV, "").strip()
    return Path(env) if env else Path(__file__).resolve().parents[2] / "conf" / "base"


@lru_cache(maxsize=4)
def _inference_section(path: str, mtime: float) -> dict:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the inference parameters {path!r}: {exc}") from exc
    section = data.get("inference") if isinstance(data, dict) else None
    if not isinstance(section, dict):
        raise ConfigError(f"{path!r} has no 'inference' section")
    return section


def inference_parameters() -> dict:
    """The ``inference`` section of ``parameters_inference.yml`` (the file is re-read when it changes)."""
    path = conf_dir() / "parameters_inference.yml"
    if not path.is_file():
        raise ConfigError(
            f"the inference parameters {str(path)!r} are missing; run from a lungseg checkout or set {CONF_DIR_ENV}"
        )
    return _inference_section(str(path), path.stat().st_mtime)


def load_limits() -> Limits:
    """``inference.limits`` of the project's parameters."""
    return Limits.from_params(inference_parameters().get("limits"))


def load_guard() -> GuardParams:
    """``inference.guard`` of the project's parameters."""
    return GuardParams.from_params(inference_parameters().get("guard"))


def as_limits(limits: Limits | Mapping) -> Limits:
    """``limits`` as :class:`Limits` (a mapping, the ``inference.limits`` parameters, is checked). Nothing is
    read here: a caller without parameters of its own passes :func:`load_limits` (the project's)."""
    if isinstance(limits, Limits):
        return limits
    if not isinstance(limits, Mapping):
        raise ConfigError(f"no resource limits given ({limits!r}): pass the 'inference.limits' parameters "
                          "(lungseg.limits.load_limits() reads the project's)")
    return Limits.from_params(limits)


# ----------------------------------------------------------------------------------------- checks


#: ``max_voxels`` counts voxels of a CT's usual 2 bytes (int16): a wider stored type (float32, float64)
#: is held to the same memory, ``max_voxels * VOXEL_BYTES`` decompressed bytes.
VOXEL_BYTES = 2


def check_volume_shape(
    shape: tuple[int, ...], where: str, limits: Limits, inplane: tuple[int, ...] | None = None,
    itemsize: int | None = None,
) -> None:
    """Refuse a volume whose shape is over ``max_voxels`` / ``max_slices`` / ``max_inplane``, or not positive,
    or whose data (``itemsize`` bytes a voxel, when known) would decompress to more than
    ``max_voxels * VOXEL_BYTES`` bytes.

    Args:
        shape: the data shape (any axis order).
        where: the message's prefix (``file 'x.nii.gz'``).
        inplane: the in-plane sizes, when known (DICOM Rows, Columns); else every axis but the
            largest is taken as in-plane.
        itemsize: bytes per stored voxel (the header's dtype), when known.
    """
    dims = [int(s) for s in shape]
    if not dims or min(dims) < 1:
        raise InputError(f"{where}: the header gives an empty shape {tuple(dims)}")
    voxels = 1
    for d in dims:
        voxels *= d
    if voxels > limits.max_voxels:
        raise InputError(
            f"{where}: the header gives {'x'.join(map(str, dims))} = {voxels:,} voxels, over the limit of "
            f"{limits.max_voxels:,} (inference.limits.max_voxels); refused before reading"
        )
    if itemsize is not None and voxels * int(itemsize) > limits.max_voxels * VOXEL_BYTES:
        raise InputError(
            f"{where}: the header gives {'x'.join(map(str, dims))} voxels of {int(itemsize)} bytes = "
            f"{voxels * int(itemsize) / 1e9:.2f} GB of data, over the limit of "
            f"{limits.max_voxels * VOXEL_BYTES / 1e9:.2f} GB (inference.limits.max_voxels x {VOXEL_BYTES} bytes); "
            "refused before reading"
        )
    if inplane is not None:
        plane = [int(s) for s in inplane]
        slices = voxels // max(1, plane[0] * plane[1]) if len(plane) == 2 else max(dims)
    else:  # a NIfTI's slice axis is not known: the largest axis may be the slices, the next one is in-plane
        ordered = sorted(dims)
        plane, slices = ordered[-2:-1], ordered[-1]
        if len(ordered) < 3 or ordered[0] == 1:  # a single slice: both large axes are in-plane
            plane, slices = ordered[-2:], 1
    if plane and max(plane) > limits.max_inplane:
        raise InputError(
            f"{where}: images of {max(plane):,} pixels across, over the limit of {limits.max_inplane:,} "
            "(inference.limits.max_inplane)"
        )
    if slices > limits.max_slices:
        raise InputError(
            f"{where}: {slices:,} slices in {'x'.join(map(str, dims))}, over the limit of "
            f"{limits.max_slices:,} (inference.limits.max_slices)"
        )


def check_payload_size(file: Path, expected_bytes: int, offset: int, gzipped: bool) -> None:
    """Refuse a NIfTI whose header promises more data than its file can hold."""
    size = Path(file).stat().st_size
    if gzipped:
        if expected_bytes > (size + 1024) * DEFLATE_MAX_RATIO:
            raise InputError(
                f"file {str(file)!r}: the header promises {expected_bytes:,} bytes of data but the compressed "
                f"file has only {size:,} bytes (more than deflate's maximum ratio of {DEFLATE_MAX_RATIO}:1): "
                "a corrupt or hostile header"
            )
    elif size < offset + expected_bytes:
        raise InputError(
            f"file {str(file)!r}: the header promises {expected_bytes:,} bytes of data after byte {offset} but "
            f"the file has only {size:,} bytes (truncated?)"
        )


def check_zip(zf: zipfile.ZipFile, where: str, limits: Limits) -> list[zipfile.ZipInfo]:
    """The file members of a zip, after checking count, total size and ratio against ``limits``."""
    members = [i for i in zf.infolist() if not i.is_dir()]
    if len(members) > limits.max_zip_members:
        raise InputError(
            f"{where}: the archive holds {len(members):,} files, over the limit of {limits.max_zip_members:,} "
            "(inference.limits.max_zip_members)"
        )
    total = sum(i.file_size for i in members)
    packed = sum(i.compress_size for i in members)
    if total > limits.max_zip_mb * 1e6:
        raise InputError(
            f"{where}: the archive expands to {total / 1e6:,.0f} MB, over the limit of {limits.max_zip_mb:g} MB "
            "(inference.limits.max_zip_mb); nothing was extracted"
        )
    worst = max(members, key=lambda i: i.file_size / max(1, i.compress_size), default=None)
    ratios = [(total / max(1, packed), "in all")]
    if worst is not None and worst.file_size >= _RATIO_MIN_MEMBER_BYTES:
        ratios.append((worst.file_size / max(1, worst.compress_size), f"member {worst.filename!r}"))
    for ratio, what in ratios:
        if total >= _RATIO_MIN_MEMBER_BYTES and ratio > limits.max_zip_ratio:
            raise InputError(
                f"{where}: a compression ratio of {ratio:,.0f}:1 ({what}), over the limit of "
                f"{limits.max_zip_ratio:g}:1 (inference.limits.max_zip_ratio): a zip bomb? nothing was extracted"
            )
    return members
