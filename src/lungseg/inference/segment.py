"""Segment a CT volume: lung model → 3D postprocess → lung crop → infection model → back on the grid.

Every image operation comes from :mod:`lungseg.imaging` (``prepare_slices`` / ``restore_slices``),
with each model's own saved preprocessing config, so inference prepares slices exactly as training did.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from lungseg.errors import ConfigError, InputError
from lungseg.inference.loaded_model import LoadedModel
from lungseg.inference.settings import InferenceSettings
from lungseg.inference.wrappers import FlipTTAModel
from lungseg.layout import TASKS
from lungseg.volume import Volume

logger = logging.getLogger(__name__)


@dataclass
class Segmentation:
    """Predicted masks on the canonical (z, y, x) grid of the input volume.

    Attributes:
        lung_labels: uint8, 1 = left lung, 2 = right lung, 0 elsewhere.
        infection: uint8 0/1, inside the lungs only (all zeros when the infection task was not run).
        lung_prob: float32 lung probability, when asked for (``keep_probabilities``).
        infection_prob: float32 infection probability (0 outside the slices that hold lung), when asked for.
        tasks: the tasks that were run.
        implausible_input: None for a plausible chest CT and segmentation; else why not, in words
            (:mod:`lungseg.inference.guard`; ``guard.NO_LUNGS`` when no lung was found). Front ends
            show it instead of figures; the CLI exits with code 3.
        guard_figures: what the guard measured (fractions, lung ml, z extent), for the report.
        provenance: the models' provenance, ``{"lung": {...}, "infection": {...}}``
            (:func:`lungseg.inference.provenance.describe_model`: training dataset, environment, score).
        severity_withheld: None, or why no severity grade may be given on this input although one
            could be computed (:func:`lungseg.inference.provenance.synthetic_mismatch`: models trained
            on synthetic phantoms, an input that is not one).
        spacing_assumed: the input's voxel size is assumed or probably a placeholder
            (``volume.meta["spacing_assumed"]``): volumes in ml are nominal.
        source_kind: the input's intensities, ``"hu"`` or ``"uint8"``.
    """

    lung_labels: np.ndarray
    infection: np.ndarray
    lung_prob: np.ndarray | None = None
    infection_prob: np.ndarray | None = None
    tasks: tuple[str, ...] = TASKS
    implausible_input: str | None = None
    guard_figures: dict | None = None
    provenance: dict | None = None
    severity_withheld: str | None = None
    spacing_assumed: bool = False
    source_kind: str | None = None

    def combined(self) -> np.ndarray:
        """Label map: 1 left lung, 2 right lung, 3 infection (written over the lung labels)."""
        return np.where(self.infection > 0, np.uint8(3), self.lung_labels).astype(np.uint8)

    @property
    def has_lungs(self) -> bool:
        return bool(self.lung_labels.any())


def predict_probabilities(model, images_u8: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Sigmoid probabilities (N, S, S) float32 of uint8 model-input images (N, S, S) or 2.5D stacks
    (N, S, S, C), one ``predict_on_batch`` call per ``batch_size`` slices. Shared by inference and evaluation."""
    from lungseg.imaging import to_unit_float

    n = int(images_u8.shape[0])
    out = np.empty(images_u8.shape[:3], dtype=np.float32)
    for start in range(0, n, batch_size):
        batch = to_unit_float(images_u8[start : start + batch_size])
        if batch.ndim == 3:
            batch = batch[..., None]
        pred = np.asarray(model.predict_on_batch(batch))
        out[start : start + batch.shape[0]] = pred.reshape(batch.shape[:3])
    return out


def reaching_in(found: np.ndarray, outline: np.ndarray, margin_mm: float, spacing_yx) -> np.ndarray:
    """The infection of ``found`` (bool ``(Z, H, W)``) inside ``outline``, and the regions of it that reach into
    ``outline`` kept up to ``margin_mm`` (in-plane) outside it: its 3D connected components (6-connected)
    within the grown outline that overlap or border the outline. A region apart from the lungs is dropped.
    The slices are taken as adjacent in their order (the Segmenter passes the slices that hold lung)."""
    import cv2
    from scipy import ndimage

    def dilated(kernel: np.ndarray) -> np.ndarray:  # each slice of the outline, grown by ``kernel``
        return np.stack([cv2.dilate(o.view(np.uint8), kernel) for o in outline]).view(bool)

    if not len(outline):
        return found & outline
    ry, rx = (max(1, int(round(margin_mm / float(s)))) for s in spacing_yx)
    near = found & dilated(cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rx + 1, 2 * ry + 1)))
    labels, n = ndimage.label(near)
    if n == 0:
        return near
    border = dilated(np.ones((3, 3), np.uint8))
    touching = np.zeros(n + 1, bool)
    touching[np.unique(labels[near & border])] = True  # in the lungs, or next to them (a notch in their edge)
    touching[0] = False
    return touching[labels]


