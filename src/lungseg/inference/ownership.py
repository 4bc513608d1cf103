"""Which output folders are lungseg's, and replacing only what lungseg wrote there.

A folder is a lungseg output only when it holds lungseg's manifest, ``.lungseg-output.json``: the
kind of output (``case`` or ``batch``) and the relative paths of the files and folders lungseg wrote.
A ``report.json`` or a ``summary.csv`` alone proves nothing (anyone may have one). So:

* an absent or empty ``-o`` (hidden files such as ``.gitkeep`` aside) is filled;
* a lungseg output of the same kind is updated: the entries its manifest lists are removed and the
  new files moved in; anything else in the folder (a user's notes) is left alone;
* any other non-empty folder is refused, unless ``overwrite`` is given; then the new files are moved
  in over same-named ones, and nothing else in it is touched either;
* a symlinked ``-o``, or a file, is refused.

Work happens in a sibling staging folder ``.<name>.tmp-<pid>-*``; a staging folder whose process is
gone (a run killed with SIGKILL) is removed by the next run that writes beside it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from lungseg.errors import InputError
from lungseg.inference.output_lock import pid_alive
from lungseg.layout import output_tempdir, output_tempfile

MANIFEST_FILE = ".lungseg-output.json"
KINDS = {"case": "lungseg output", "batch": "lungseg batch output"}


def read_manifest(folder: str | Path) -> dict | None:
    """The manifest of ``folder``, or None when it has none (or an unreadable one)."""
    try:
        data = json.loads((Path(folder) / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("kind") not in KINDS or not isinstance(data.get("entries"), list):
        return None
    return data


def write_manifest(folder: str | Path, kind: str, entries: list[str]) -> Path:
    """Write ``folder``'s manifest atomically, listing ``entries`` (paths relative to ``folder``)."""
    from lungseg import __version__

    folder = Path(folder)
    data = {"kind": kind, "lungseg": __version__, "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "entries": sorted(set(entries))}
    fd, tmp = output_tempfile(f"{MANIFEST_FILE}.", folder)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1)
        os.replace(tmp, folder / MANIFEST_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return folder / MANIFEST_FILE


def _visible(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if not p.name.startswith(".")]


def check_output_dir(outdir: str | Path, kind: str = "case", overwrite: bool = False) -> Path:
    """Check that ``outdir`` may receive a ``kind`` output (see the module docstring); return it.

    Raises:
        InputError: ``outdir`` is a symlink or a file, or a non-empty folder that holds no lungseg
            manifest of this kind (and ``overwrite`` is not set).
    """
    outdir = Path(outdir)
    if outdir.is_symlink():
        raise InputError(f"output {str(outdir)!r} is a symbolic link; give the real folder "
                         f"({os.path.realpath(outdir)!r}) or a new one")
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"output {str(outdir)!r} exists and is not a folder")
    if overwrite or not outdir.is_dir() or not _visible(outdir):
        return outdir
    manifest = read_manifest(outdir)
    if manifest is None:
        raise InputError(
            f"output folder {str(outdir)!r} is not empty and is not a {KINDS[kind]} (it has no {MANIFEST_FILE}); "
            "nothing in it was changed. Choose a new or empty folder, or pass --overwrite to write into it "
            "(only same-named files are replaced)"
        )
    if manifest["kind"] != kind:
        raise InputError(f"output folder {str(outdir)!r} holds a {KINDS[manifest['kind']]}, not a {KINDS[kind]}; "
                         "choose another folder")
    return outdir


def _inside(folder: Path, rel: str) -> Path | None:
    """``folder / rel`` when ``rel`` is a plain relative path that stays inside ``folder``, else None."""
    path = Path(rel)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        return None
    return folder / path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def install_dir(staged: Path, dst: Path, kind: str) -> None:
    """Move the finished folder ``staged`` to ``dst`` and give ``dst`` a manifest listing what it holds.

    ``dst`` absent or empty: one rename. Otherwise (``dst`` passed :func:`check_output_dir`): the
    entries of ``dst``'s old manifest are removed, then every top-level entry of ``staged`` is moved
    in; nothing else in ``dst`` is touched.
    """
    entries = sorted(p.name for p in staged.iterdir() if p.name != MANIFEST_FILE)
    write_manifest(staged, kind, entries)
    if not dst.exists() or not any(dst.iterdir()):
        if dst.exists():
            dst.rmdir()
        os.replace(staged, dst)
        return
    old = read_manifest(dst)
    for rel in old["entries"] if old else []:
        target = _inside(dst, rel)
        if target is not None and (target.exists() or target.is_symlink()):
            _remove(target)
    for name in entries:
        target = dst / name
        if target.exists() or target.is_symlink():
            _remove(target)  # a same-named entry: replaced (allowed by the manifest or --overwrite)
        os.replace(staged / name, target)
    os.replace(staged / MANIFEST_FILE, dst / MANIFEST_FILE)
    shutil.rmtree(staged, ignore_errors=True)


def staging_dir(dst: Path) -> Path:
    """A new staging folder beside ``dst``, named with this process id; stale ones are swept first."""
    sweep_stale(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    return output_tempdir(f".{dst.name}.tmp-{os.getpid()}-", dst.parent)


def sweep_stale(dst: Path) -> list[Path]:
    """Remove the staging folders beside ``dst`` whose process is gone; return what was removed."""
    pattern = re.compile(rf"^\.{re.escape(dst.name)}\.(?:tmp|old)-(\d+)-")
    removed = []
    try:
        siblings = list(dst.parent.iterdir())
    except OSError:
        return removed
    for path in siblings:
        match = pattern.match(path.name)
        if match and path.is_dir() and not path.is_symlink() and not pid_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def scratch_dir(prefix: str):
    """A temporary folder in TMPDIR named ``<prefix><pid>-<random>``, removed on every exit. First, the
    folders of that prefix whose process is gone (killed with SIGKILL, out of power) are swept, so a fault
    never leaves them behind for good (#28 item 7)."""
    base = Path(tempfile.gettempdir())
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)-")
    try:
        entries = list(base.iterdir())
    except OSError:
        entries = []
    for path in entries:
        match = pattern.match(path.name)
        if match and path.is_dir() and not path.is_symlink() and not pid_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
