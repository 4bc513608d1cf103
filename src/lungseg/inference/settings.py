"""The settings of a :class:`~lungseg.inference.segment.Segmenter`, read once from the ``inference`` parameters.

``InferenceSettings.from_params(params["inference"])`` is how every caller (``lungseg predict``, the web
UI, the Kedro ``inference`` pipeline, a served ``lungseg-combined`` model, the out-of-fold evaluation)
builds them; ``Segmenter.from_models(lung, infection, settings)`` then builds the segmenter. Nothing
here reads a file: the caller hands the parameters over (a front end reads them with
:func:`lungseg.limits.inference_parameters`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from lungseg.errors import ConfigError
from lungseg.limits import GuardParams

#: The keys of the ``inference`` parameters that :meth:`InferenceSettings.from_params` reads.
SEGMENTER_KEYS = ("batch_size", "lung_min_ratio", "lung_fill_holes", "flip_tta", "guard")
#: Keys it reads when present (their defaults: the dataclass's).
SEGMENTER_OPTIONAL_KEYS = ("infection_margin_mm", "infection_min_lesion_mm3")


@dataclass(frozen=True)
class InferenceSettings:
    """What shapes a Segmenter's result, besides its models.

    Attributes:
        guard: the plausibility guard's bounds (``inference.guard``).
        batch_size: slices per ``predict_on_batch`` call.
        lung_min_ratio: a second lung component is kept when it holds at least this share of the
            largest one's voxels.
        lung_fill_holes: fill the holes of the predicted lungs (vessels, airways) or keep them.
        flip_tta: average each model with its left-right mirror image.
        input_equalised: the input already carries CLAHE (the models' own CLAHE step is skipped).
        chunk_slices: slices prepared at a time (rounded up to a multiple of ``batch_size``).
        infection_margin_mm: 0 keeps the infection inside the predicted lungs' outline. Above 0, an infection
            region that reaches into the lungs is kept up to this distance (in-plane, mm) outside them, and
            that part is made lung: consolidation the lung model cut off at the lungs' edge.
        infection_min_lesion_mm3: 0 keeps every infection region. Above 0, a region (3D, 6-connected, within
            the slices that hold lung) smaller than this volume in mm³ is dropped: specks of false positive.
    """

    guard: GuardParams
    batch_size: int = 16
    lung_min_ratio: float = 0.1
    lung_fill_holes: bool = False
    flip_tta: bool = False
    input_equalised: bool = False
    chunk_slices: int = 64
    infection_margin_mm: float = 0.0
    infection_min_lesion_mm3: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.guard, GuardParams):
            if not isinstance(self.guard, Mapping):
                raise ConfigError(f"inference.guard must be a mapping of the guard's bounds, got {self.guard!r}")
            object.__setattr__(self, "guard", GuardParams.from_params(self.guard))
        if isinstance(self.batch_size, bool) or int(self.batch_size) < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        for name, cast in (("batch_size", int), ("chunk_slices", int), ("lung_min_ratio", float),
                           ("lung_fill_holes", bool), ("flip_tta", bool), ("input_equalised", bool)):
            object.__setattr__(self, name, cast(getattr(self, name)))
        margin = self.infection_margin_mm
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin >= 0:
            raise ConfigError(f"infection_margin_mm must be a number of mm >= 0 (0: inside the lungs), got {margin!r}")
        object.__setattr__(self, "infection_margin_mm", float(margin))
        smallest = self.infection_min_lesion_mm3
        if isinstance(smallest, bool) or not isinstance(smallest, (int, float)) or not smallest >= 0:
            raise ConfigError(f"infection_min_lesion_mm3 must be a volume in mm³ >= 0 (0: keep every region), "
                              f"got {smallest!r}")
        object.__setattr__(self, "infection_min_lesion_mm3", float(smallest))

    @classmethod
    def from_params(cls, params: Mapping[str, Any], section: str = "inference", **overrides: Any) -> InferenceSettings:
        """The settings in the ``inference`` parameters (other keys of the section are left to their readers).

        Args:
            params: the ``inference`` section (or a bundle's ``settings.json``), holding :data:`SEGMENTER_KEYS`.
            overrides: settings given by the caller instead (``flip_tta=True``, ``input_equalised=True``...).

        Raises:
            ConfigError: a key is missing (naming it and ``section``) or a value is unusable.
        """
        if not isinstance(params, Mapping):
            raise ConfigError(f"parameters '{section}' must be a mapping, got {type(params).__name__}")
        missing = [k for k in SEGMENTER_KEYS if k not in params and k not in overrides]
        if missing:
            raise ConfigError(f"parameters '{section}' lack {', '.join(repr(k) for k in missing)}")
        values = {k: params[k] for k in (*SEGMENTER_KEYS, *SEGMENTER_OPTIONAL_KEYS) if k in params}
        if not isinstance(values.get("guard", {}), (Mapping, GuardParams)):
            raise ConfigError(f"parameter '{section}.guard' must be a mapping, got {values['guard']!r}")
        if isinstance(values.get("guard"), Mapping):
            values["guard"] = GuardParams.from_params(values["guard"], f"{section}.guard")
        return cls(**{**values, **overrides})

    def replace(self, **changes: Any) -> InferenceSettings:
        """A copy with ``changes`` (the settings are frozen)."""
        return replace(self, **changes)
