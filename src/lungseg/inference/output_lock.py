"""One run per output folder, and a writable one, checked before any inference starts.

:func:`output_lock` creates ``.<name>.lock`` beside the output folder (in its parent) with
``O_CREAT | O_EXCL``, holding the process id. A second run to the same ``-o`` finds the lock and
fails at once with a clear message; a lock whose process is gone (a run killed with SIGKILL) is
taken over. Creating the lock file is also the writability check: an output whose parent cannot be
written is refused before any model is loaded. The lock is removed on every exit.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from lungseg.errors import InputError

logger = logging.getLogger(__name__)


def lock_path(outdir: str | Path) -> Path:
    """The lock file of an output folder: ``<parent>/.<name>.lock``."""
    out = Path(os.path.abspath(outdir))
    return out.parent / f".{out.name}.lock"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (another user's live process counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's live process; an absurd pid
        return True
    return True


def _holder(lock: Path) -> int:
    try:
        return int(lock.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return -1


def _create(lock: Path) -> int:
    return os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)


def _unwritable(outdir: Path, exc: OSError) -> InputError:
    return InputError(
        f"output folder {str(outdir)!r} is not writable ({type(exc).__name__}: {exc.strerror or exc}); "
        "choose another -o"
    )


@contextlib.contextmanager
def output_lock(outdir: str | Path) -> Iterator[Path]:
    """Hold the output folder's lock for the duration of a run; yields the lock file's path.

    Raises:
        InputError: the output (or its parent) cannot be created or written, or another live run
            holds the lock.
    """
    outdir = Path(outdir)
    out = Path(os.path.abspath(outdir))
    created = []
    for parent in reversed(out.parents):
        if not parent.exists():
            created.append(parent)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(outdir, exc) from exc
    if out.is_dir() and not os.access(out, os.W_OK | os.X_OK):
        raise _unwritable(outdir, PermissionError(errno.EACCES, "permission denied"))
    lock = lock_path(out)
    fd = None
    for _ in range(2):
        try:
            fd = _create(lock)
            break
        except FileExistsError:
            pid = _holder(lock)
            if pid_alive(pid) and pid != os.getpid():
                raise InputError(
                    f"output folder {str(outdir)!r} is being written by another lungseg run (pid {pid}; lock file "
                    f"{str(lock)!r}); wait for it to finish or choose another -o"
                ) from None
            logger.warning("taking over the stale lock %s (pid %s is gone)", lock, pid)
            lock.unlink(missing_ok=True)
        except OSError as exc:
            _remove_created(created)
            raise _unwritable(outdir, exc) from exc
    if fd is None:
        raise InputError(f"output folder {str(outdir)!r}: cannot take the lock {str(lock)!r}")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{os.getpid()}\n")
        yield lock
    finally:
        if _holder(lock) == os.getpid():
            lock.unlink(missing_ok=True)
        if not out.exists():
            _remove_created(created)


def _remove_created(created: list[Path]) -> None:
    """Remove the parent folders this run created, if they are still empty (deepest first)."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            break