def drop_small_lesions(found: np.ndarray, min_mm3: float, spacing) -> np.ndarray:
    """``found`` (bool ``(Z, H, W)``) without its 3D connected components (6-connected) smaller than ``min_mm3``
    mm³ at voxel ``spacing`` (z, y, x, mm); at least one voxel is always needed."""
    from lungseg.imaging import remove_small_objects

    voxel_mm3 = float(np.prod([float(s) for s in spacing]))
    min_voxels = max(1, int(np.ceil(min_mm3 / voxel_mm3 - 1e-9)))
    if min_voxels <= 1 or not found.any():
        return found
    return remove_small_objects(found, min_voxels).view(bool)


def _config_for(loaded: LoadedModel, **overrides):
    """The ``PreprocessConfig`` of a model's saved config (keys the imaging config does not know are dropped)."""
    from lungseg.imaging import PreprocessConfig

    try:
        return PreprocessConfig.from_dict({**loaded.config, **overrides})
    except (ConfigError, TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"model {loaded.source!r}: unusable preprocessing config ({exc})") from exc


class Segmenter:
    """Runs the lung model, then the infection model inside the predicted lungs.

    The volume is processed in chunks of ``chunk_slices`` slices (prepare → predict in batches →
    map back → threshold), so memory stays bounded whatever the number of slices: the only
    full-volume arrays are the input and the uint8/bool masks (and the float32 probabilities when
    asked for).

    Build one with :meth:`from_models` (every caller does): the models and an
    :class:`~lungseg.inference.settings.InferenceSettings` (batch size, chunk size, lung clean-up,
    hole filling, flip TTA, the plausibility guard's bounds, ``input_equalised``). Nothing is read
    from the project's parameters here: the caller gives every setting.

    Args:
        lung: the lung model (needed for every task: the infection model works on the lung crop).
        infection: the infection model, or None to segment the lungs only.
        settings: the settings. ``chunk_slices`` is rounded up to a multiple of ``batch_size``;
            ``lung_fill_holes`` off (the default) keeps the holes of the lung model's mask: the
            dataset's lung masks leave vessels and airways out, so a hole is lung only where it holds
            infection (the infection model still looks inside the lungs' filled outline, and the
            infection it finds in a hole joins the lungs); ``input_equalised``: the input already
            carries CLAHE (its source applied it, as the covid20-dev slices do), so the models' own
            CLAHE step is skipped instead of applied twice.
    """

    def __init__(self, lung: LoadedModel | None, infection: LoadedModel | None, settings: InferenceSettings):
        if not isinstance(settings, InferenceSettings):
            raise ConfigError(f"a Segmenter takes InferenceSettings, got {type(settings).__name__}; "
                              "build it with Segmenter.from_models")
        self.lung = lung
        self.infection = infection
        self.settings = settings
        self.batch_size = settings.batch_size
        self.chunk_slices = max(1, -(-settings.chunk_slices // self.batch_size)) * self.batch_size
        # an input whose source already applied CLAHE (a dataset declared so) is not equalised twice
        self._overrides = {"clahe_clip_limit": 0.0} if settings.input_equalised else {}
        self.lung_min_ratio = settings.lung_min_ratio
        self.flip_tta = settings.flip_tta
        self.lung_fill_holes = settings.lung_fill_holes
        self.guard = settings.guard
        self._provenance: dict | None = None

    @property
    def provenance(self) -> dict:
        """The models' provenance (:func:`lungseg.inference.provenance.describe_models`), found once."""
        if self._provenance is None:
            from lungseg.inference.provenance import describe_models

            self._provenance = describe_models(self.lung, self.infection)
        return self._provenance

    @classmethod
    def from_models(cls, lung: LoadedModel | None, infection: LoadedModel | None,
                    settings: InferenceSettings) -> Segmenter:
        """The segmenter of ``lung`` and ``infection`` (None: lungs only) with ``settings``
        (``InferenceSettings.from_params(params["inference"])``, or built directly)."""
        return cls(lung, infection, settings)

    # ---------------------------------------------------------------------------------------------
    def predict_slices(self, loaded: LoadedModel, images_u8: np.ndarray) -> np.ndarray:
        """Sigmoid probabilities (N, S, S) float32 of uint8 model-input images (N, S, S).

        One ``predict_on_batch`` call per ``batch_size`` slices (never one call per slice).
        """
        model = loaded.model
        if self.flip_tta:
            model = FlipTTAModel(model)
        return predict_probabilities(model, images_u8, self.batch_size)

    def _predict_volume(
        self,
        loaded: LoadedModel,
        config,
        ct: np.ndarray,
        source_kind: str,
        index: np.ndarray,
        lung_mask: np.ndarray | None,
        progress: bool,
        desc: str,
        keep_probabilities: bool,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Binary mask (and probabilities) of the slices ``ct[index]``, chunk by chunk.

        Returns arrays of shape ``(len(index), H, W)``: bool above the model's threshold, and float32
        probabilities when ``keep_probabilities``.
        """
        from lungseg.imaging import prepare_slices, restore_masks, restore_slices

        shape = (len(index), *ct.shape[1:])
        binary = np.zeros(shape, dtype=bool)
        probs_out = np.zeros(shape, dtype=np.float32) if keep_probabilities else None
        with tqdm(total=len(index), desc=desc, unit="slice", disable=not progress, leave=True) as bar:
            for a in range(0, len(index), self.chunk_slices):
                idx = index[a : a + self.chunk_slices]
                r = int(config.context) // 2
                if r:  # a 2.5D model: the chunk's slices and their neighbours, enhanced together
                    lo, hi = max(0, int(idx[0]) - r), min(ct.shape[0], int(idx[-1]) + r + 1)
                    sel, local = slice(lo, hi), idx - lo
                else:
                    contiguous = idx[-1] - idx[0] + 1 == len(idx)
                    sel = slice(int(idx[0]), int(idx[-1]) + 1) if contiguous else idx  # a view when possible
                    local = None
                sub_mask = None if lung_mask is None else lung_mask[sel]
                images, records = prepare_slices(ct[sel], source_kind, config, lung_mask=sub_mask, index=local,
                                                 progress=False)
                small = self.predict_slices(loaded, images)
                if probs_out is None:  # thresholded inside each crop box: no full-size float32 chunk
                    binary[a : a + len(idx)] = restore_masks(small, records, loaded.threshold)
                else:
                    prob = restore_slices(small, records, progress=False)
                    binary[a : a + len(idx)] = prob >= loaded.threshold
                    probs_out[a : a + len(idx)] = prob
                bar.update(len(idx))
        return binary, probs_out

    # ---------------------------------------------------------------------------------------------
    def segment(
        self,
        volume: Volume,
        source_kind: str,
        tasks: Sequence[str] = TASKS,
        progress: bool = True,
        keep_probabilities: bool = False,
    ) -> Segmentation:
        """Segment the lungs (and the infection) of a canonical volume.

        Steps: 1. lung model on body-cropped slices (the lung model's own config), mapped back and
        thresholded at its ``threshold``; 2. 3D postprocess (two largest components, holes filled when
        ``lung_fill_holes``, left/right split); 3. infection model with its own config, cropped as its recorded
        ``crop_mode`` says (``'lung_mask'``: the predicted lungs' box; ``'body'``: the whole body), only on
        slices that hold lung; 4. infection kept inside the lungs' filled outline (with
        ``infection_margin_mm``, also the part of a region that enters or borders them up to that far
        outside: :func:`reaching_in`), regions under ``infection_min_lesion_mm3`` dropped, and infection in a hole
        of the lungs or outside them made lung too.
        Everything is on the canonical grid of ``volume``.

        Args:
            volume: the input, canonical (z, y, x).
            source_kind: ``"hu"`` or ``"uint8"``.
            tasks: any of ``("lung", "infection")``; the lung model always runs (it gives the crop).
            progress: show tqdm bars.
            keep_probabilities: also return the float32 probability maps (more memory).

        Returns:
            a :class:`Segmentation`; a volume without lungs gives empty masks (not an error).
        """
        from lungseg.imaging import clean_lung_mask, fill_holes_2d, split_left_right

        tasks = tuple(dict.fromkeys(tasks))
        unknown = [t for t in tasks if t not in TASKS]
        if unknown or not tasks:
            raise ConfigError(f"unknown tasks {unknown or list(tasks)}; choose from {', '.join(TASKS)}")
        if self.lung is None:
            raise ConfigError("a lung model is needed for every task (the infection model works inside the lungs)")
        if "infection" in tasks and self.infection is None:
            raise ConfigError("the infection task needs an infection model")
        ct = volume.array
        if ct.ndim != 3 or min(ct.shape) < 1:
            raise InputError(f"file {volume.source!r}: expected a (z, y, x) volume, got shape {ct.shape}")
        name = volume.source or "input"

        # 1. lung model on body-cropped slices, in batches, mapped back onto the input grid.
        all_slices = np.arange(ct.shape[0])
        binary, lung_prob = self._predict_volume(
            self.lung, _config_for(self.lung, **self._overrides), ct, source_kind, all_slices, None, progress, "lung model",
            keep_probabilities,
        )
        # 2. 3D postprocess: two largest components, holes filled (if asked), split into left / right.
        lung_labels = np.asarray(clean_lung_mask(binary, min_ratio=self.lung_min_ratio, fill_holes=self.lung_fill_holes),
                                 dtype=np.uint8)
        del binary

        infection = np.zeros(ct.shape, dtype=np.uint8)
        infection_prob = np.zeros(ct.shape, dtype=np.float32) if keep_probabilities and "infection" in tasks else None
        lung_slices = np.flatnonzero(lung_labels.reshape(lung_labels.shape[0], -1).any(axis=1))
        if not lung_slices.size:
            logger.warning("%s: no lungs found; the masks are empty", name)
        elif "infection" in tasks:
            # 3. infection model on the slices that hold lung, with its own config (lung- or body-cropped).
            inf_binary, inf_prob = self._predict_volume(
                self.infection, _config_for(self.infection, crop_mode=self.infection.config.get("crop_mode", "lung_mask"),
                                            **self._overrides), ct, source_kind, lung_slices,
                lung_labels, progress, "infection model", keep_probabilities,
            )
            # 4. infection only inside the lungs' outline (their holes filled: a lesion the lung model left
            # out as a hole is still searched), and infection in a hole is lung too.
            lung_in = lung_labels[lung_slices] > 0
            outline = lung_in if self.lung_fill_holes else fill_holes_2d(lung_in).view(bool)
            margin = self.settings.infection_margin_mm
            found = (inf_binary & outline if margin <= 0
                     else reaching_in(inf_binary, outline, margin, volume.spacing[1:]))
            if self.settings.infection_min_lesion_mm3 > 0:
                found = drop_small_lesions(found, self.settings.infection_min_lesion_mm3, volume.spacing)
            infection[lung_slices] = found
            del inf_binary
            if np.any(found & ~lung_in):  # in a hole of the lungs, or (with a margin) just outside them
                lung_labels = split_left_right(lung_labels | infection, min_ratio=self.lung_min_ratio)
            if infection_prob is not None:
                infection_prob[lung_slices] = inf_prob
        logger.info(
            "segmented %s: %d slices with lung, %d lung voxels, %d infection voxels",
            name, lung_slices.size, int(np.count_nonzero(lung_labels)), int(np.count_nonzero(infection)),
        )
        from lungseg.inference.guard import check_plausibility

        # 5. plausibility guard: a chest CT, and lungs where lungs can be (before any figure is reported).
        why, figures = check_plausibility(ct, source_kind, lung_labels, volume.spacing, self.guard)
        if why:
            logger.warning("%s: implausible input: %s", name, why)
        from lungseg.inference.provenance import synthetic_mismatch

        used = {t: p for t, p in self.provenance.items() if t == "lung" or t in tasks}
        withheld = synthetic_mismatch(used, volume)
        return Segmentation(
            lung_labels=lung_labels,
            infection=infection,
            lung_prob=lung_prob,
            infection_prob=infection_prob,
            tasks=tasks,
            implausible_input=why,
            guard_figures=figures,
            provenance=used,
            severity_withheld=withheld,
            spacing_assumed=bool(getattr(volume, "meta", {}).get("spacing_assumed", False)),
            source_kind=source_kind,
        )
