"""What the page's viewers show, as pure functions (no Streamlit): display windows, the NIfTI
images the NiiVue viewer loads, the lesions to step through, and the PNG slice views (axial, coronal,
sagittal through one point, with L/R markers) used for 2D inputs and when WebGL is unavailable.

Everything is computed on the canonical (z, y, x) grid of :mod:`lungseg.volume` (row 0 anterior,
column 0 the patient's right, z towards the head); the NIfTI images for NiiVue go back to the
input's own grid and affine, so NiiVue places them in the scanner's space and draws them in the
radiological convention (patient's right on the left of the screen).
"""

from __future__ import annotations

import gzip

import numpy as np

#: Display windows (level, width) in HU. "Lung" and "Mediastinum" are the usual radiology presets;
#: "Model input" is the window the models were trained with (lungseg.imaging.HU_WINDOW).
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "Lung (-600/1500)": (-600.0, 1500.0),
    "Mediastinum (40/400)": (40.0, 400.0),
    "Model input (-500/1500)": (-500.0, 1500.0),
}
#: NiiVue colormaps of the overlays (their lowest value is transparent). NiiVue's crosshair is red:
#: the error map uses no red, so its false positives are not mistaken for the crosshair.
OVERLAY_COLORMAPS = {"lungs": "green", "infection": "red", "tp": "green", "fp": "violet", "fn": "blue"}
#: Error-map codes and their legend (colour names as NiiVue and Streamlit markdown know them).
ERROR_CODES = {1: ("true positive", "green"), 2: ("false positive", "violet"), 3: ("false negative", "blue")}
#: RGB of the error-map codes in the PNG views.
ERROR_RGB = {1: (40, 200, 60), 2: (190, 70, 235), 3: (50, 110, 255)}


def window_bounds(level: float, width: float) -> tuple[float, float]:
    """(low, high) HU of a window given as level and width."""
    return level - width / 2.0, level + width / 2.0


def display_volume(array: np.ndarray, source_kind: str, preset: str | tuple[float, float] | None) -> np.ndarray:
    """The CT as uint8 0-255 for display: HU through a window (a preset's name, or a free (level, width)
    in HU); a 0-255 input as it is."""
    from lungseg.imaging import window_to_uint8

    if source_kind == "hu":
        level, width = preset if isinstance(preset, tuple) else WINDOW_PRESETS[preset or next(iter(WINDOW_PRESETS))]
        return np.asarray(window_to_uint8(array, "hu", window_bounds(level, width)), dtype=np.uint8)
    return np.asarray(window_to_uint8(array, source_kind), dtype=np.uint8)


def display_grid(volume):
    """``volume`` on the grid the figures use: with a voxel-size override (``lungseg predict --spacing``,
    the page's voxel-size field) its affine rescaled to it (``meta["affine_mm"]``), so the views are not
    squashed and positions in mm match the lesion table; else ``volume`` itself."""
    import dataclasses

    from lungseg.inference.export import world_affine

    affine = world_affine(volume)
    return volume if affine is volume.affine else dataclasses.replace(volume, affine=affine)


def _gz(img, cal_min: float, cal_max: float) -> bytes:
    img.header["cal_min"] = float(cal_min)
    img.header["cal_max"] = float(cal_max)
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)  # the same bytes for the same image


def nifti_gz(volume, arr_zyx: np.ndarray, cal_max: float, cal_min: float = 0.0, dtype=np.uint8) -> bytes:
    """A gzipped NIfTI of a canonical array on the input's own grid (the figures' voxel size), displayed
    over cal_min..cal_max. Deterministic (no time stamp), so NiiVue sees the same data as the same."""
    return _gz(display_grid(volume).to_nifti(np.asarray(arr_zyx).astype(dtype, copy=False), dtype), cal_min, cal_max)


#: Above this many voxels, the NiiVue view gets the volume at half resolution in-plane: its data go
#: to the browser once per upload (a gzipped 16-bit HU NIfTI of a synthetic phantom takes about one
#: byte per voxel: some 80 MB for 512 x 512 x 300). The PNG slice views, the masks, the downloads and
#: every figure keep the full grid.
MAX_VIEWER_VOXELS = 40_000_000
#: HU sent to NiiVue: the CT's own values (the footer shows HU at the crosshair), clipped to int16-safe bounds.
VIEWER_HU_RANGE = (-1024.0, 3071.0)


