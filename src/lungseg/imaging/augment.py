"""Training-time augmentation: one random affine applied identically to an image and its mask."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from lungseg.errors import ConfigError, DataValidationError
from lungseg.imaging.intensity import apply_clahe, to_unit_float

logger = logging.getLogger(__name__)

#: the tiles of :attr:`AugmentParams.clahe`'s equalisation over the model's crop (a lung crop spans about half
#: of a slice whose preprocessing CLAHE uses 8 x 8 tiles)
CLAHE_TILE_GRID = 4


@dataclass(frozen=True)
class AugmentParams:
    """Random horizontal flip (p = 0.5 when enabled), rotation in ``[-rotation_deg, rotation_deg]``,
    isotropic scale in ``[scale_min, scale_max]``; the whole transform is applied with probability ``p``.

    Intensity (the image only, after the affine, every 2.5D channel alike; 0 turns each off and draws
    nothing, so the geometric draws stay the same): a gamma curve ``x ** g`` with ``log g`` uniform in
    ``[-log(1 + gamma), log(1 + gamma)]``, a contrast factor in ``[1 - contrast, 1 + contrast]`` about
    the slice mean, a brightness shift in ``[-brightness, brightness]`` and Gaussian noise of standard
    deviation ``noise_std``, all on the [0, 1] scale and clipped back to it (nnU-Net's intensity set).

    ``elastic``: the probability of an elastic deformation after the affine (MIScnn's and nnU-Net's
    augmentation): a random displacement field, white noise smoothed by a Gaussian of ``elastic_sigma``
    pixels and scaled so that its largest displacement is ``elastic_alpha`` pixels, the same for the image
    (bilinear), its mask (nearest) and every 2.5D channel. 0 draws nothing.

    ``paint``: the probability that a slice gets consolidation and ground glass painted into 30-70 % of
    its lungs first (:mod:`lungseg.imaging.paint`). The lung model paints inside its mask and keeps it, so
    that consolidated lung is still lung; the infection model paints inside the slice's lung mask (``region``
    of :func:`random_augment`) and the painted pixels join its infection mask. 0 draws nothing.

    ``clahe``: the probability that a slice is equalised (again) after the painting and before the affine, with
    a CLAHE clip limit drawn uniformly from ``[1, clahe_clip_max]`` on a grid of :data:`CLAHE_TILE_GRID` tiles
    (about the full slice's 8 tiles over a lung crop), every 2.5D channel alike. A source may come equalised
    or not (the issue's "the model must not depend on whether a source was equalised"); the other
    ``1 - clahe`` of the slices stay as they came. 0 draws nothing.
    """

    hflip: bool = True
    rotation_deg: float = 20.0
    scale_min: float = 0.9
    scale_max: float = 1.1
    p: float = 1.0
    gamma: float = 0.0
    contrast: float = 0.0
    brightness: float = 0.0
    noise_std: float = 0.0
    paint: float = 0.0
    elastic: float = 0.0
    elastic_alpha: float = 6.0
    elastic_sigma: float = 8.0
    clahe: float = 0.0
    clahe_clip_max: float = 4.0

    def __post_init__(self) -> None:
        if self.rotation_deg < 0:
            raise ConfigError(f"augmentation rotation_deg must be >= 0, got {self.rotation_deg}")
        if not 0 < self.scale_min <= self.scale_max:
            raise ConfigError(
                f"augmentation needs 0 < scale_min <= scale_max, got {self.scale_min}, {self.scale_max}"
            )
        if not 0.0 <= self.p <= 1.0:
            raise ConfigError(f"augmentation probability p must be in [0, 1], got {self.p}")
        if not self.elastic_alpha >= 0 or not self.elastic_sigma > 0:
            raise ConfigError(f"augmentation needs elastic_alpha >= 0 and elastic_sigma > 0 (pixels), "
                              f"got {self.elastic_alpha}, {self.elastic_sigma}")
        if not self.clahe_clip_max >= 1.0:
            raise ConfigError(f"augmentation clahe_clip_max must be >= 1 (a CLAHE clip limit), got {self.clahe_clip_max}")
        for name in ("gamma", "contrast", "brightness", "noise_std", "paint", "elastic", "clahe"):
            value = getattr(self, name)
            if not 0.0 <= value <= (1.0 if name != "gamma" else 4.0):
                top = 4 if name == "gamma" else 1
                raise ConfigError(f"augmentation {name} must be in [0, {top}] (0: off), got {value}")

    @property
    def intensity(self) -> bool:
        """Whether any intensity augmentation is on."""
        return bool(self.gamma or self.contrast or self.brightness or self.noise_std)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> AugmentParams:
        """Build from a parameters dict; unknown keys are ignored (with a debug log), bad values raise ConfigError."""
        d = dict(d or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            logger.debug("AugmentParams ignores unknown keys %s", unknown)
        kwargs: dict[str, Any] = {}
        try:
            for k in names & set(d):
                kwargs[k] = bool(d[k]) if k == "hflip" else float(d[k])
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad augmentation parameters {d!r}: {exc}") from exc
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def random_affine(shape: tuple[int, int], rng: np.random.Generator, params: AugmentParams) -> np.ndarray | None:
    """Draw one 2x3 affine matrix (flip, rotation, scale about the image centre), or None for identity."""
    if params.p < 1.0 and rng.random() >= params.p:
        return None
    h, w = shape
    flip = bool(params.hflip) and rng.random() < 0.5
    angle = float(rng.uniform(-params.rotation_deg, params.rotation_deg)) if params.rotation_deg > 0 else 0.0
    scale = float(rng.uniform(params.scale_min, params.scale_max))
    centre = ((w - 1) / 2.0, (h - 1) / 2.0)
    m = cv2.getRotationMatrix2D(centre, angle, scale)
    if flip:
        # x -> (w - 1) - x, applied before the rotation/scale.
        f = np.array([[-1.0, 0.0, w - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        m = m @ f
    return m


def random_intensity(image: np.ndarray, rng: np.random.Generator, params: AugmentParams) -> np.ndarray:
    """One random intensity change of an ``(H, W[, C])`` image (see :class:`AugmentParams`), same dtype.

    ``uint8`` images are read as 0-255 and rounded back; float images are taken on [0, 1].
    Nothing is drawn, and the image is returned as it is, when every intensity option is 0.
    """
    img = np.asarray(image)
    if not params.intensity:
        return img
    scale = 255.0 if img.dtype == np.uint8 else 1.0
    x = img.astype(np.float32) / np.float32(scale)
    if params.gamma:
        log_g = float(rng.uniform(-np.log1p(params.gamma), np.log1p(params.gamma)))
        x = np.power(np.clip(x, 0.0, 1.0), np.float32(np.exp(log_g)))
    if params.contrast:
        factor = np.float32(rng.uniform(1.0 - params.contrast, 1.0 + params.contrast))
        mean = np.float32(x.mean())
        x = (x - mean) * factor + mean
    if params.brightness:
        x = x + np.float32(rng.uniform(-params.brightness, params.brightness))
    if params.noise_std:
        x = x + rng.normal(0.0, params.noise_std, size=x.shape).astype(np.float32)
    x = np.clip(x, 0.0, 1.0)
    if img.dtype == np.uint8:
        return np.rint(x * 255.0).astype(np.uint8)
    return x.astype(img.dtype, copy=False)


def random_paint(image: np.ndarray, lung: np.ndarray, rng: np.random.Generator, params: AugmentParams,
                 infection: np.ndarray | None = None):
    """With probability ``params.paint``, extensive disease painted into 30-70 % of the lungs ``lung``
    (an ``(H, W)`` 0/1 mask) of an ``(H, W[, C])`` image; every 2.5D channel gets the same region.

    Returns the image; with an ``(H, W)`` ``infection`` mask, ``(image, infection)`` with the painted pixels
    added to the mask (in its dtype)."""
    from lungseg.imaging.paint import PaintParams, paint_slice

    img = np.asarray(image)
    if not params.paint or rng.random() >= params.paint or not np.any(lung):
        return img if infection is None else (img, infection)
    fraction = {1: float(rng.uniform(0.3, 0.7))}
    seed = int(rng.integers(2**32))
    labels = (np.asarray(lung) > 0).astype(np.uint8)
    start = np.zeros(labels.shape, np.uint8) if infection is None else (np.asarray(infection) > 0).astype(np.uint8)
    paint = PaintParams()
    channels = [img] if img.ndim == 2 else [img[..., c] for c in range(img.shape[-1])]
    outs = [paint_slice(ch, labels, start, np.random.default_rng(seed), fraction, paint) for ch in channels]
    out_img = outs[0][0] if img.ndim == 2 else np.stack([o[0] for o in outs], axis=-1)
    if infection is None:
        return out_img
    # the centre channel's lesions are the target (every channel gets the same region from the same seed)
    return out_img, outs[len(outs) // 2][1].astype(np.asarray(infection).dtype)


def random_clahe(image: np.ndarray, rng: np.random.Generator, params: AugmentParams) -> np.ndarray:
    """With probability ``params.clahe``, an ``(H, W[, C])`` image (``uint8`` 0-255 or float on [0, 1]) equalised
    with a CLAHE clip limit drawn from ``[1, params.clahe_clip_max]``, every channel alike; same shape and dtype.
    Otherwise the image as it is (nothing drawn at 0)."""
    img = np.asarray(image)
    if not params.clahe or rng.random() >= params.clahe:
        return img
    clip = float(rng.uniform(1.0, params.clahe_clip_max))
    u8 = img if img.dtype == np.uint8 else np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    out = apply_clahe(u8 if u8.ndim == 2 else np.moveaxis(u8, -1, 0), clip, CLAHE_TILE_GRID)
    out = out if u8.ndim == 2 else np.moveaxis(out, 0, -1)
    if img.dtype == np.uint8:
        return np.ascontiguousarray(out)
    return to_unit_float(out).astype(img.dtype, copy=False)


def random_elastic(shape: tuple[int, int], rng: np.random.Generator, params: AugmentParams):
    """With probability ``params.elastic``, the ``(map_x, map_y)`` float32 maps of one elastic deformation of an
    ``(H, W)`` image for :func:`cv2.remap` (see :class:`AugmentParams`); None otherwise (and nothing drawn at 0)."""
    if not params.elastic or rng.random() >= params.elastic or not params.elastic_alpha:
        return None
    h, w = shape
    field = rng.uniform(-1.0, 1.0, size=(2, h, w)).astype(np.float32)
    field = np.stack([cv2.GaussianBlur(f, (0, 0), params.elastic_sigma, borderType=cv2.BORDER_REFLECT) for f in field])
    field *= np.float32(params.elastic_alpha / max(float(np.abs(field).max()), 1e-6))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return xx + field[0], yy + field[1]


def _remap(arr: np.ndarray, maps, flag: int) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] > 4:  # OpenCV remaps at most 4 channels at once
        return np.stack([_remap(arr[..., c], maps, flag) for c in range(arr.shape[2])], axis=-1)
    return cv2.remap(np.ascontiguousarray(arr), maps[0], maps[1], flag, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _warp(arr: np.ndarray, m: np.ndarray, flag: int) -> np.ndarray:
    h, w = arr.shape[:2]
    if arr.ndim == 3 and arr.shape[2] > 4:  # OpenCV warps at most 4 channels at once
        return np.stack([_warp(arr[..., c], m, flag) for c in range(arr.shape[2])], axis=-1)
    return cv2.warpAffine(
        np.ascontiguousarray(arr), m, (w, h), flags=flag, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )


def random_augment(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, params: AugmentParams,
    region: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply ONE random affine (after the painting and the equalisation, then the intensity options, if any)
    to a ``(H, W)`` float image (or an ``(H, W, C)`` 2.5D stack, every channel alike) and its ``(H, W)`` uint8
    mask.

    ``region``: the ``(H, W)`` lungs where ``params.paint`` paints, the painted pixels added to the mask (the
    infection model); None paints inside the mask and keeps it (the lung model).

    Image: bilinear; mask: nearest neighbour (labels are never blended); border constant 0.
    Shapes (a trailing channel of 1 is kept) and dtypes are kept.
    """
    img = np.asarray(image)
    msk = np.asarray(mask)
    img2 = img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img
    msk2 = msk[..., 0] if msk.ndim == 3 and msk.shape[-1] == 1 else msk
    if img2.ndim not in (2, 3) or img2.shape[:2] != msk2.shape or msk2.ndim != 2:
        raise DataValidationError(
            f"random_augment needs an (H, W) or (H, W, C) image and an (H, W) mask, got {img.shape} and {msk.shape}"
        )
    if region is not None and np.shape(region) != msk2.shape:
        raise DataValidationError(f"random_augment: the paint region has shape {np.shape(region)}, the mask {msk2.shape}")
    if params.paint and region is None:
        img2 = random_paint(img2, msk2, rng, params)
    elif params.paint:
        img2, msk2 = random_paint(img2, region, rng, params, infection=msk2)
        msk = msk2.reshape(msk.shape)
    img2 = random_clahe(img2, rng, params)
    m = random_affine(img2.shape[:2], rng, params)
    maps = random_elastic(img2.shape[:2], rng, params)
    if m is None and maps is None:
        return random_intensity(img2.reshape(img.shape), rng, params).copy(), msk.copy()
    img_dtype, msk_dtype = img2.dtype, msk2.dtype
    work_img = img2 if img_dtype in (np.float32, np.float64, np.uint8) else img2.astype(np.float32)
    work_msk = msk2 if msk_dtype in (np.uint8, np.uint16, np.int16, np.float32) else msk2.astype(np.uint8)
    if m is not None:
        work_img, work_msk = _warp(work_img, m, cv2.INTER_LINEAR), _warp(work_msk, m, cv2.INTER_NEAREST)
    if maps is not None:
        work_img, work_msk = _remap(work_img, maps, cv2.INTER_LINEAR), _remap(work_msk, maps, cv2.INTER_NEAREST)
    out_img, out_msk = work_img.astype(img_dtype, copy=False), work_msk.astype(msk_dtype, copy=False)
    return random_intensity(out_img.reshape(img.shape), rng, params), out_msk.reshape(msk.shape)


def augment_batch(
    images: np.ndarray, masks: np.ndarray, rng: np.random.Generator, params: AugmentParams,
    regions: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`random_augment` on each pair of an ``(N, H, W[, C])`` batch; each pair gets its own draw.
    ``regions``: one paint region per pair (see :func:`random_augment`), or None."""
    imgs = np.asarray(images)
    msks = np.asarray(masks)
    if imgs.shape[0] != msks.shape[0]:
        raise DataValidationError(f"augment_batch got {imgs.shape[0]} images but {msks.shape[0]} masks")
    if regions is not None and len(regions) != len(msks):
        raise DataValidationError(f"augment_batch got {len(regions)} paint regions for {len(msks)} masks")
    out_i = np.empty_like(imgs)
    out_m = np.empty_like(msks)
    for k in range(imgs.shape[0]):
        out_i[k], out_m[k] = random_augment(imgs[k], msks[k], rng, params,
                                            region=None if regions is None else regions[k])
    return out_i, out_m
