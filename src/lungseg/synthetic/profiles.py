"""Size profiles of the synthetic dataset (``tiny`` for tests, ``demo`` for the CPU demo, ``full``).

This module is the one definition of the profiles: :func:`lungseg.synthetic.write_dataset` (tests,
benchmarks) and the ``synthetic_data`` pipeline both read :data:`DEFAULT_PROFILES`.
``conf/base/parameters_synthetic_data.yml`` only picks one (``profile``, ``seed``, ``n_cases``) and may
override it key by key (``profiles: {demo: {n_cases: 8}}``), see :func:`resolve_params`.

A profile is a plain dict. Required keys: ``n_cases``, ``sizes`` (square in-plane sizes, drawn per
case) and ``spacing_xy`` (in-plane spacing range in mm); the optional keys and their defaults are in
:data:`OPTIONAL_DEFAULTS`. Lists marked "cycled" are applied to case i as ``list[i % len(list)]``;
ranges are ``[min, max]``. :func:`resolve_profile` fills missing optional keys and checks every value,
raising :class:`~lungseg.errors.ConfigError` with the key and the problem.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from lungseg.errors import ConfigError

SOURCE_KINDS = ("hu", "uint8")

#: Optional keys and their defaults (shared by every profile).
OPTIONAL_DEFAULTS: dict[str, Any] = {
    "slices": None,  # [min, max] number of slices, drawn uniformly per case ...
    "slice_counts": None,  # ... or an explicit list of slice counts, cycled over the cases
    "spacing_z": [1.0, 5.0],  # slice spacing range in mm (snapped to common scanner values)
    "scan_length_mm": [260.0, 360.0],  # craniocaudal coverage aimed at when choosing the slice spacing
    "model_size": 128,  # in-plane size of the coarse grid the anatomy is built on (upsampled with cv2)
    "model_slices": 96,  # most slices of the coarse grid (slices are interpolated in between)
    "source_kinds": ["hu", "uint8"],  # cycled: raw HU int16 with FOV padding | windowed uint8 0-255
    "orientations": ["LPS", "LPS", "RAS", "LPS", "LPS", "RPS"],  # stored axis codes, cycled
    "infected": [True, True, True, True, False, True],  # cycled: False = a case with no infection
    "infection_fraction": [0.05, 0.25],  # log-uniform share of the lung area that is infected
    "noise_hu": [8.0, 22.0],  # standard deviation of the image noise
    "window": [-1250.0, 250.0],  # HU window of the uint8 cases
    "fov_padding": [-2048, -3024],  # out-of-field values of the HU cases, drawn per case
}

DEFAULT_PROFILES: dict[str, dict[str, Any]] = {
    "tiny": {  # for tests: a second or two
        "n_cases": 3,
        "sizes": [64],
        "slices": [12, 20],
        "spacing_xy": [5.0, 6.5],
        "spacing_z": [5.0, 5.0],
        "model_size": 64,
        "model_slices": 32,
        "orientations": ["LPS", "LPS", "RAS"],
        "infected": [True, False, True],
    },
    "demo": {  # the CPU demo (make demo): 6 cases of 256 x 256 x 40-80 voxels, a few seconds
        "n_cases": 6,
        "sizes": [256],
        "slices": [40, 80],
        "spacing_xy": [1.2, 1.8],
        "spacing_z": [2.5, 5.0],
        "scan_length_mm": [180.0, 320.0],
        "model_size": 128,
        "model_slices": 96,
    },
    "full": {  # the size of the real set: 20 cases, 512 or 630 px, 39-418 slices (3,520 in all)
        "n_cases": 20,
        "sizes": [512, 512, 512, 630],
        # The slice counts of the 20 real volumes (39-418, 3,520 slices in all).
        "slice_counts": [301, 200, 200, 270, 290, 213, 249, 301, 256, 301,
                         45, 39, 418, 110, 66, 42, 42, 45, 93, 39],
        "spacing_xy": [0.6, 0.9],
        "spacing_z": [1.0, 5.0],
        "model_size": 160,
        "model_slices": 96,
    },
}

#: The keys of the ``synthetic_data`` parameters.
PARAM_KEYS = ("profile", "seed", "n_cases", "profiles")

_AXCODE_PAIRS = ({"L", "R"}, {"P", "A"}, {"S", "I"})


def _range(profile: Mapping[str, Any], key: str, *, positive: bool = True) -> list[float]:
    value = profile[key]
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(f"synthetic_data profile: {key!r} must be a [min, max] pair, got {value!r}")
    try:
        lo, hi = float(value[0]), float(value[1])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"synthetic_data profile: {key!r} must hold numbers, got {value!r}") from exc
    if lo > hi or (positive and lo <= 0):
        raise ConfigError(f"synthetic_data profile: {key!r} must satisfy 0 < min <= max, got {value!r}")
    return [lo, hi]


def _nonempty_list(profile: Mapping[str, Any], key: str) -> list:
    value = profile[key]
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"synthetic_data profile: {key!r} must be a non-empty list, got {value!r}")
    return list(value)


def _check_axcodes(code: Any) -> str:
    code = str(code).upper()
    if len(code) != 3 or any(sum(c in pair for c in code) != 1 for pair in _AXCODE_PAIRS):
        raise ConfigError(
            f"synthetic_data profile: orientation {code!r} is not a valid set of axis codes "
            "(one of L/R, one of P/A, one of S/I, e.g. 'LPS', 'RAS')"
        )
    return code


def resolve_profile(profile: str | Mapping[str, Any]) -> dict[str, Any]:
    """Return a complete, checked copy of a profile, given by name or as a dict.

    A dict that names none of the defaults is completed from :data:`OPTIONAL_DEFAULTS`.
    """
    if isinstance(profile, str):
        if profile not in DEFAULT_PROFILES:
            raise ConfigError(
                f"unknown synthetic_data profile {profile!r}; choose one of {sorted(DEFAULT_PROFILES)}"
            )
        profile = DEFAULT_PROFILES[profile]
    if not isinstance(profile, Mapping):
        raise ConfigError(f"synthetic_data profile must be a name or a mapping, got {type(profile).__name__}")
    out: dict[str, Any] = copy.deepcopy(OPTIONAL_DEFAULTS)
    out.update(copy.deepcopy(dict(profile)))
    for key in ("n_cases", "sizes", "spacing_xy"):
        if key not in out:
            raise ConfigError(f"synthetic_data profile: missing required key {key!r}")
    unknown = sorted(set(out) - set(OPTIONAL_DEFAULTS) - {"n_cases", "sizes", "spacing_xy"})
    if unknown:
        raise ConfigError(f"synthetic_data profile: unknown key(s) {unknown}")

    try:
        out["n_cases"] = int(out["n_cases"])
        out["sizes"] = [int(s) for s in _nonempty_list(out, "sizes")]
        out["model_size"] = int(out["model_size"])
        out["model_slices"] = int(out["model_slices"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"synthetic_data profile: n_cases, sizes, model_size and model_slices must be integers ({exc})"
        ) from exc
    if out["n_cases"] < 1:
        raise ConfigError(f"synthetic_data profile: n_cases must be >= 1, got {out['n_cases']}")
    if min(out["sizes"]) < 32:
        raise ConfigError(f"synthetic_data profile: sizes must be >= 32 pixels, got {out['sizes']}")
    if out["model_size"] < 32 or out["model_slices"] < 4:
        raise ConfigError("synthetic_data profile: model_size must be >= 32 and model_slices >= 4")

    if out["slice_counts"] is not None:
        counts = [int(c) for c in _nonempty_list(out, "slice_counts")]
        if min(counts) < 8:
            raise ConfigError(f"synthetic_data profile: slice_counts must all be >= 8, got {counts}")
        out["slice_counts"] = counts
    elif out["slices"] is not None:
        lo, hi = _range(out, "slices")
        if lo < 8:
            raise ConfigError(
                f"synthetic_data profile: slices must be >= 8 (lungs are absent at both ends), got {out['slices']}"
            )
        out["slices"] = [int(lo), int(hi)]
    else:
        raise ConfigError("synthetic_data profile: give either 'slices' [min, max] or 'slice_counts'")

    for key in ("spacing_xy", "spacing_z", "scan_length_mm", "infection_fraction", "noise_hu"):
        out[key] = _range(out, key)
    if out["infection_fraction"][1] >= 0.9:
        raise ConfigError("synthetic_data profile: infection_fraction must stay below 0.9")
    out["window"] = _range(out, "window", positive=False)
    kinds = [str(k) for k in _nonempty_list(out, "source_kinds")]
    bad = [k for k in kinds if k not in SOURCE_KINDS]
    if bad:
        raise ConfigError(f"synthetic_data profile: source_kinds {bad} not in {SOURCE_KINDS}")
    out["source_kinds"] = kinds
    out["orientations"] = [_check_axcodes(c) for c in _nonempty_list(out, "orientations")]
    out["infected"] = [bool(v) for v in _nonempty_list(out, "infected")]
    out["fov_padding"] = [int(v) for v in _nonempty_list(out, "fov_padding")]
    if max(out["fov_padding"]) > -1025:
        raise ConfigError(f"synthetic_data profile: fov_padding values must be below -1024, got {out['fov_padding']}")
    return out


def resolve_params(params: Mapping[str, Any]) -> tuple[dict[str, Any], int, str]:
    """Read the ``synthetic_data`` parameters: returns (checked profile, seed, profile name).

    ``params`` holds ``profile`` (a name), ``seed`` and ``profiles`` (name -> profile dict); a
    profile named in ``profiles`` overrides the built-in one of the same name key by key.
    An optional ``n_cases`` at the top level overrides the profile's.
    """
    if not isinstance(params, Mapping):
        raise ConfigError(f"params:synthetic_data must be a mapping, got {type(params).__name__}")
    unknown = sorted(set(params) - set(PARAM_KEYS))
    if unknown:
        raise ConfigError(f"parameters 'synthetic_data': unknown key(s) {unknown}; known: {list(PARAM_KEYS)}")
    name = str(params.get("profile", "demo"))
    profiles = params.get("profiles") or {}
    if not isinstance(profiles, Mapping):
        raise ConfigError("synthetic_data.profiles must be a mapping of profile name -> settings")
    if name not in profiles and name not in DEFAULT_PROFILES:
        raise ConfigError(
            f"synthetic_data.profile {name!r} is not defined; known profiles: "
            f"{sorted(set(profiles) | set(DEFAULT_PROFILES))}"
        )
    override = profiles.get(name) or {}
    if not isinstance(override, Mapping):
        raise ConfigError(f"synthetic_data.profiles.{name} must be a mapping of key -> value, got {override!r}")
    merged = dict(DEFAULT_PROFILES.get(name, {}))
    merged.update(override)
    if params.get("n_cases") is not None:
        merged["n_cases"] = params["n_cases"]
    try:
        seed = int(params.get("seed", 0))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"synthetic_data.seed must be an integer, got {params.get('seed')!r}") from exc
    if seed < 0:
        raise ConfigError(f"synthetic_data.seed must be >= 0, got {seed}")
    return resolve_profile(merged), seed, name