def viewer_factor(shape) -> int:
    """The in-plane reduction of the NiiVue view: 1, or 2 for a volume over :data:`MAX_VIEWER_VOXELS`."""
    return 2 if int(np.prod(shape)) > MAX_VIEWER_VOXELS else 1


def viewer_ct(volume, source_kind: str, factor: int = 1) -> bytes:
    """The CT as NiiVue gets it, once per upload: HU input as int16 HU (so NiiVue's footer reads HU at
    the crosshair and its own contrast controls reach every tissue), opening in the first window preset;
    0-255 input as it is (0..255)."""
    if source_kind == "hu":
        arr = np.clip(np.rint(np.asarray(volume.array, np.float32)), *VIEWER_HU_RANGE).astype(np.int16)
        low, high = window_bounds(*next(iter(WINDOW_PRESETS.values())))
        return viewer_nifti(volume, arr, high, factor, cal_min=low, dtype=np.int16)
    return viewer_nifti(volume, display_volume(volume.array, source_kind, None), 255, factor)


def viewer_nifti(volume, arr_zyx: np.ndarray, cal_max: float, factor: int = 1, masks: bool = False,
                 cal_min: float = 0.0, dtype=np.uint8) -> bytes:
    """:func:`nifti_gz`, or for ``factor`` 2 the array at half resolution in y and x, on the canonical grid
    with an affine that puts each 2 x 2 block at its centre in scanner space. Images are averaged; masks
    (``masks``) take the block's maximum, so a one-voxel lesion stays visible."""
    import nibabel as nib
    import nibabel.orientations as nio

    if factor == 1:
        return nifti_gz(volume, arr_zyx, cal_max, cal_min, dtype)
    arr = np.asarray(arr_zyx)
    ny, nx = (arr.shape[1] // factor) * factor, (arr.shape[2] // factor) * factor
    parts = [arr[:, i:ny:factor, j:nx:factor] for i in range(factor) for j in range(factor)]
    if masks:
        small = np.maximum.reduce(parts)
    else:
        total = np.zeros(parts[0].shape, np.int32)
        for part in parts:
            total += part
        small = np.floor_divide(total + len(parts) // 2, len(parts))
    grid = display_grid(volume)
    canonical = np.asarray(grid.affine, float) @ nio.inv_ornt_aff(np.asarray(grid.ornt), tuple(grid.shape[:3]))
    shift = (factor - 1) / 2.0
    scale = np.array([[factor, 0, 0, shift], [0, factor, 0, shift], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    img = nib.Nifti1Image(np.ascontiguousarray(small.astype(dtype).transpose(2, 1, 0)), canonical @ scale)
    return _gz(img, cal_min, cal_max)


def error_map(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """uint8 codes: 1 true positive, 2 false positive, 3 false negative, 0 elsewhere."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    out = np.zeros(pred.shape, np.uint8)
    out[pred & truth] = 1
    out[pred & ~truth] = 2
    out[~pred & truth] = 3
    return out


# ------------------------------------------------------------------------------------------ lesions


def lesion_points(infection: np.ndarray) -> list[tuple[int, int, int]]:
    """A voxel (z, y, x) on each lesion, in the lesion table's order (:func:`lungseg.inference.export.lesion_components`:
    3D 26-connected components, largest first, so a joined region is one lesion): the centroid rounded,
    moved onto the lesion in its slice when the lesion is curved around it (or to its nearest voxel)."""
    from scipy import ndimage

    from lungseg.inference.export import lesion_components

    mask = np.asarray(infection) > 0
    if not mask.any():
        return []
    labels, _, order = lesion_components(mask)
    points = []
    for k, centre in zip(order, ndimage.center_of_mass(mask, labels, order)):
        z, y, x = (int(round(c)) for c in centre)
        if labels[z, y, x] != k:
            region = labels[z] == k
            if region.any():  # onto the lesion, in the centroid's slice
                ys, xs = np.nonzero(region)
                j = int(np.argmin((ys - y) ** 2 + (xs - x) ** 2))
                y, x = int(ys[j]), int(xs[j])
            else:  # no voxel in that slice: the lesion's nearest voxel
                zs, ys, xs = np.nonzero(labels == k)
                j = int(np.argmin((zs - z) ** 2 + (ys - y) ** 2 + (xs - x) ** 2))
                z, y, x = int(zs[j]), int(ys[j]), int(xs[j])
        points.append((z, y, x))
    return points


def start_point(lungs: np.ndarray, infection: np.ndarray) -> tuple[int, int, int]:
    """Where the views open: the slice with the most infection (else the most lung), at the centre
    of the infection (or lung) in that slice; the middle of the volume when both are empty."""
    for mask in (np.asarray(infection) > 0, np.asarray(lungs) > 0):
        counts = np.count_nonzero(mask.reshape(mask.shape[0], -1), axis=1)
        if counts.size and counts.max() > 0:
            z = int(np.argmax(counts))
            ys, xs = np.nonzero(mask[z])
            return z, int(round(ys.mean())), int(round(xs.mean()))
    return tuple(int(s // 2) for s in np.asarray(lungs).shape)  # type: ignore[return-value]


def position_mm(volume, point_zyx: tuple[int, int, int]) -> tuple[float, float, float]:
    """Scanner (x, y, z) mm, as in the NIfTI's RAS+ world (on the figures' voxel size), of a canonical voxel (z, y, x)."""
    import nibabel.orientations as nio

    from lungseg.inference.export import world_affine

    z, y, x = point_zyx
    to_file = nio.inv_ornt_aff(np.asarray(volume.ornt), tuple(volume.shape[:3]))  # canonical (x, y, z) -> file ijk
    world = world_affine(volume) @ to_file @ np.array([x, y, z, 1.0])
    return float(world[0]), float(world[1]), float(world[2])


# ------------------------------------------------------------------------------------ PNG slice views


def _resize(rgb: np.ndarray, row_mm: float, col_mm: float, width: int) -> np.ndarray:
    """Resize a view to ``width`` pixels wide with square millimetres."""
    import cv2

    rows, cols = rgb.shape[:2]
    height = max(1, int(round(width * (rows * row_mm) / max(cols * col_mm, 1e-6))))
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_NEAREST)


def _mark(rgb: np.ndarray, left: str, right: str) -> np.ndarray:
    """Write orientation letters at the middle of the left and right edges."""
    import cv2

    out = np.ascontiguousarray(rgb)
    h, w = out.shape[:2]
    scale = max(0.35, w / 700)
    for text, x in ((left, 4), (right, w - int(16 * scale) - 4)):
        cv2.putText(out, text, (x, h // 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 0), max(1, int(scale * 2)))
    return out


def blend(gray: np.ndarray, codes: np.ndarray, colours: dict[int, tuple[int, int, int]], opacity: float) -> np.ndarray:
    """RGB of a uint8 slice with label codes blended at ``opacity``."""
    return blend_layers(gray, [(codes, colours, opacity)])


#: One overlay layer: (label codes, {code: RGB}, opacity).
Layer = tuple[np.ndarray, dict[int, tuple[int, int, int]], float]


def blend_layers(gray: np.ndarray, layers: list[Layer]) -> np.ndarray:
    """RGB of a uint8 slice with each layer's codes blended at its opacity, in order."""
    rgb = np.repeat(np.asarray(gray, np.uint8)[..., None], 3, axis=2).astype(np.float32)
    for codes, colours, opacity in layers:
        for code, colour in colours.items():
            where = np.asarray(codes) == code
            rgb[where] = (1 - opacity) * rgb[where] + opacity * np.asarray(colour, np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def orthogonal_views(
    gray: np.ndarray,
    layers: list[Layer],
    point: tuple[int, int, int],
    spacing: tuple[float, float, float],
    width: int = 360,
) -> dict[str, np.ndarray]:
    """Axial, coronal and sagittal RGB views through ``point`` (z, y, x), radiological convention.

    Axial and coronal: the patient's right on the left ("R" / "L" marked); sagittal: anterior on
    the left ("A" / "P"). Coronal and sagittal show the head at the top. ``spacing`` is (z, y, x) mm;
    ``layers`` are (codes volume, colours, opacity), blended in order.
    """
    z, y, x = point
    sz, sy, sx = (float(s) for s in spacing)
    cuts = {
        "Axial": (lambda a: a[z], sy, sx, ("R", "L")),
        "Coronal": (lambda a: a[::-1, y, :], sz, sx, ("R", "L")),
        "Sagittal": (lambda a: a[::-1, :, x], sz, sy, ("A", "P")),
    }
    views = {}
    for name, (cut, row_mm, col_mm, marks) in cuts.items():
        rgb = blend_layers(cut(gray), [(cut(codes), colours, opacity) for codes, colours, opacity in layers])
        views[name] = _mark(_resize(rgb, row_mm, col_mm, width), *marks)
    return views
