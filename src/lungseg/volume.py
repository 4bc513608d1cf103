"""Volumes in lungseg's canonical orientation, the way back to the file's own grid, and masks read onto a CT's grid.

Canonical means: reoriented with nibabel to axis codes ``("L", "P", "S")`` and transposed to ``(z, y, x)``.
``vol.array[k]`` is then an axial slice in the radiological view: row 0 is anterior, column 0 is the
patient's right, and the left lung has the larger column index (see docs/architecture.md).

:func:`load_mask` is the one reader of label masks on their CT's grid: the dataset's masks at ingestion
(:mod:`lungseg.ingest`), and the ground truth of the CLI batch and of the web UI
(:mod:`lungseg.inference.ground_truth`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as nio

from lungseg.errors import DataValidationError

logger = logging.getLogger(__name__)

CANONICAL_AXCODES = ("L", "P", "S")


@dataclass
class Volume:
    """A 3D image in canonical (z, y, x) order with what is needed to go back to its file.

    Attributes:
        array: canonical (z, y, x) data, in the file's own dtype (HU, 0-255, or labels).
        spacing: voxel size in mm as (sz, sy, sx).
        affine: the affine of the file's own grid.
        shape: the shape of the file's own data array.
        ornt: nibabel orientation transform from the file's grid to canonical LPS (x, y, z).
        header: the file's header, if any, reused when writing outputs.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    shape: tuple[int, ...]
    ornt: np.ndarray
    header: nib.Nifti1Header | None = None
    source: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres."""
        return float(np.prod(self.spacing)) / 1000.0

    def to_original(self, arr_zyx: np.ndarray) -> np.ndarray:
        """Map a canonical (z, y, x) array back onto the file's own grid (exact inverse)."""
        if arr_zyx.shape != self.array.shape:
            raise ValueError(
                f"array of shape {arr_zyx.shape} does not match the canonical shape {self.array.shape}"
            )
        xyz = arr_zyx.transpose(2, 1, 0)
        inverse = nio.ornt_transform(nio.axcodes2ornt(CANONICAL_AXCODES), self.ornt_source)
        return np.ascontiguousarray(nio.apply_orientation(xyz, inverse))

    @property
    def ornt_source(self) -> np.ndarray:
        """The orientation of the file's own axes."""
        return nio.io_orientation(self.affine)

    def to_nifti(self, arr_zyx: np.ndarray, dtype=np.uint8) -> nib.Nifti1Image:
        """A NIfTI image of a canonical array, written on the file's own grid and affine."""
        data = self.to_original(np.asarray(arr_zyx)).astype(dtype, copy=False)
        header = self.header.copy() if self.header is not None else None
        img = nib.Nifti1Image(data, self.affine, header=header)
        img.set_data_dtype(dtype)
        img.header.set_slope_inter(1, 0)
        img.set_qform(self.affine, code=1)
        img.set_sform(self.affine, code=1)
        return img


_GZIP_MAGIC = b"\x1f\x8b"


def load_nifti(path: str | Path) -> nib.spatialimages.SpatialImage:
    """``nib.load`` for a volume that is read right away (inference, ground truth): a gzipped file is
    decompressed by python-isal's ``igzip`` (Intel ISA-L, about twice zlib's speed) when it is installed,
    through nibabel's own reader (a file map on the ``igzip`` stream), so header handling, scaling and
    memory are nibabel's. The stream stays open until the image is dropped. Lazy, picklable images
    (the Kedro datasets) keep ``nib.load``."""
    path = Path(path)
    _one_nibabel_handler()
    img = nib.load(str(path))
    try:
        from isal import igzip
    except ImportError:  # pragma: no cover - isal is a dependency; plain zlib still works
        return img
    with path.open("rb") as fh:
        if fh.read(2) != _GZIP_MAGIC:
            return img
    stream = igzip.open(path, "rb")
    file_map = type(img).make_file_map({"image": stream, "header": stream})
    nib_logger = logging.getLogger(NIBABEL_LOGGER)
    nib_logger.addFilter(_drop_all)  # the same header parsed again: nib.load said what it fixed
    try:
        return type(img).from_file_map(file_map)
    finally:
        nib_logger.removeFilter(_drop_all)


#: The logger nibabel reports the header problems it fixes to (``pixdim[0] (qfac) should be 1 ...``).
NIBABEL_LOGGER = "nibabel.global"


def _drop_all(record: logging.LogRecord) -> bool:
    return False


