"""Parameter checks shared by the model builders (messages name the architecture and the value)."""

from __future__ import annotations

from lungseg.errors import ConfigError


def check_int(arch: str, name: str, value, minimum: int) -> int:
    """``value`` if it is an integer >= ``minimum``, else a ``ConfigError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{arch} {name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_fraction(arch: str, name: str, value) -> float:
    """``float(value)`` if it is a number in [0, 1), else a ``ConfigError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ConfigError(f"{arch} {name} must be a number in [0, 1), got {value!r}")
    return float(value)
