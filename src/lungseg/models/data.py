"""Training input pipeline: batches of stored ``uint8`` slices, augmented on the fly.

The stored model input stays ``uint8`` ``(N, S, S)``; each batch is gathered, augmented with
:func:`lungseg.imaging.augment_batch` (one random affine per slice, applied identically to image
and mask), converted with :func:`lungseg.imaging.to_unit_float` and given a channel axis. Nothing
augmented is ever stored. The slice order and the augmentation draws are pure functions of
``(seed, epoch, batch index)``, so a run is reproducible and a resumed run sees the same batches,
whatever the number of loader threads.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any

import keras
import numpy as np

from lungseg.errors import ConfigError, DataValidationError
from lungseg.imaging import AugmentParams, augment_batch, to_unit_float

logger = logging.getLogger(__name__)

#: How many leading batches Keras builds to infer the batch shapes (``NUM_BATCHES_FOR_TENSOR_SPEC``).
_PEEK_BATCHES = 2


def augment_params(augment: dict[str, Any] | AugmentParams | bool | None) -> AugmentParams | None:
    """Normalise an ``augment`` setting: None/False/``{"enabled": false}`` -> None, a dict -> params."""
    if augment is None or augment is False:
        return None
    if isinstance(augment, AugmentParams):
        return augment
    if augment is True:
        return AugmentParams()
    if not isinstance(augment, dict):
        raise ConfigError(f"augment must be a mapping of augmentation parameters or null, got {augment!r}")
    if not augment.get("enabled", True):
        return None
    return AugmentParams.from_dict({k: v for k, v in augment.items() if k != "enabled"})


class SliceSequence(keras.utils.PyDataset):
    """Batches ``(x, y)`` of float32 ``(B, S, S, C)`` / ``(B, S, S, 1)`` for ``model.fit``.

    ``x`` is in [0, 1]; ``y`` is 0/1. The last batch may be smaller.

    Args:
        images_u8: ``uint8`` ``(N, S, S)`` images, or ``(N, S, S, C)`` 2.5D stacks (kept by reference,
            never copied whole).
        masks: ``(N, S, S)`` binary masks (0/1, any integer or bool dtype).
        batch_size: slices per batch.
        augment: augmentation parameters (see :class:`lungseg.imaging.AugmentParams`), or None.
        shuffle: reshuffle the slice order every epoch.
        seed: seed of the order and of the augmentation draws.
        sample_weights: one non-negative weight per slice (see :func:`extent_weights`): each epoch then
            draws its ``N`` slices with replacement, slice ``i`` with probability ``w_i / sum(w)``
            (oversampling), instead of a permutation. None: every slice once per epoch.
        paint_regions: ``(N, S, S)`` 0/1 lung masks where ``augment.paint`` paints extensive disease, the
            painted pixels added to the mask (the infection model). None: paint inside the mask itself and
            keep it (the lung model: consolidated lung is still lung).
        **kwargs: ``workers``, ``use_multiprocessing``, ``max_queue_size`` of ``keras.utils.PyDataset``.
    """

    def __init__(
        self,
        images_u8: np.ndarray,
        masks: np.ndarray,
        batch_size: int,
        augment: dict[str, Any] | None,
        shuffle: bool,
        seed: int,
        sample_weights: np.ndarray | None = None,
        paint_regions: np.ndarray | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        images = np.asarray(images_u8)
        masks = np.asarray(masks)
        if images.ndim not in (3, 4) or images.shape[1] != images.shape[2]:
            raise DataValidationError(f"SliceSequence needs (N, S, S) images or (N, S, S, C) stacks, got shape {images.shape}")
        if images.dtype != np.uint8:
            raise DataValidationError(f"SliceSequence needs uint8 images (0-255), got dtype {images.dtype}")
        if masks.shape != images.shape[:3]:
            raise DataValidationError(f"SliceSequence: masks shape {masks.shape} != images shape {images.shape}")
        if not (masks.dtype == np.bool_ or np.issubdtype(masks.dtype, np.integer)):
            raise DataValidationError(f"SliceSequence needs integer 0/1 masks, got dtype {masks.dtype}")
        if masks.size and (masks.min() < 0 or masks.max() > 1):
            raise DataValidationError(
                f"SliceSequence needs binary 0/1 masks, got values in [{masks.min()}, {masks.max()}]"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        if sample_weights is not None:
            sample_weights = np.asarray(sample_weights, dtype=np.float64)
            if (sample_weights.shape != (len(images),) or not np.all(np.isfinite(sample_weights))
                    or sample_weights.min(initial=0.0) < 0 or (len(images) and sample_weights.sum() <= 0)):
                raise DataValidationError(f"SliceSequence: sample_weights must be {len(images)} finite non-negative "
                                          f"weights, not all zero (got shape {sample_weights.shape})")
        if paint_regions is not None:
            paint_regions = np.asarray(paint_regions)
            if paint_regions.shape != masks.shape:
                raise DataValidationError(f"SliceSequence: paint_regions shape {paint_regions.shape} != masks shape "
                                          f"{masks.shape}")
        self.paint_regions = paint_regions
        self.sample_weights = sample_weights
        self.images = images
        self.masks = masks if masks.dtype == np.uint8 else masks.astype(np.uint8)
        self.batch_size = int(batch_size)
        self.augment = augment_params(augment)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self._epoch = 0
        self._order = self._make_order(0)
        # Keras builds the first batches once to learn their shapes when ``fit`` starts, then asks
        # for them again: keep those few, each handed out once more, instead of preparing them twice.
        self._peeked: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ keras.utils.PyDataset API
    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        n_batches = len(self)
        if not -n_batches <= idx < n_batches:
            raise IndexError(f"batch {idx} out of range (0..{n_batches - 1})")
        idx %= n_batches
        key = (self._epoch, int(idx))
        with self._lock:
            hit = self._peeked.pop(key, None)
        if hit is not None:
            return hit
        batch = self._make_batch(int(idx))
        if idx < _PEEK_BATCHES:
            with self._lock:
                self._peeked = {k: v for k, v in self._peeked.items() if k[0] == self._epoch}
                self._peeked[key] = batch
        return batch

    def _make_batch(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        sel = self._order[idx * self.batch_size : (idx + 1) * self.batch_size]
        images = self.images[sel]
        masks = self.masks[sel]
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self._epoch, idx])
            regions = None if self.paint_regions is None else self.paint_regions[sel]
            images, masks = augment_batch(images, masks, rng, self.augment, regions=regions)
        x = to_unit_float(images)
        if x.ndim == 3:
            x = x[..., np.newaxis]
        y = masks.astype(np.float32)[..., np.newaxis]
        return x, y

    def on_epoch_end(self) -> None:
        self.set_epoch(self._epoch + 1)

    # ------------------------------------------------------------------ extras
    @property
    def epoch(self) -> int:
        """The epoch whose order and augmentation draws the batches follow."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Follow epoch ``epoch``'s order and draws (used by :func:`lungseg.models.fit` on resume)."""
        if epoch != self._epoch:
            self._epoch = int(epoch)
            self._order = self._make_order(self._epoch)
            with self._lock:
                self._peeked.clear()

    @property
    def n_slices(self) -> int:
        return int(len(self.images))

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def _make_order(self, epoch: int) -> np.ndarray:
        n = len(self.images)
        if not self.shuffle:
            return np.arange(n)
        rng = np.random.default_rng([self.seed, int(epoch)])
        if self.sample_weights is not None:
            return rng.choice(n, size=n, replace=True, p=self.sample_weights / self.sample_weights.sum())
        return rng.permutation(n)


