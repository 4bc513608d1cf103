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


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{path}."))
        else:
            out[path] = value
    return out


def _type_problem(path: str, configured: Any, given: Any) -> str | None:
    """Why ``given`` cannot replace the configured value, or None (null on either side is allowed)."""
    if configured is None or given is None:
        return None
    if isinstance(configured, bool):
        ok, want = isinstance(given, bool), "true or false"
    elif isinstance(configured, (int, float)):
        ok, want = isinstance(given, (int, float)) and not isinstance(given, bool), "a number"
    elif isinstance(configured, str):
        ok, want = isinstance(given, str), "a string"
    elif isinstance(configured, Mapping):
        ok, want = isinstance(given, Mapping), "a mapping of its keys"
    elif isinstance(configured, (list, tuple)):
        ok, want = isinstance(given, (list, tuple, str)), "a list"
    else:
        return None
    if ok:
        return None
    return f"'{path}' must be {want} (configured {configured!r}), got {given!r}"


def check_runtime_params(runtime: Mapping[str, Any], configured: Mapping[str, Any]) -> list[str]:
    """What is wrong with ``kedro run --params`` values, against the configured parameters.

    Args:
        runtime: the runtime parameters, nested (``{"infection_unet": {"training": {"epochs": 3}}}``)
            or with dotted keys.
        configured: the environment's parameters without the runtime ones (conf/base merged with
            ``--env``).

    Returns:
        One message per unknown key (with the closest known key at that level as a hint) or value
        of the wrong type (``epochs=abc`` where a number is configured); empty when all is well.
    """
    problems = []
    for path, given in _flatten(runtime).items():
        node: Any = configured
        walked = []
        for part in path.split("."):
            if node is None:  # a null setting may be given as a mapping (reduce_lr.patience=2 where reduce_lr: null)
                break
            if not isinstance(node, Mapping) or part not in node:
                level = sorted(str(k) for k in node if not str(k).startswith("_")) if isinstance(node, Mapping) else []
                close = difflib.get_close_matches(part, level, n=1)
                where = f"in '{'.'.join(walked)}'" if walked else "as a parameter section"
                hint = f" (did you mean '{'.'.join([*walked, close[0]])}'?)" if close else ""
                if not close and not walked:  # a section's key given without its section: trainig -> lung_unet.training
                    inner = sorted({f"{k}.{k2}" for k, v in node.items() if isinstance(v, Mapping) and not str(k).startswith("_")
                                    for k2 in v if difflib.get_close_matches(part, [str(k2)], n=1)})
                    hint = f" (did you mean {', '.join(repr(x) for x in inner[:4])}?)" if inner else ""
                if not isinstance(node, Mapping):
                    problems.append(f"unknown parameter '{path}': '{'.'.join(walked)}' is a value, not a section")
                else:
                    problems.append(f"unknown parameter '{path}': no '{part}' {where}{hint}")
                break
            walked.append(part)
            node = node[part]
        else:
            problem = _type_problem(path, node, given)
            if problem:
                problems.append(problem)
    return problems
