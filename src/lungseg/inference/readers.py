"""Read a new CT given to inference: NIfTI, a DICOM series (folder or .zip), or a 2D PNG/JPEG slice.

Every reader returns a canonical :class:`lungseg.volume.Volume` (see docs/architecture.md) and the
intensity kind of its data (``"hu"`` or ``"uint8"``). Anything that cannot be used raises
:class:`lungseg.errors.InputError` whose message names the file and the problem.

``volume.meta`` tells the writers what the input was: ``{"input_kind": "nifti" | "dicom" | "image",
"input": <path>}`` plus, for DICOM, the chosen series (``"series_uid"``, ``"series_description"``,
``"n_series"``).
"""

from __future__ import annotations

import gzip
import logging
import zipfile
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np

from lungseg.errors import DataValidationError, InputError, is_disk_full
from lungseg.inference import dicom
from lungseg.inference.ownership import scratch_dir
from lungseg.layout import DICOM_SUFFIXES, IMAGE_SUFFIXES, NIFTI_SUFFIXES, ZIP_SUFFIX
from lungseg.limits import Limits, as_limits, check_payload_size, check_volume_shape, check_zip
from lungseg.volume import Volume, from_canonical_array, load_canonical, load_nifti

logger = logging.getLogger(__name__)

#: Smallest in-plane size (pixels) accepted as a CT slice.
MIN_INPLANE_PIXELS = 32

_GZIP_MAGIC = b"\x1f\x8b"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_ZIP_MAGIC = b"PK\x03\x04"


def read_input(path: str | Path, limits: Limits | dict) -> tuple[Volume, str]:
    """Read one CT input into a canonical Volume, within the resource limits.

    Args:
        path: a ``.nii``/``.nii.gz`` file (3D, HU or 0-255), a folder holding one DICOM series (the
            largest is taken if it holds several), a ``.zip`` of a DICOM series, a single DICOM file,
            or a ``.png``/``.jpg``/``.jpeg`` 2D grayscale slice (a volume of one slice, spacing 1 mm,
            intensities taken as 0-255).
        limits: :class:`lungseg.limits.Limits` (or the ``inference.limits`` dict; ``load_limits()``
            gives the project's). Checked on headers before any array is allocated.

    Returns:
        ``(volume, source_kind)`` where ``source_kind`` is ``"hu"`` or ``"uint8"``.

    Raises:
        InputError: missing, empty, unreadable or corrupt file; unknown type; not a CT (a colour
            photo, an image smaller than 32 px); a 4D NIfTI; a folder without DICOM images; an input
            over a limit (a header bomb, a zip bomb, huge DICOM dimensions); not enough memory.
    """
    path = Path(path)
    limits = as_limits(limits)
    if not path.exists():
        raise InputError(f"file {str(path)!r}: no such file or folder")
    try:
        volume, kind = _read_any(path, limits)
    except MemoryError as exc:
        raise InputError(f"file {str(path)!r}: not enough memory to read it ({exc or 'MemoryError'})") from exc
    _flag_placeholder_spacing(volume, kind, path)
    return volume, kind


#: Why a voxel size is not trusted (``volume.meta["spacing_note"]``, report.json ``spacing_note``).
PLACEHOLDER_SPACING_NOTE = ("1 x 1 x 1 mm on 0-255 data, the voxel size converted or anonymised files are often "
                            "given: probably a placeholder")


def _flag_placeholder_spacing(volume: Volume, kind: str, path: Path) -> None:
    """Flag a voxel size that is probably not the scan's (``volume.meta["spacing_assumed"]`` and a
    ``spacing_note``): exactly 1 x 1 x 1 mm on 0-255 data (common for converted or anonymised files;
    a CT in HU at exactly 1 mm isotropic is kept). Zero pixdim, a DICOM series without PixelSpacing and
    a 2D image were flagged by their readers. Volumes in ml are then nominal; ``--spacing`` overrides."""
    if volume.meta.get("spacing_assumed"):
        return
    if kind == "uint8" and volume.array.shape[0] > 1 and all(abs(float(s) - 1.0) < 1e-6 for s in volume.spacing):
        volume.meta.update(spacing_assumed=True, spacing_note=PLACEHOLDER_SPACING_NOTE)
        logger.warning("%s: %s; volumes in ml are nominal (report.json: spacing_assumed); give the true voxel size "
                       "with --spacing X,Y,Z", path.name, PLACEHOLDER_SPACING_NOTE)