def extent_weights(masks: np.ndarray, strength: float) -> np.ndarray | None:
    """Sampling weights that favour the slices with the most foreground (lesion-balanced sampling, #25).

    Slice ``i`` weighs ``1 + strength * f_i / mean(f)``, ``f_i`` its foreground share and the mean taken
    over the slices with any foreground: with ``strength`` 2, a slice of average extent is drawn 3 times
    as often as an empty one, and one of twice the average extent 5 times. None when ``strength`` is 0
    or no slice has foreground (then every slice once per epoch, as without it).
    """
    if strength < 0:
        raise ConfigError(f"the oversampling strength must be >= 0, got {strength!r}")
    masks = np.asarray(masks)
    if strength == 0 or masks.size == 0:
        return None
    share = masks.reshape(len(masks), -1).astype(bool).mean(axis=1)
    if not np.any(share > 0):
        return None
    return 1.0 + float(strength) * share / share[share > 0].mean()


def split_model_input(
    model_input: dict[str, np.ndarray], case_split: Any, subset: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images, masks and row indices of ``subset`` (``train`` / ``val``) of a model input.

    ``case_split`` is the table of :func:`lungseg.models.split.split_cases` (``case_id``, ``subset``...).
    With the leaky slice-level split (every case ``mixed``), slices are split at random instead,
    seeded by the table's ``seed`` with its ``val_fraction``.
    """
    if subset not in ("train", "val"):
        raise ConfigError(f"subset must be 'train' or 'val', got {subset!r}")
    cases = model_input["case_ids"]
    if (case_split["subset"] == "mixed").all():
        frac = float(case_split["val_fraction"].iloc[0])
        rng = np.random.default_rng(int(case_split["seed"].iloc[0]))
        is_val = rng.random(len(cases)) < frac
        idx = np.flatnonzero(is_val if subset == "val" else ~is_val)
    else:
        chosen = set(case_split.loc[case_split["subset"] == subset, "case_id"])
        idx = np.flatnonzero(np.isin(cases, list(chosen)))
    return model_input["images"][idx], model_input["masks"][idx], idx
