"""DICOM CT series: read one into a voxel array with its affine (:mod:`lungseg.inference.dicom_write` writes one).

Geometry follows the DICOM standard (patient coordinates are LPS):

* ``ImageOrientationPatient`` gives the direction cosines of a row (the direction in which the column
  index grows) and of a column (the direction in which the row index grows);
* ``PixelSpacing`` is ``[spacing between rows, spacing between columns]`` in mm;
* slices are sorted by ``ImagePositionPatient`` projected on the slice normal, and the slice step is
  taken from the first and last positions.

The voxel array is returned in the file's own (column, row, slice) order with a RAS affine, i.e. exactly
what a NIfTI of the series would hold, so :func:`lungseg.volume.load_canonical` turns it into a
canonical volume and outputs are written back on the series' own grid.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lungseg.errors import InputError
from lungseg.limits import Limits, as_limits, check_volume_shape

logger = logging.getLogger(__name__)

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class DicomSeries:
    """One DICOM series as voxels in its own (column, row, slice) order.

    Attributes:
        data_xyz: intensities in HU (RescaleSlope/Intercept applied), int16 when exact, else float32.
        affine_ras: 4x4 voxel-to-world affine in nibabel's RAS+ convention.
        series_uid: the SeriesInstanceUID that was read.
        description: its SeriesDescription ("" when absent).
        n_series: how many image series the input held (the largest one was read).
        spacing_assumed: the series has no PixelSpacing: 1 mm pixels were assumed.
    """

    data_xyz: np.ndarray
    affine_ras: np.ndarray
    series_uid: str
    description: str
    n_series: int
    spacing_assumed: bool = False


def read_series_folder(folder: Path, origin: str | Path | None = None, *, limits: Limits | dict) -> DicomSeries:
    """Read the largest DICOM image series found in ``folder`` (searched recursively).

    ``origin`` is the name used in messages (the .zip a temporary folder came from, say); ``limits``
    as in :func:`read_series_files`.
    """
    folder = Path(folder)
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR"
    )
    return read_series_files(files, origin=origin if origin is not None else folder, limits=limits)


def looks_like_dicom(path: Path) -> bool:
    """A cheap test before any parsing: the 128-byte preamble and ``DICM``, or a file that starts with a
    group 0002 / 0008 element (a DICOM data set written without its preamble)."""
    try:
        with Path(path).open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM" or head[:2] in (b"\x02\x00", b"\x08\x00")


def _name(f: Path, origin: str | Path) -> str:
    try:
        return Path(f).relative_to(origin).as_posix()
    except ValueError:
        return Path(f).name


def read_series_files(files: Iterable[Path], origin: str | Path, limits: Limits | dict) -> DicomSeries:
    """Read the largest image series among ``files``; non-DICOM files are skipped unparsed.

    Every header is checked against ``limits`` (:class:`lungseg.limits.Limits` or the ``inference.limits``
    dict) before any pixel data is read: Rows, Columns and Rows x Columns x frames of
    each file, then the slices and voxels of the series.
    """
    import pydicom

    limits = as_limits(limits)
    files = list(files)
    where = f"file {str(origin)!r}"
    groups: dict[str, list[tuple[Path, object]]] = {}
    for f in files:
        if not looks_like_dicom(f):
            continue
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
        except Exception:  # a damaged header: skipped, reported below if nothing is left
            continue
        if "Rows" not in ds or "Columns" not in ds:
            continue
        _check_dims(ds, f"{where}: DICOM file {_name(f, origin)!r}", limits)
        groups.setdefault(str(ds.get("SeriesInstanceUID", "unknown")), []).append((f, ds))
    if not groups:
        raise InputError(
            f"{where}: no DICOM image found (looked at {len(files)} file(s)); give a folder or .zip holding one CT series"
        )
    ranked = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    uid, members = ranked[0]
    description = str(members[0][1].get("SeriesDescription", ""))
    if len(ranked) > 1:
        others = ", ".join(f"{u} ({len(m)} slices)" for u, m in ranked[1:])
        logger.warning(
            "%s holds %d DICOM series; using the largest: SeriesInstanceUID %s %r (%d slices); ignored: %s",
            Path(str(origin)).name, len(ranked), uid, description, len(members), others,
        )
    rows, cols = int(members[0][1].Rows), int(members[0][1].Columns)
    check_volume_shape((len(members), rows, cols), where, limits, inplane=(rows, cols))
    data, affine = _assemble(members, origin, limits)
    logger.info("read DICOM series %s %r: %d slices of %dx%d", uid, description, data.shape[2], data.shape[1], data.shape[0])
    no_spacing = _float_list(members[0][1], "PixelSpacing", 2) is None
    return DicomSeries(data, affine, uid, description, len(ranked), spacing_assumed=no_spacing)


def _check_dims(ds, where: str, limits: Limits) -> None:
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: unreadable Rows/Columns/NumberOfFrames ({exc})") from exc
    if rows < 1 or cols < 1 or frames < 1:
        raise InputError(f"{where}: empty image dimensions {rows}x{cols} ({frames} frame(s))")
    if max(rows, cols) > limits.max_inplane:
        raise InputError(
            f"{where}: Rows x Columns {rows:,}x{cols:,}, over the limit of {limits.max_inplane:,} pixels across "
            "(inference.limits.max_inplane); refused before reading the pixels"
        )
    if rows * cols * frames > limits.max_dicom_pixels:
        raise InputError(
            f"{where}: Rows x Columns x frames = {rows * cols * frames:,} pixels, over the limit of "
            f"{limits.max_dicom_pixels:,} (inference.limits.max_dicom_pixels); refused before reading the pixels"
        )


def _float_list(ds, name: str, n: int) -> np.ndarray | None:
    value = ds.get(name)
    if value is None:
        return None
    try:
        out = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return out if out.size == n and np.isfinite(out).all() else None


def _sorted_members(members: Sequence[tuple[Path, object]], where: str) -> tuple[list, np.ndarray, np.ndarray]:
    """The slices sorted by position along the slice normal (not by file name), with their positions."""
    iops = [_float_list(ds, "ImageOrientationPatient", 6) for _, ds in members]
    iop = next((v for v in iops if v is not None), None)
    if iop is None:
        logger.warning("%s: no ImageOrientationPatient; assuming a standard axial series", where)
        iop = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    normal = np.cross(iop[:3], iop[3:])
    positions = [_float_list(ds, "ImagePositionPatient", 3) for _, ds in members]
    if all(p is not None for p in positions):
        pos = np.stack(positions)
        order = np.argsort(pos @ normal, kind="stable")
    else:
        logger.warning("%s: slices without ImagePositionPatient; sorting by InstanceNumber", where)
        order = np.argsort([int(ds.get("InstanceNumber", i) or i) for i, (_, ds) in enumerate(members)], kind="stable")
        thickness = float(members[0][1].get("SliceThickness", 0) or 0) or 1.0
        pos = np.zeros((len(members), 3))
        pos[order] = np.arange(len(members))[:, None] * normal * thickness
    members = [members[i] for i in order]
    return members, pos[order], normal


def _check_consistent(members: Sequence[tuple[Path, object]], origin, limits: Limits) -> tuple[np.ndarray, np.ndarray]:
    """Geometry of the first slice by position; every slice must agree on size, spacing and orientation."""
    where = f"file {str(origin)!r}"
    first_file, first = members[0]
    iop = _float_list(first, "ImageOrientationPatient", 6)
    iop = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]) if iop is None else iop
    spacing = _float_list(first, "PixelSpacing", 2)
    if spacing is None:
        logger.warning("%s: no PixelSpacing; assuming 1 mm pixels", where)
        spacing = np.array([1.0, 1.0])
    if np.any(spacing <= 0):
        raise InputError(f"{where}: DICOM file {_name(first_file, origin)!r} has PixelSpacing {spacing.tolist()}")
    size = (int(first.Rows), int(first.Columns))
    for f, ds in members[1:]:
        name = f"{where}: DICOM file {_name(f, origin)!r}"
        if (int(ds.Rows), int(ds.Columns)) != size:
            raise InputError(f"{name} is {int(ds.Rows)}x{int(ds.Columns)}, the series' first slice {size[0]}x{size[1]}")
        other = _float_list(ds, "PixelSpacing", 2)
        if other is not None and np.abs(other - spacing).max() > limits.dicom_spacing_tolerance_mm:
            raise InputError(
                f"{name} has PixelSpacing {other.tolist()} mm, the series' first slice (by position, "
                f"{_name(first_file, origin)!r}) {spacing.tolist()} mm: the slices disagree, refused"
            )
        o_iop = _float_list(ds, "ImageOrientationPatient", 6)
        if o_iop is not None and np.abs(o_iop - iop).max() > limits.dicom_orientation_tolerance:
            raise InputError(
                f"{name} has ImageOrientationPatient {o_iop.tolist()}, the series' first slice {iop.tolist()}: "
                "the slices disagree, refused"
            )
    return iop, spacing


def _assemble(members: Sequence[tuple[Path, object]], origin: str | Path, limits: Limits) -> tuple[np.ndarray, np.ndarray]:
    """Sort the slices of one series by position, check their geometry, stack them, build the affine."""
    import pydicom

    where = f"file {str(origin)!r}"
    members, pos, normal = _sorted_members(members, where)
    proj = pos @ normal
    keep = np.concatenate([[True], np.diff(proj) > 1e-3])
    if not keep.all():
        _check_duplicates_identical(members, keep, origin, where)
        logger.warning("%s: %d slice(s) repeat another at the same position with the same pixels; keeping one of each",
                       where, int((~keep).sum()))
        members = [m for m, k in zip(members, keep) if k]
        pos, proj = pos[keep], proj[keep]
    iop, spacing = _check_consistent(members, origin, limits)
    row_dir, col_dir = iop[:3], iop[3:]
    d_row, d_col = float(spacing[0]), float(spacing[1])

    slices = []
    for f, _ in members:
        try:
            ds = pydicom.dcmread(f, force=True)
        except Exception as exc:
            raise InputError(f"{where}: cannot read DICOM file {_name(f, origin)!r} ({type(exc).__name__}: {exc})") from exc
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise InputError(f"{where}: {_name(f, origin)!r} is a multi-frame DICOM, which is not supported; export single slices")
        slices.append(ds)
    data = _stack_hu(slices, where, [_name(f, origin) for f, _ in members])

    n = len(slices)
    if n > 1:
        _check_no_tilt(pos, normal, where)
        data, step, pos0 = _uniform_grid(data, pos, proj, normal, [_name(f, origin) for f, _ in members], where, limits)
    else:
        thickness = float(slices[0].get("SliceThickness", 0) or 0) or 1.0
        step, pos0 = normal * thickness, pos[0]
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_dir * d_col
    affine_lps[:3, 1] = col_dir * d_row
    affine_lps[:3, 2] = step
    affine_lps[:3, 3] = pos0
    return data, _LPS_TO_RAS @ affine_lps


def _check_duplicates_identical(members: Sequence[tuple[Path, object]], keep: np.ndarray, origin, where: str) -> None:
    """Two files at one slice position are one slice stored twice only if their pixels agree; two
    different images at one position (two reconstructions mixed into one series UID) are refused by name."""
    import pydicom

    def pixels(f):
        try:
            return pydicom.dcmread(f, force=True).pixel_array
        except Exception as exc:  # noqa: BLE001 - reported with the file's name
            raise InputError(f"{where}: cannot decode DICOM file {_name(f, origin)!r} ({type(exc).__name__}: {exc})") from exc

    kept = 0
    for k in range(1, len(members)):
        if keep[k]:
            kept = k
            continue
        first, other = members[kept][0], members[k][0]
        a, b = pixels(first), pixels(other)
        if a.shape != b.shape or not np.array_equal(a, b):
            raise InputError(
                f"{where}: {_name(first, origin)!r} and {_name(other, origin)!r} lie at the same slice position but "
                "hold different images (two reconstructions or acquisitions in one series?); give one series "
                "with one image per position"
            )


def _check_no_tilt(pos: np.ndarray, normal: np.ndarray, where: str) -> None:
    """Refuse a series whose slices are offset along the slice plane from one to the next (a gantry or
    detector tilt): its voxel grid is sheared, so lungseg's volumes in ml and its masks' geometry would be off."""
    from lungseg.volume import MAX_SHEAR_DEG

    step = pos[-1] - pos[0]
    length = float(np.linalg.norm(step))
    if length <= 0:
        return
    tilt = float(np.degrees(np.arccos(min(1.0, abs(float(step @ normal)) / length))))
    if tilt > MAX_SHEAR_DEG:
        raise InputError(
            f"{where}: the slices are tilted by {tilt:.1f} degrees against the slice normal (a gantry tilt: "
            "ImagePositionPatient moves along the slice plane); volumes in ml would be wrong. Correct the tilt "
            "first (dcm2niix does, or SimpleITK's Resample onto an orthogonal grid)"
        )


def _uniform_grid(data, pos, proj, normal, names, where: str, limits: Limits):
    """The slices on a uniform grid: even steps as they are; a gap refused, or resampled when allowed."""
    gaps = np.diff(proj)
    nominal = float(np.median(gaps))
    big = np.flatnonzero(gaps > 1.5 * nominal)
    if not big.size:
        if gaps.max() - gaps.min() > 0.1 * abs(gaps.mean()):
            logger.warning("%s: uneven slice spacing (%.3g to %.3g mm); using the mean %.3g mm",
                           where, gaps.min(), gaps.max(), gaps.mean())
        return data, (pos[-1] - pos[0]) / (len(proj) - 1), pos[0]
    k = int(big[0])
    what = (f"a gap of {gaps[k]:.3g} mm between slices {names[k]!r} and {names[k + 1]!r} "
            f"(the usual step is {nominal:.3g} mm; {len(big)} gap(s) in all): a missing slice?")
    if limits.dicom_slice_gap != "resample":
        raise InputError(f"{where}: {what}; refused (inference.limits.dicom_slice_gap: refuse; 'resample' "
                         "puts the series on a uniform grid)")
    n = int(round((proj[-1] - proj[0]) / nominal)) + 1
    grid = proj[0] + np.arange(n) * (proj[-1] - proj[0]) / (n - 1)
    out = np.empty((*data.shape[:2], n), dtype=np.float32)
    upper = np.clip(np.searchsorted(proj, grid, side="right"), 1, len(proj) - 1)
    lower = upper - 1
    w = ((grid - proj[lower]) / (proj[upper] - proj[lower])).astype(np.float32)
    for i in range(n):
        out[:, :, i] = (1 - w[i]) * data[:, :, lower[i]] + w[i] * data[:, :, upper[i]]
    logger.warning("%s: %s; resampled onto a uniform grid of %d slices (linear interpolation)", where, what, n)
    step = normal * (proj[-1] - proj[0]) / (n - 1)
    return out, step, pos[0]


def _stack_hu(slices: Sequence, where: str, names: Sequence[str] | None = None) -> np.ndarray:
    """(columns, rows, slices) array in HU; int16 when the rescale keeps integers in range. A slice
    whose RescaleSlope / Intercept give non-finite values (an overflow) is refused by name."""
    rows, cols = int(slices[0].Rows), int(slices[0].Columns)
    slopes = np.array([float(ds.get("RescaleSlope", 1) or 1) for ds in slices])
    inters = np.array([float(ds.get("RescaleIntercept", 0) or 0) for ds in slices])
    integral = np.all(slopes == np.round(slopes)) and np.all(inters == np.round(inters))
    out = np.empty((cols, rows, len(slices)), dtype=np.float32)
    for k, ds in enumerate(slices):  # one decode per file; vectorised within the slice
        try:
            px = ds.pixel_array
        except Exception as exc:
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
            raise InputError(
                f"{where}: cannot decode the pixel data of a slice (transfer syntax {syntax}: "
                f"{type(exc).__name__}: {exc})"
            ) from exc
        if px.shape != (rows, cols):
            raise InputError(f"{where}: a slice has pixel data of shape {px.shape}, expected {(rows, cols)}")
        with np.errstate(over="ignore", invalid="ignore"):
            out[:, :, k] = (px.astype(np.float32) * slopes[k] + inters[k]).T
        if not np.isfinite(out[:, :, k]).all() or not (np.isfinite(slopes[k]) and np.isfinite(inters[k])):
            name = names[k] if names is not None else f"slice {k}"
            raise InputError(
                f"{where}: {name!r} has RescaleSlope {slopes[k]:g} and RescaleIntercept {inters[k]:g}, which give "
                "non-finite values (an overflow or a corrupt header); not a CT in HU"
            )
    if integral and out.size and out.min() >= -32768 and out.max() <= 32767:
        return out.astype(np.int16)
    return out