def _one_nibabel_handler() -> None:
    """nibabel gives its logger a bare stderr handler of its own. Once the application has configured
    logging (the root logger has a handler: the CLI, Kedro), every message would print twice, once bare
    and once formatted; the bare handler is dropped then (a script without logging keeps it)."""
    if not logging.getLogger().handlers:
        return
    nib_logger = logging.getLogger(NIBABEL_LOGGER)
    for handler in list(nib_logger.handlers):
        if type(handler) is logging.StreamHandler and handler.formatter is None:
            nib_logger.removeHandler(handler)


def canonical_spacing(img: nib.spatialimages.SpatialImage) -> tuple[float, float, float]:
    """Voxel spacing (sz, sy, sx) in mm after canonical reorientation."""
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
    ornt = nio.ornt_transform(nio.io_orientation(img.affine), nio.axcodes2ornt(CANONICAL_AXCODES))
    # ornt[i, 0] is the output axis of input axis i.
    out = np.empty(3)
    for i in range(3):
        out[int(ornt[i, 0])] = zooms[i]
    return float(out[2]), float(out[1]), float(out[0])


def to_canonical_array(img: nib.spatialimages.SpatialImage, data: np.ndarray | None = None) -> np.ndarray:
    """Reorient a 3D image's data (x, y, z in its own axes) to canonical (z, y, x)."""
    arr = np.asanyarray(img.dataobj) if data is None else data
    ornt = nio.ornt_transform(nio.io_orientation(img.affine), nio.axcodes2ornt(CANONICAL_AXCODES))
    return np.ascontiguousarray(nio.apply_orientation(arr, ornt).transpose(2, 1, 0))


def check_affine(affine, *, case: str | None = None, file: str | Path | None = None) -> np.ndarray:
    """``affine`` as a float 4x4 array if it maps voxels to the world (finite, invertible); else a
    :class:`DataValidationError` naming the case and the file (a zero, NaN or singular affine)."""
    try:
        aff = np.asarray(affine, dtype=float)
    except (TypeError, ValueError):
        aff = np.full((4, 4), np.nan)
    if aff.shape != (4, 4) or not np.isfinite(aff).all():
        raise DataValidationError(f"degenerate affine (not a finite 4x4 matrix): {aff.tolist()}", case=case, file=file)
    det = float(np.linalg.det(aff[:3, :3]))
    scale = float(np.prod(np.linalg.norm(aff[:3, :3], axis=0)))
    if scale <= 0 or abs(det) < 1e-6 * scale or abs(det) < 1e-12:
        raise DataValidationError(
            f"degenerate affine (zero or not invertible, determinant {det:.3g}): {np.round(aff, 4).tolist()}",
            case=case,
            file=file,
        )
    return aff


#: The largest deviation from 90 degrees between two voxel axes that is taken for rounding in the header
#: (a sheared grid beyond it is refused: its voxels are not boxes, so spacing and volumes would be wrong).
MAX_SHEAR_DEG = 0.5


def shear_degrees(affine) -> float:
    """How far the voxel axes of ``affine`` are from orthogonal: the largest deviation from 90 degrees
    between two of its columns (0 for any rotation or flip; a gantry tilt of t degrees gives t)."""
    cols = np.asarray(affine, dtype=float)[:3, :3]
    unit = cols / np.linalg.norm(cols, axis=0)
    cos = [abs(float(unit[:, i] @ unit[:, j])) for i, j in ((0, 1), (0, 2), (1, 2))]
    return float(np.degrees(np.arcsin(min(1.0, max(cos)))))


def geometry_mismatch(
    affine_a, shape_a, affine_b, shape_b, *, spacing_rel: float, direction: float, origin_mm: float
) -> str | None:
    """Why two images do not share a voxel grid (shape, orientation, spacing, direction, origin), or None.

    Both affines must be valid (:func:`check_affine`). Shapes are compared on their first three axes.
    """
    sa, sb = tuple(int(s) for s in shape_a[:3]), tuple(int(s) for s in shape_b[:3])
    if sa != sb:
        return f"shape {sb} differs from {sa}"
    a, b = np.asarray(affine_a, float), np.asarray(affine_b, float)
    codes_a, codes_b = nib.aff2axcodes(a), nib.aff2axcodes(b)
    if codes_a != codes_b:
        return f"orientation {''.join(codes_b)} differs from {''.join(codes_a)} (a flipped or transposed axis)"
    za, zb = np.linalg.norm(a[:3, :3], axis=0), np.linalg.norm(b[:3, :3], axis=0)
    if np.any(np.abs(za - zb) > spacing_rel * np.maximum(za, zb)):
        return f"spacing {np.round(zb, 4).tolist()} mm differs from {np.round(za, 4).tolist()} mm"
    if np.any(np.abs(a[:3, :3] / za - b[:3, :3] / zb) > direction):
        return "direction cosines differ (a rotated grid)"
    if np.any(np.abs(a[:3, 3] - b[:3, 3]) > origin_mm):
        return f"origin {np.round(b[:3, 3], 2).tolist()} mm differs from {np.round(a[:3, 3], 2).tolist()} mm"
    return None


