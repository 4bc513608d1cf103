"""The composition of image operations used by preprocessing, evaluation, inference and the UI.

Keeping this in one place is what prevents train/serve skew: every caller turns a CT volume into
model-input slices with :func:`prepare_slices` and maps predictions back with :func:`restore_slices`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

from lungseg.errors import ConfigError, DataValidationError
from lungseg.imaging.crop import body_box, lung_box
from lungseg.imaging.intensity import HU_WINDOW, _check_window, apply_clahe, window_to_uint8
from lungseg.imaging.resize import ResizeRecord, crop_pad_resize, records_from_array, uncrop_unresize, unresize_box

logger = logging.getLogger(__name__)

CROP_MODES = ("body", "lung_mask")
_PROGRESS_MIN_SLICES = 64
#: Neighbouring slices whose (64 px, standardised) images correlate less than this are not neighbours:
#: a gap in a stack of selected slices. Contiguous CT correlates above 0.9 (the covid20-dev stacks:
#: 0.90-0.99 within a run, 0.50-0.65 across their gaps).
CONTEXT_MIN_CORRELATION = 0.8
_CORRELATION_PX = 64


@dataclass(frozen=True)
class PreprocessConfig:
    """Preprocessing settings; saved with every model (``model_config.json``) so inference matches training.

    ``clahe_clip_limit`` 0 disables CLAHE. ``body_threshold`` None uses Otsu's threshold.
    """

    image_size: int = 224
    crop_mode: str = "body"  # 'body' | 'lung_mask'
    window: tuple[float, float] = HU_WINDOW
    clahe_clip_limit: float = 2.0
    clahe_tile_grid: int = 8
    crop_margin: int = 4
    body_threshold: int | None = None
    #: 2.5D input: each slice is given with its ``(context - 1) / 2`` neighbours on either side as
    #: channels (1: a plain 2D slice; 3 or 5: a 2.5D stack, channels last, the slice itself in the middle).
    context: int = 1

    def __post_init__(self) -> None:
        size = self.image_size
        if isinstance(size, float) and size.is_integer():
            size = int(size)
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
            raise ConfigError(f"image_size must be an integer number of pixels, got {self.image_size!r}")
        if size < 8:
            raise ConfigError(f"image_size must be >= 8 pixels, got {size}")
        if self.crop_mode not in CROP_MODES:
            raise ConfigError(f"crop_mode must be one of {CROP_MODES}, got {self.crop_mode!r}")
        try:
            clip = float(self.clahe_clip_limit)
            grid = int(self.clahe_tile_grid)
            margin = int(self.crop_margin)
            thr = None if self.body_threshold is None else int(self.body_threshold)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad preprocessing parameter: {exc}") from exc
        if not clip >= 0:
            raise ConfigError(f"clahe_clip_limit must be >= 0 (0 disables CLAHE), got {self.clahe_clip_limit}")
        if grid < 1:
            raise ConfigError(f"clahe_tile_grid must be >= 1, got {self.clahe_tile_grid}")
        if margin < 0:
            raise ConfigError(f"crop_margin must be >= 0, got {self.crop_margin}")
        if thr is not None and not 0 <= thr <= 255:
            raise ConfigError(f"body_threshold must be None or in 0..255, got {self.body_threshold}")
        context = self.context
        if isinstance(context, float) and context.is_integer():
            context = int(context)
        if isinstance(context, bool) or not isinstance(context, (int, np.integer)) or context < 1 or context % 2 == 0:
            raise ConfigError(f"context must be an odd number of slices >= 1 (1: 2D, 3 or 5: 2.5D), got {self.context!r}")
        # normalise to plain Python types so to_dict() is JSON-serialisable
        for name, value in (
            ("image_size", int(size)),
            ("window", _check_window(self.window)),
            ("clahe_clip_limit", clip),
            ("clahe_tile_grid", grid),
            ("crop_margin", margin),
            ("body_threshold", thr),
            ("context", int(context)),
        ):
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (``window`` as a list)."""
        d = dataclasses.asdict(self)
        d["window"] = [float(w) for w in self.window]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PreprocessConfig:
        """Build from a dict such as ``model_config.json``; unknown keys (``task``, ``architecture``,
        ``threshold``...) are ignored and missing ones take their defaults. Raises :class:`ConfigError`
        on bad values. The ``preprocessing`` parameters are checked by name before they get here
        (:func:`lungseg.models.inputs.check_preprocessing_params`)."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"preprocessing config must be a dict, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        return cls(**kw)


def _progress(n: int, progress: bool | None, desc: str):
    show = n >= _PROGRESS_MIN_SLICES if progress is None else progress
    return tqdm(range(n), desc=desc, unit="slice", leave=False, disable=not show)


def enhance(ct: np.ndarray, source_kind: str, config: PreprocessConfig) -> np.ndarray:
    """Intensity stage: CT ``(Z, H, W)`` or ``(H, W)`` (HU or 0-255, native dtype) -> ``uint8`` of the same
    shape: ``window_to_uint8`` then ``apply_clahe`` (skipped when ``clahe_clip_limit`` is 0).

    Done once per case; :func:`crop_and_resize` takes it from there.
    """
    vol = np.asarray(ct)
    if vol.ndim not in (2, 3) or 0 in vol.shape:
        raise DataValidationError(f"expected a non-empty (Z, H, W) CT volume, got shape {vol.shape}")
    u8 = window_to_uint8(vol, source_kind, config.window)
    if config.clahe_clip_limit > 0:
        return apply_clahe(u8, config.clahe_clip_limit, config.clahe_tile_grid)
    return u8.copy() if u8 is vol else u8


def slice_breaks(image_u8: np.ndarray, min_correlation: float = CONTEXT_MIN_CORRELATION) -> np.ndarray:
    """``bool (Z - 1,)``: True where slices ``z`` and ``z + 1`` are not neighbours in the body.

    Their images, shrunk to 64 px and standardised, correlate below ``min_correlation``: a stack of
    selected slices with a gap (as the covid20-dev stacks have), or two patients in one file.
    """
    img = np.asarray(image_u8)
    if img.ndim != 3:
        raise DataValidationError(f"slice_breaks expects a (Z, H, W) volume, got shape {img.shape}")
    if img.shape[0] < 2:
        return np.zeros(0, dtype=bool)
    px = _CORRELATION_PX
    small = np.stack([cv2.resize(np.asarray(s, np.float32), (px, px), interpolation=cv2.INTER_AREA)
                      for s in img]).reshape(img.shape[0], -1)
    small -= small.mean(axis=1, keepdims=True)
    norm = np.sqrt((small * small).mean(axis=1))
    flat = norm < 1e-3  # a uniform slice: its neighbour relation is unknown, keep it
    small /= np.where(flat, 1.0, norm)[:, None]
    r = (small[1:] * small[:-1]).mean(axis=1)
    return (r < min_correlation) & ~flat[1:] & ~flat[:-1]


def context_neighbours(n_slices: int, context: int, breaks: np.ndarray | None = None) -> np.ndarray:
    """``int (Z, context)``: the slice indices that make up each slice's 2.5D stack.

    Slice ``z`` takes ``z - r .. z + r`` (``r = context // 2``); past the volume's ends or across a
    break (:func:`slice_breaks`), the last slice on ``z``'s side is repeated.
    """
    r = int(context) // 2
    z = np.arange(n_slices)
    if breaks is None or not np.any(breaks):
        lo, hi = np.zeros(n_slices, int), np.full(n_slices, n_slices - 1)
    else:
        run = np.concatenate([[0], np.cumsum(np.asarray(breaks, bool))])  # the contiguous run of each slice
        starts = np.flatnonzero(np.diff(np.concatenate([[-1], run])))
        ends = np.concatenate([starts[1:] - 1, [n_slices - 1]])
        lo, hi = starts[run], ends[run]
    offsets = np.arange(-r, r + 1)
    return np.clip(z[:, None] + offsets[None, :], lo[:, None], hi[:, None])


def crop_and_resize(
    image_u8: np.ndarray,
    config: PreprocessConfig,
    lung_mask: np.ndarray | None = None,
    *,
    index: np.ndarray | None = None,
    progress: bool | None = None,
) -> tuple[np.ndarray, list[ResizeRecord]]:
    """Geometry stage: enhanced ``uint8 (Z, H, W)`` (output of :func:`enhance`) -> ``uint8 (N, S, S)``
    and one :class:`ResizeRecord` per slice of ``index`` (every slice by default).

    The crop box of slice ``k`` is ``body_box(image_u8[k])``, or, when ``crop_mode == 'lung_mask'``,
    ``lung_box(lung_mask[k])`` (two largest components; an empty slice falls back to its body box).
    Then ``crop_pad_resize(..., 'area')``. ``lung_mask`` is ignored in ``'body'`` mode.
    With ``config.context`` > 1 the result is ``uint8 (N, S, S, context)``: each slice's neighbours
    (:func:`context_neighbours`, taken from the whole of ``image_u8`` whatever ``index`` holds), cut with
    that slice's own box. ``progress`` None shows a bar for 64 slices or more.
    """
    img = np.asarray(image_u8)
    if img.ndim != 3 or 0 in img.shape:
        raise DataValidationError(f"expected a non-empty (Z, H, W) image volume, got shape {img.shape}")
    if img.dtype != np.uint8:
        raise DataValidationError(f"expected the uint8 output of enhance(), got dtype {img.dtype}")
    use_mask = config.crop_mode == "lung_mask"
    if use_mask:
        if lung_mask is None:
            raise ConfigError("crop_mode 'lung_mask' needs a lung mask, but none was given")
        lung_mask = np.asarray(lung_mask)
        if lung_mask.shape != img.shape:
            raise DataValidationError(f"the lung mask has shape {lung_mask.shape} but the CT has shape {img.shape}")
    index = np.arange(img.shape[0]) if index is None else np.asarray(index, dtype=np.int64).reshape(-1)
    if index.size and (index.min() < 0 or index.max() >= img.shape[0]):
        raise DataValidationError(f"slice index out of range 0..{img.shape[0] - 1}")
    size = int(config.image_size)
    context = int(config.context)
    if context > 1:
        neighbours = context_neighbours(img.shape[0], context, slice_breaks(img))
        out = np.empty((index.size, size, size, context), dtype=np.uint8)
    else:
        out = np.empty((index.size, size, size), dtype=np.uint8)
    records: list[ResizeRecord] = []
    for j in _progress(index.size, progress, "crop and resize"):
        k = int(index[j])
        box = lung_box(lung_mask[k], n_components=2, margin=config.crop_margin) if use_mask else None
        if box is None:
            box = body_box(img[k], threshold=config.body_threshold, margin=config.crop_margin)
        out_k, rec = crop_pad_resize(img[k], box, size, interpolation="area")
        if context > 1:
            for c, n in enumerate(neighbours[k]):
                out[j, ..., c] = out_k if n == k else crop_pad_resize(img[n], box, size, interpolation="area")[0]
        else:
            out[j] = out_k
        records.append(rec)
    return out, records


def prepare_slices(
    ct: np.ndarray,
    source_kind: str,
    config: PreprocessConfig,
    lung_mask: np.ndarray | None = None,
    *,
    index: np.ndarray | None = None,
    progress: bool | None = None,
) -> tuple[np.ndarray, list[ResizeRecord]]:
    """CT ``(Z, H, W)`` (HU or 0-255, native dtype) -> model-input images ``uint8 (N, S, S)`` (``(N, S, S,
    context)`` for a 2.5D config) and one :class:`ResizeRecord` per slice of ``index`` (every slice by default).

    Exactly ``crop_and_resize(enhance(ct, source_kind, config), config, lung_mask, index=index)``:
    ``window_to_uint8`` -> ``apply_clahe`` -> per-slice crop box (``body_box`` of the enhanced slice,
    or ``lung_box`` of ``lung_mask[k]`` when ``crop_mode == 'lung_mask'``; a slice with an empty lung
    mask falls back to its body box) -> ``crop_pad_resize('area')``. Raises :class:`ConfigError` if
    ``crop_mode == 'lung_mask'`` and ``lung_mask`` is None.
    """
    vol = np.asarray(ct)
    if vol.ndim != 3 or 0 in vol.shape:
        raise DataValidationError(f"prepare_slices expects a non-empty (Z, H, W) CT volume, got shape {vol.shape}")
    if config.crop_mode == "lung_mask" and lung_mask is None:
        raise ConfigError("crop_mode 'lung_mask' needs a lung mask, but none was given")
    return crop_and_resize(enhance(vol, source_kind, config), config, lung_mask, index=index, progress=progress)


def _as_records(records) -> list[ResizeRecord]:
    """A list of :class:`ResizeRecord`, or their ``(N, 11)`` array form (as stored in npz files)."""
    if isinstance(records, np.ndarray):
        return records_from_array(records)
    return list(records)


def _check_records(n: int, records: list[ResizeRecord], what: str) -> None:
    if len(records) != n:
        raise DataValidationError(f"{what} has {n} slices but {len(records)} resize records were given")


def prepare_masks(mask: np.ndarray, records: list[ResizeRecord] | np.ndarray) -> np.ndarray:
    """Mask ``(Z, H, W)`` -> ``uint8 (Z, S, S)`` with the same crops as the images (nearest neighbour:
    no new label values). ``records`` may also be their ``(Z, 11)`` array form."""
    m = np.asarray(mask)
    if m.ndim != 3:
        raise DataValidationError(f"prepare_masks expects a (Z, H, W) mask, got shape {m.shape}")
    records = _as_records(records)
    _check_records(m.shape[0], records, "the mask")
    if not records:
        return np.zeros((0, 0, 0), dtype=np.uint8)
    size = records[0].size
    out = np.empty((m.shape[0], size, size), dtype=np.uint8)
    for k, rec in enumerate(records):
        if tuple(m.shape[1:]) != tuple(rec.orig_shape):
            raise DataValidationError(
                f"mask slice {k} has shape {m.shape[1:]} but its image had shape {rec.orig_shape}"
            )
        if rec.size != size:
            raise DataValidationError(f"resize records disagree on the output size ({rec.size} vs {size})")
        out[k], _ = crop_pad_resize(m[k].astype(np.uint8, copy=False), rec.box, size, interpolation="nearest")
    return out


def restore_masks(probs: np.ndarray, records: list[ResizeRecord] | np.ndarray, threshold: float) -> np.ndarray:
    """``restore_slices(probs, records) >= threshold`` as ``bool (Z, H, W)``, without the full-size
    float32 volume: each slice is mapped back (bilinear) and thresholded inside its crop box only, the
    rest of the slice being what 0 gives. The same result, a fraction of the memory traffic."""
    p, records = _checked_predictions(probs, records)
    if not records:
        return np.zeros((0, 0, 0), dtype=bool)
    out = np.full((p.shape[0], *records[0].orig_shape), 0.0 >= threshold, dtype=bool)
    for k, rec in enumerate(records):
        box = rec.box
        out[k, box.y0 : box.y1, box.x0 : box.x1] = unresize_box(p[k].astype(np.float32, copy=False), rec) >= threshold
    return out


def _checked_predictions(probs: np.ndarray, records) -> tuple[np.ndarray, list[ResizeRecord]]:
    """``(Z, S, S)`` predictions (a trailing channel of 1 dropped) and their records, checked to agree."""
    p = np.asarray(probs)
    if p.ndim == 4 and p.shape[-1] == 1:
        p = p[..., 0]
    if p.ndim != 3:
        raise DataValidationError(
            f"restore_slices expects (Z, S, S) probabilities, got shape {np.asarray(probs).shape}"
        )
    records = _as_records(records)
    _check_records(p.shape[0], records, "the prediction")
    shapes = {tuple(r.orig_shape) for r in records}
    if len(shapes) > 1:
        raise DataValidationError(f"resize records describe slices of different shapes: {sorted(shapes)}")
    return p, records


def restore_slices(
    probs: np.ndarray, records: list[ResizeRecord] | np.ndarray, *, progress: bool | None = None
) -> np.ndarray:
    """Probabilities ``(Z, S, S)`` (or ``(Z, S, S, 1)``) -> ``float32 (Z, H, W)`` on the original slice grid
    (bilinear; zero outside the crop box). Threshold the result afterwards (or use :func:`restore_masks`).
    ``records`` may also be their ``(Z, 11)`` array form."""
    p, records = _checked_predictions(probs, records)
    if not records:
        return np.zeros((0, 0, 0), dtype=np.float32)
    out = np.empty((p.shape[0], *records[0].orig_shape), dtype=np.float32)
    for k in _progress(p.shape[0], progress, "restore slices"):
        out[k] = uncrop_unresize(p[k].astype(np.float32, copy=False), records[k], interpolation="linear")
    return out