def parse_spacing(text: str, where: str = "--spacing") -> tuple[float, float, float]:
    """A voxel size given as ``X,Y,Z`` mm (``lungseg predict --spacing``, the web UI's field) as three floats.

    Raises:
        InputError: not three positive finite numbers (the message names ``where``).
    """
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(0 < v < float("inf") for v in values):
        raise InputError(f"{where}: invalid voxel size {text!r}: give three positive numbers in mm, X,Y,Z "
                         "(e.g. 0.7,0.7,5)")
    return values  # type: ignore[return-value]


def override_spacing(volume: Volume, spacing_xyz: tuple[float, float, float]) -> Volume:
    """``volume`` with the voxel size ``spacing_xyz`` (mm along x = the patient's left-right, y =
    anterior-posterior, z = the axial slice direction, as ``lungseg predict --spacing X,Y,Z``).

    The figures (volumes in ml, the guard's extents, lesion positions in mm) use it; the outputs are still
    written on the input's own grid and affine, so they overlay the input file. ``meta`` records
    ``spacing_source: "--spacing"`` and the header's voxel size (``header_spacing_mm``, z, y, x), and
    ``affine_mm``: the input's affine with its axes rescaled to the given voxel size (for positions in mm).
    """
    import dataclasses

    sx, sy, sz = (float(s) for s in spacing_xyz)
    _check_spacing((sz, sy, sx), "--spacing")
    canonical = np.array([sx, sy, sz])  # canonical (x, y, z) axes
    affine = np.asarray(volume.affine, dtype=float).copy()
    for i in range(3):  # file axis i is canonical axis ornt[i, 0]
        norm = float(np.linalg.norm(affine[:3, i]))
        if norm > 0:
            affine[:3, i] *= canonical[int(volume.ornt[i, 0])] / norm
    meta = {k: v for k, v in volume.meta.items() if k not in ("spacing_assumed", "spacing_note")}
    meta.update(spacing_source="--spacing", header_spacing_mm=[float(s) for s in volume.spacing], affine_mm=affine)
    return dataclasses.replace(volume, spacing=(sz, sy, sx), meta=meta)


def _read_any(path: Path, limits: Limits) -> tuple[Volume, str]:
    if path.is_dir():
        return _read_dicom(path, dicom.read_series_folder(path, limits=limits))
    if path.stat().st_size == 0:
        raise InputError(f"file {str(path)!r}: the file is empty (0 bytes)")
    kind = _guess_kind(path)
    if kind == "nifti":
        return _read_nifti(path, limits)
    if kind == "image":
        return _read_image(path, limits)
    if kind == "zip":
        return _read_zip(path, limits)
    if kind == "dicom":
        return _read_dicom(path, dicom.read_series_files([path], origin=path, limits=limits))
    raise InputError(
        f"file {str(path)!r}: unknown input type; give a NIfTI file (.nii, .nii.gz), a DICOM series "
        "(a folder or a .zip), or a 2D grayscale .png/.jpg slice"
    )


def _guess_kind(path: Path) -> str | None:
    """``"nifti"``, ``"image"``, ``"zip"``, ``"dicom"`` or None, by suffix and then by content."""
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    if name.endswith(ZIP_SUFFIX):
        return "zip"
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    with path.open("rb") as fh:
        head = fh.read(352)
    if head.startswith(_PNG_MAGIC) or head.startswith(_JPEG_MAGIC):
        return "image"
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return "nifti"
    if head.startswith(_GZIP_MAGIC):  # most likely a gzipped NIfTI without its suffix
        return "nifti"
    return None


