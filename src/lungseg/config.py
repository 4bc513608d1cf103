"""Checks for the parameter dicts that Kedro hands the nodes.

Every knob lives in ``conf/base/parameters_*.yml``; the code holds no second set of defaults. A
section that misses a key, or holds one the code does not know (a YAML typo), is refused by name
before any work starts.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from lungseg.errors import ConfigError


def check_section(
    params: Any, section: str, required: Iterable[str], optional: Iterable[str] = ()
) -> dict[str, Any]:
    """Return ``params`` as a plain dict after checking its keys.

    Args:
        params: the parameters of one section (for example ``params:infection_unet.training``).
        section: its name in the YAML, used in messages (``infection_unet.training``).
        required: keys that must be present (``null`` is a value).
        optional: keys that may be left out.

    Raises:
        ConfigError: ``params`` is not a mapping, a key is unknown (with the closest known key as a
            hint), or a required key is missing.
    """
    if not isinstance(params, Mapping):
        raise ConfigError(f"parameters '{section}' must be a mapping, got {type(params).__name__}")
    required, optional = set(required), set(optional)
    known = required | optional
    unknown = sorted(set(params) - known)
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hints.append(f"'{section}.{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise ConfigError(f"unknown parameter {', '.join(hints)}; allowed in '{section}': {sorted(known)}")
    missing = sorted(required - set(params))
    if missing:
        raise ConfigError(
            f"missing parameter {', '.join(f'{section}.{k}' for k in missing)}: set it in "
            f"conf/base/parameters_*.yml (or the environment's override)"
        )
    return dict(params)


def positive_number(params: Mapping[str, Any], key: str, section: str, integer: bool = False) -> float | int:
    """``params[key]`` as a positive number (an integer when ``integer``), or a ConfigError naming it."""
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"parameter '{section}.{key}' must be a positive number, got {value!r}")
    if integer:
        if int(value) != value:
            raise ConfigError(f"parameter '{section}.{key}' must be an integer, got {value!r}")
        return int(value)
    return float(value)