def load_canonical(
    img: nib.spatialimages.SpatialImage,
    *,
    case: str | None = None,
    file: str | Path | None = None,
    dtype=None,
) -> Volume:
    """Read a nibabel image into a canonical :class:`Volume`.

    The data is read in its stored dtype (no float64 ``get_fdata``), unless the header asks for a
    scale, in which case float32 is used. Raises :class:`DataValidationError` naming the case and
    the file when the file is unreadable, truncated or not 3D, or its affine is degenerate.
    """
    file = file if file is not None else getattr(img, "get_filename", lambda: None)()
    check_affine(img.affine, case=case, file=file)
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise DataValidationError(
            f"expected a 3D volume, got {len(img.shape)}D data of shape {tuple(img.shape)}",
            case=case,
            file=file,
        )
    try:
        slope, inter = img.dataobj.slope, img.dataobj.inter  # ArrayProxy
        scaled = not (
            (slope is None or np.isnan(slope) or slope == 1) and (inter is None or np.isnan(inter) or inter == 0)
        )
    except AttributeError:
        scaled = False
    try:
        if scaled:
            data = img.get_fdata(dtype=np.float32)
        else:
            data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many kinds (EOFError, zlib.error, OSError...)
        raise DataValidationError(
            f"cannot read the image data (truncated or corrupt file?): {type(exc).__name__}: {exc}",
            case=case,
            file=file,
        ) from exc
    if data.ndim == 4:
        data = data[..., 0]
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    arr = to_canonical_array(img, data)
    ornt = nio.ornt_transform(nio.io_orientation(img.affine), nio.axcodes2ornt(CANONICAL_AXCODES))
    header = img.header if isinstance(img.header, nib.Nifti1Header) else None
    return Volume(
        array=arr,
        spacing=canonical_spacing(img),
        affine=np.asarray(img.affine, dtype=float),
        shape=tuple(int(s) for s in data.shape),
        ornt=ornt,
        header=header,
        source=None if file is None else str(file),
    )


def from_canonical_array(
    arr_zyx: np.ndarray,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    source: str | None = None,
) -> Volume:
    """Wrap a canonical (z, y, x) array (from DICOM, PNG or memory) as a Volume with an LPS affine."""
    sz, sy, sx = (float(s) for s in spacing)
    affine = np.diag([-sx, -sy, sz, 1.0])
    xyz = np.ascontiguousarray(np.asarray(arr_zyx).transpose(2, 1, 0))
    ornt = nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt(CANONICAL_AXCODES))
    return Volume(
        array=np.ascontiguousarray(arr_zyx),
        spacing=(sz, sy, sx),
        affine=affine,
        shape=tuple(int(s) for s in xyz.shape),
        ornt=ornt,
        source=source,
    )


# ---------------------------------------------------------------------------------- masks on a CT's grid


def describe_shape(shape: Sequence[int], is_2d: bool) -> str:
    """A canonical shape in words: ``HxW pixels`` for a 2D image, ``(z, y, x)`` for a volume."""
    if is_2d and len(shape) == 3 and shape[0] == 1:
        return f"{shape[1]}x{shape[2]} pixels"
    return f"{tuple(int(s) for s in shape)} (z, y, x)"


def _canonical_shape(img: nib.spatialimages.SpatialImage) -> tuple[int, int, int]:
    """The (z, y, x) shape of a 3D image once reoriented, from its header (no voxel is read)."""
    ornt = nio.ornt_transform(nio.io_orientation(img.affine), nio.axcodes2ornt(CANONICAL_AXCODES))
    xyz = [0, 0, 0]
    for i in range(3):
        xyz[int(ornt[i, 0])] = int(img.shape[i])
    return xyz[2], xyz[1], xyz[0]