# --------------------------------------------------------------------------------------------- NIfTI


def _check_nifti_header(img, path: Path, limits: Limits) -> bool:
    """The header's shape against the limits and the file's size, before any voxel is read.

    Returns True when the stored voxel size (pixdim) is zero or not finite: nibabel then assumes 1 mm.
    """
    shape = tuple(int(s) for s in img.shape)
    try:
        itemsize = np.dtype(img.get_data_dtype()).itemsize
        offset = int(img.header["vox_offset"])
    except (TypeError, ValueError, KeyError):
        check_volume_shape(shape, f"file {str(path)!r}", limits)
        return False
    check_volume_shape(shape, f"file {str(path)!r}", limits, itemsize=itemsize)  # voxels, then bytes
    with path.open("rb") as fh:
        gzipped = fh.read(2) == _GZIP_MAGIC
    check_payload_size(path, int(np.prod(shape, dtype=np.int64)) * itemsize, offset, gzipped)
    header_class = type(img.header)
    size = header_class.template_dtype.itemsize
    with (gzip.open(path, "rb") if gzipped else path.open("rb")) as fh:
        raw = fh.read(size)
    try:  # the header as stored: nibabel's load replaces a zero pixdim with 1
        pixdim = np.asarray(header_class(raw, check=False)["pixdim"][1:4], dtype=float)
    except Exception:  # noqa: BLE001 - an unparsable header was already refused by nib.load
        return False
    return bool(len(pixdim) == 3 and (~np.isfinite(pixdim) | (pixdim <= 0))[: min(3, len(shape))].any())


def _read_nifti(path: Path, limits: Limits) -> tuple[Volume, str]:
    from lungseg.imaging import detect_source_kind

    try:
        img = load_nifti(path)  # nib.load, gzip through python-isal
    except Exception as exc:  # nibabel raises ImageFileError, EOFError, zlib errors, OSError...
        raise InputError(f"file {str(path)!r}: not a readable NIfTI image ({type(exc).__name__}: {exc})") from exc
    spacing_assumed = _check_nifti_header(img, path, limits)
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] > 1:
        raise InputError(
            f"file {str(path)!r}: a 4D NIfTI ({shape[3]} volumes of {shape[:3]}); give one 3D CT volume"
        )
    if len(shape) > 4 or len(shape) < 3 and len(shape) != 2:
        raise InputError(f"file {str(path)!r}: expected a 3D CT volume, got {len(shape)}D data of shape {shape}")
    if len(shape) == 2:  # a single slice stored as 2D NIfTI: give it a z axis of one slice
        img = nib.Nifti1Image(np.asanyarray(img.dataobj)[..., None], img.affine, header=img.header)
    _check_orthogonal(img.affine, f"file {str(path)!r}")
    try:
        volume = load_canonical(img, file=path)
    except DataValidationError as exc:
        raise InputError(str(exc)) from exc
    _check_not_tiny(volume.array.shape[1:], path)
    _check_spacing(volume.spacing, f"file {str(path)!r}")
    arr = volume.array
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise InputError(f"file {str(path)!r}: the image contains NaN or infinite values")
    if np.issubdtype(arr.dtype, np.bool_) or not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"file {str(path)!r}: unsupported voxel type {arr.dtype}; expected CT intensities")
    volume.meta.update({"input_kind": "nifti", "input": str(path)})
    if spacing_assumed:
        volume.meta["spacing_assumed"] = True
        volume.meta["spacing_note"] = "the header's voxel size (pixdim) is zero; 1 mm assumed"
        logger.warning("%s: the header's voxel size (pixdim) is zero; 1 mm assumed, so volumes in ml are not "
                       "reliable (report.json: spacing_assumed)", path.name)
    kind = detect_source_kind(arr)
    _warn_if_mask(arr, path)
    logger.info("read %s: NIfTI %s, canonical shape %s, spacing %s mm, intensities %s",
                path.name, volume.shape, arr.shape, volume.spacing, kind)
    return volume, kind


