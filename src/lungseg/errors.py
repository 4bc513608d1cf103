"""Errors raised by lungseg.

Every error names what went wrong in words a user can act on: the case, the file and the problem.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from pathlib import Path


class LungsegError(Exception):
    """Base class of every error lungseg raises on purpose."""


def _where(case: str | None, file: str | Path | None) -> str:
    parts = []
    if case is not None:
        parts.append(f"case {case!r}")
    if file is not None:
        parts.append(f"file {str(file)!r}")
    return ", ".join(parts)


class DataValidationError(LungsegError):
    """Bad input data: a missing or unreadable file, wrong shapes, bad labels, NaN..."""

    def __init__(self, problem: str, *, case: str | None = None, file: str | Path | None = None):
        self.problem = problem
        self.case = case
        self.file = None if file is None else str(file)
        where = _where(case, file)
        super().__init__(f"{where}: {problem}" if where else problem)


class ConfigError(LungsegError):
    """A missing, mistyped or inconsistent parameter."""


class InputError(LungsegError):
    """An input given to inference (CLI, UI) that cannot be used."""


class ModelNotFoundError(LungsegError):
    """No trained model where one was expected."""


class TrainingDataError(LungsegError):
    """The data handed to training cannot train a model (empty, no positives...)."""


class ImplausibleInputError(LungsegError):
    """The plausibility guard refused the input or its segmentation (not a chest CT, lungs where none
    can be...). The outputs and report are written; the CLI exits with code 3."""


class Terminated(BaseException):  # noqa: N818 - a signal, like KeyboardInterrupt, not an error
    """SIGTERM turned into an exception, so that every ``finally`` and ``except BaseException`` clean-up
    runs (temporary folders, the output lock) as it does for Ctrl-C; the CLI exits with code 143."""

    def __init__(self, signum: int = 15):
        self.signum = signum
        super().__init__(f"terminated by signal {signum}")


def is_disk_full(exc: BaseException) -> bool:
    """True for the OSError of a full disk or an exhausted quota (ENOSPC, EDQUOT): it gets its own message,
    never "corrupt archive" or "internal error"."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def some(names: Iterable[object], n: int = 10) -> str:
    """The first ``n`` of ``names``, comma-separated, with the count when there are more: a message stays
    one line for a batch of 10,000 cases or an archive of as many members."""
    names = [str(x) for x in names]
    return ", ".join(names[:n]) + (f", ... ({len(names):,} in all)" if len(names) > n else "")