def _mask_grid(img, ct: Volume, tolerance, *, what: str, case, file) -> None:
    """The grid checks of :func:`load_mask` (header only)."""
    if isinstance(img, np.ndarray):  # a 2D image's mask: no affine, its canonical shape is all there is
        shape, ct_shape = img.shape, tuple(int(s) for s in ct.array.shape)
        stored = False
    else:
        check_affine(img.affine, case=case, file=file)
        stored = tolerance is not None
        if stored:
            shape, ct_shape = tuple(int(s) for s in img.shape[:3]), tuple(int(s) for s in ct.shape[:3])
        else:
            shape = _canonical_shape(img) if len(img.shape) >= 3 else tuple(int(s) for s in img.shape)
            ct_shape = tuple(int(s) for s in ct.array.shape)
    if shape != ct_shape:
        if stored:  # the shapes as stored in the files
            mine, theirs, ct_file = str(shape), str(ct_shape), f" ({ct.source!r})" if ct.source else ""
        else:
            is_2d = isinstance(img, np.ndarray) or ct_shape[0] == 1
            mine, theirs, ct_file = describe_shape(shape, is_2d), describe_shape(ct_shape, is_2d), ""
        raise DataValidationError(
            f"{what}'s shape {mine} does not match the CT's shape {theirs}{ct_file}; they must be on the same grid",
            case=case, file=file,
        )
    if isinstance(img, np.ndarray):
        return
    if stored:
        why = geometry_mismatch(ct.affine, ct.shape, img.affine, img.shape, **tolerance)
        if why:
            raise DataValidationError(
                f"{what} is not on the grid of its CT {ct.source!r}: its {why}; the labels would be misaligned",
                case=case, file=file,
            )
        return
    codes, ct_codes = nib.aff2axcodes(img.affine), nib.aff2axcodes(ct.affine)
    if codes != ct_codes:
        logger.warning("case %s: %s %s is oriented %s, the CT %s; compared after reorienting both",
                       case, what, file, "".join(codes), "".join(ct_codes))


def load_mask(
    img: nib.spatialimages.SpatialImage | np.ndarray,
    ct: Volume,
    *,
    what: str = "the mask",
    case: str | None = None,
    file: str | Path | None = None,
    tolerance: Mapping[str, float] | None = None,
    labels: Sequence[int] | None = None,
) -> np.ndarray:
    """Read a label mask onto the canonical (z, y, x) grid of its CT, checking its grid and its values.

    The one mask and grid reader: the dataset's masks at ingestion, and the ground truth of the CLI batch
    and of the web UI (which then map 0/255 and labels x 85 to labels, see
    :func:`lungseg.inference.ground_truth.normalise_labels`).

    Args:
        img: a 3D nibabel image, or the canonical array of a 2D image's mask (a PNG read as ``(1, H, W)``),
            which has no grid of its own: only its shape is compared.
        ct: the canonical :class:`Volume` of the CT (its ``source`` names it in messages).
        what: the mask in messages (``"lung_mask"``, ``"the ground-truth mask"``).
        case, file: the case and the mask's file, for messages.
        tolerance: the keyword arguments of :func:`geometry_mismatch` (``spacing_rel``, ``direction``,
            ``origin_mm``). Given, the mask must be stored on the CT's own grid: the same stored shape,
            the same orientation (a flipped or transposed axis would mirror the labels) and an affine within
            the tolerance. None: the mask is reoriented like the CT and its canonical shape must be the CT's;
            another orientation is only logged.
        labels: the allowed label values (a range from 0); default any whole number 0-255.

    Returns:
        The mask as uint8 (z, y, x), in memory (never a view of the file's data).

    Raises:
        DataValidationError: naming the case and the file: a degenerate affine, unreadable or non-3D data,
            another shape or grid than the CT's, NaN, fractions, or values outside ``labels``.
    """
    _mask_grid(img, ct, tolerance, what=what, case=case, file=file)
    arr = img if isinstance(img, np.ndarray) else load_canonical(img, case=case, file=file).array
    expected = f"labels {tuple(labels)}" if labels is not None else "whole numbers 0-255"
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.isfinite(arr).all():
            raise DataValidationError(f"{what} holds NaN or infinite values; expected {expected}", case=case, file=file)
        if not np.array_equal(arr, np.round(arr)):
            raise DataValidationError(f"{what} holds non-integer values; expected {expected}", case=case, file=file)
    if arr.dtype != np.uint8 or labels is not None:
        top = max(labels) if labels is not None else 255
        lo, hi = (arr.min(), arr.max()) if arr.size else (0, 0)
        if lo < 0 or hi > top:
            found = np.unique(arr[(arr < 0) | (arr > top)])[:5].tolist()
            where = f"its label set {tuple(labels)}" if labels is not None else "0-255"
            raise DataValidationError(f"{what} holds value(s) {found} outside {where}", case=case, file=file)
    out = arr.astype(np.uint8, copy=False)
    return np.array(out) if out.base is not None else out