#: Voxel sizes a CT can have, in mm: below, a header in metres or microns; above, not a volume of slices.
SPACING_RANGE_MM = (0.1, 20.0)


def _check_spacing(spacing, where: str) -> None:
    """Refuse a voxel size no CT has (a header in the wrong unit): every volume in ml would be off by
    orders of magnitude."""
    lo, hi = SPACING_RANGE_MM
    bad = [float(s) for s in spacing if not lo <= float(s) <= hi]
    if bad:
        sz, sy, sx = (float(s) for s in spacing)
        raise InputError(
            f"{where}: a voxel size of {sz:g} x {sy:g} x {sx:g} mm (z, y, x), outside the {lo:g}-{hi:g} mm a CT "
            "can have (a header written in another unit?); fix the header's pixdim / PixelSpacing"
        )


def _check_orthogonal(affine, where: str) -> None:
    """Refuse a sheared voxel grid (a gantry tilt stored in the affine, for example): lungseg reads the
    voxel size from the axes' lengths, which a shear makes wrong, so every volume in ml would be off."""
    from lungseg.volume import MAX_SHEAR_DEG, check_affine, shear_degrees

    try:
        shear = shear_degrees(check_affine(affine))
    except DataValidationError:
        return  # a degenerate affine is refused by load_canonical, with its own message
    if shear > MAX_SHEAR_DEG:
        raise InputError(
            f"{where}: the voxel grid is sheared by {shear:.1f} degrees (its axes are not perpendicular: a "
            "gantry tilt, or a resampled oblique scan); volumes in ml would be wrong. Resample it onto an "
            "orthogonal grid first (for example dcm2niix, which corrects gantry tilt, or SimpleITK's Resample)"
        )


def _warn_if_mask(arr: np.ndarray, path: Path) -> None:
    """Log a warning when the image looks like a label map rather than a CT."""
    if arr.size and arr.min() >= 0 and arr.max() <= 3 and np.array_equal(arr, np.round(arr)):
        logger.warning("%s holds only the values 0-3: is this a mask rather than a CT?", path.name)


def _check_not_tiny(inplane: tuple[int, ...], path: Path) -> None:
    h, w = (int(s) for s in inplane)
    if min(h, w) < MIN_INPLANE_PIXELS:
        raise InputError(
            f"file {str(path)!r}: not a CT slice: the image is only {h}x{w} pixels "
            f"(at least {MIN_INPLANE_PIXELS}x{MIN_INPLANE_PIXELS} expected)"
        )


# --------------------------------------------------------------------------------------- PNG / JPEG


def _image_header_shape(path: Path) -> tuple[int, int] | None:
    """(height, width) from a PNG's or JPEG's header (PIL's lazy ``Image.open`` reads the header and no
    pixel), before cv2 decodes anything. A PNG PIL cannot open (a broken chunk after IHDR) still gets its
    IHDR size read; None for any other file PIL cannot identify (cv2's decode then says so).

    Raises:
        InputError: a header declaring more pixels than PIL's decompression-bomb bound (2 x
            ``PIL.Image.MAX_IMAGE_PIXELS``, 179 M) is refused as it is.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
    except Image.DecompressionBombError as exc:
        raise InputError(f"file {str(path)!r}: the image header declares too many pixels ({exc}); refused "
                         "before decoding") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        with path.open("rb") as fh:
            head = fh.read(24)
        if head.startswith(_PNG_MAGIC) and head[12:16] == b"IHDR":
            return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")
        return None
    return int(height), int(width)


def _read_image(path: Path, limits: Limits) -> tuple[Volume, str]:
    """A 2D grayscale slice as a one-slice volume (row 0 anterior, column 0 the patient's right)."""
    declared = _image_header_shape(path)
    if declared is not None:
        check_volume_shape((*declared, 1), f"file {str(path)!r}", limits, inplane=declared)
    raw = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED) if raw.size else None
    if img is None:
        raise InputError(f"file {str(path)!r}: not a readable PNG/JPEG image (corrupt or truncated?)")
    if img.ndim == 3:
        channels = img[..., :3] if img.shape[2] >= 3 else img[..., :1]
        if channels.shape[2] == 3 and not (
            np.array_equal(channels[..., 0], channels[..., 1]) and np.array_equal(channels[..., 0], channels[..., 2])
        ):
            # JPEG compression leaves small differences between the channels of a gray image.
            spread = int(np.max(channels.max(axis=2).astype(np.int16) - channels.min(axis=2)))
            if not (path.suffix.lower() in (".jpg", ".jpeg") and spread <= 8):
                raise InputError(
                    f"file {str(path)!r}: not a CT slice: a colour image (its 3 channels differ); "
                    "give a grayscale CT slice"
                )
        img = channels[..., 0]
    _check_not_tiny(img.shape, path)
    check_volume_shape((*img.shape[:2], 1), f"file {str(path)!r}", limits, inplane=img.shape[:2])
    if img.dtype != np.uint8:
        lo, hi = float(img.min()), float(img.max())
        logger.warning("%s is %s; rescaling its range %g..%g linearly to 0-255", path.name, img.dtype, lo, hi)
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        img = np.clip((img.astype(np.float32) - lo) * scale, 0, 255).round().astype(np.uint8)
    volume = from_canonical_array(img[None].astype(np.uint8), (1.0, 1.0, 1.0), source=str(path))
    volume.meta.update({"input_kind": "image", "input": str(path), "spacing_assumed": True,  # a picture has no voxel size
                        "spacing_note": "a 2D image has no voxel size: areas in pixels"})
    logger.info("read %s: 2D image %dx%d, intensities taken as 0-255", path.name, img.shape[0], img.shape[1])
    return volume, "uint8"


# -------------------------------------------------------------------------------------------- DICOM


def _read_zip(path: Path, limits: Limits) -> tuple[Volume, str]:
    """A zipped DICOM series: member count, sizes and ratio are checked before anything is extracted;
    the extraction folder is removed on every exit (errors, Ctrl-C, SIGTERM turned into an exception)."""
    where = f"file {str(path)!r}"
    try:
        with zipfile.ZipFile(path) as zf:
            members = check_zip(zf, where, limits)
            with scratch_dir("lungseg-dicom-") as tmp:  # swept by a later run if this one is killed
                root = Path(tmp).resolve()
                for info in members:
                    target = (root / info.filename).resolve()
                    if root not in target.parents:
                        raise InputError(f"{where}: the archive holds an unsafe path {info.filename!r}")
                for info in members:
                    try:
                        zf.extract(info, root)  # reads at most the declared size (checked above)
                    except OSError as exc:
                        if not is_disk_full(exc):
                            raise
                        need = sum(i.file_size for i in members) / 1e6
                        raise InputError(
                            f"{where}: no space left in the temporary folder {str(root.parent)!r} while "
                            f"extracting the series ({need:,.0f} MB in all); free some space or set TMPDIR to "
                            "a folder with more room") from exc
                series = dicom.read_series_folder(root, origin=path, limits=limits)
                return _read_dicom(path, series)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as exc:
        raise InputError(f"{where}: not a readable .zip archive ({type(exc).__name__}: {exc})") from exc


def _read_dicom(path: Path, series: dicom.DicomSeries) -> tuple[Volume, str]:
    img = nib.Nifti1Image(series.data_xyz, series.affine_ras)
    volume = load_canonical(img, file=path)
    _check_not_tiny(volume.array.shape[1:], path)
    _check_spacing(volume.spacing, f"file {str(path)!r}")
    volume.meta.update(
        {
            "input_kind": "dicom",
            "input": str(path),
            "series_uid": series.series_uid,
            "series_description": series.description,
            "n_series": series.n_series,
        }
    )
    if series.spacing_assumed:
        volume.meta.update(spacing_assumed=True, spacing_note="the DICOM series has no PixelSpacing; 1 mm pixels assumed")
    return volume, "hu"
