"""Unpack the archives into a staging folder, check every case, then move it into place at once.

Nothing is ever half-unpacked at the destination: everything is written into a hidden staging
folder next to it (same file system), and only a complete, checked dataset is renamed into place.
A manifest (:data:`MANIFEST`) records the size and SHA-256 of every file written, so a later run can
verify the data without the archives.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import re
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from lungseg.errors import DataValidationError, InputError, is_disk_full, some
from lungseg.fetch.sources import LICENSE_AND_CITATION, LICENSE_FILE, ZENODO_ARCHIVES
from lungseg.layout import (
    METADATA_COLUMNS,
    case_id_from_ct_name,
    case_id_from_path,
    is_nifti,
    output_tempdir,
    resolve_relative,
)
from lungseg.limits import Limits, check_payload_size, check_volume_shape

logger = logging.getLogger(__name__)

MANIFEST = ".lungseg-fetch.json"
_PARTIAL = ".partial-"
_CHUNK = 1 << 20
#: An archive of the dataset (about 1.1 GB compressed, a few GB unpacked) never expands past these:
#: checked on the central directory before anything is extracted.
MAX_UNPACKED_BYTES = 40 * 10**9
#: uncompressed / compressed size of a whole archive, over 1 MB (CT volumes dominate: a few to one; a
#: mask alone may reach deflate's 1032:1, so no member is held to it on its own)
MAX_ARCHIVE_RATIO = 100
#: The dataset's folders (Kaggle's zip: anything else is skipped and named).
DATA_FOLDERS = tuple(a.folder for a in ZENODO_ARCHIVES)


def safe_member_path(name: str, archive: str | Path) -> str:
    """The normalised POSIX path of a zip member; refuses absolute paths and ``..`` (zip-slip)."""
    raw = name.replace("\\", "/")
    if raw.startswith("/") or re.match(r"^[A-Za-z]:", raw) or ".." in raw.split("/"):
        raise DataValidationError(f"unsafe member path {name!r} (absolute or with '..'); refusing to unpack "
                                  "anything from this archive", file=str(archive))
    return posixpath.normpath(raw)


def _skipped(path: str) -> bool:
    """Directory entries, macOS resource forks and hidden files are not data."""
    parts = path.split("/")
    return path.endswith("/") or parts[0] == "__MACOSX" or parts[-1].startswith(".")


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataValidationError(f"not a complete zip archive (truncated or corrupted): {exc}",
                                  file=str(path)) from exc


def _members(zf: zipfile.ZipFile, archive: Path, room: Path | None = None) -> Iterator[tuple[zipfile.ZipInfo, str]]:
    """Every data member with its checked path: all names, symlink entries, the expanded size and ratio
    (and the free space at ``room``) are checked before anything is written."""
    checked = [(info, safe_member_path(info.filename, archive)) for info in zf.infolist()]
    links = [info.filename for info, _ in checked if stat.S_ISLNK(info.external_attr >> 16)]
    if links:
        raise DataValidationError(f"symlink entries {', '.join(map(repr, links[:5]))} (a link could point anywhere "
                                  "once unpacked); refusing to unpack anything from this archive", file=str(archive))
    total = sum(info.file_size for info, _ in checked)
    packed = sum(info.compress_size for info, _ in checked)
    if total > MAX_UNPACKED_BYTES:
        raise DataValidationError(f"the archive expands to {total / 1e9:,.1f} GB, over the limit of "
                                  f"{MAX_UNPACKED_BYTES / 1e9:g} GB (lungseg.fetch.unpack.MAX_UNPACKED_BYTES); nothing "
                                  "was unpacked", file=str(archive))
    if total >= _CHUNK and total > MAX_ARCHIVE_RATIO * max(1, packed):
        raise DataValidationError(f"the archive expands {total / max(1, packed):,.0f}:1 ({packed / 1e6:,.1f} MB to "
                                  f"{total / 1e6:,.0f} MB), over the limit of {MAX_ARCHIVE_RATIO}:1 "
                                  "(lungseg.fetch.unpack.MAX_ARCHIVE_RATIO): a zip bomb? nothing was unpacked",
                                  file=str(archive))
    if room is not None:
        free = shutil.disk_usage(room).free
        if total > free:
            raise InputError(f"not enough disk space to unpack {archive.name}: it expands to {total / 1e9:,.2f} GB "
                             f"and {str(room)!r} has {free / 1e9:,.2f} GB free; free some space or choose another "
                             "--dest")
    for info, path in checked:
        if not info.is_dir() and not _skipped(path):
            yield info, path


def _extract(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, archive: Path) -> tuple[int, str]:
    """Copy one member to ``target``; returns (size, sha256). zipfile checks the CRC at the end."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    try:
        with zf.open(info) as src, open(target, "wb") as dst:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                dst.write(chunk)
                size += len(chunk)
    except OSError as exc:
        if is_disk_full(exc):
            raise InputError(f"the disk is full: unpacking {archive.name} into {str(target.parent)!r} stopped at "
                             f"member {info.filename!r} ({exc.strerror}); nothing was installed. Free some space or "
                             "choose another --dest") from exc
        raise DataValidationError(f"member {info.filename!r} cannot be read (truncated or corrupted archive): {exc}",
                                  file=str(archive)) from exc
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise DataValidationError(f"member {info.filename!r} cannot be read (truncated or corrupted archive): {exc}",
                                  file=str(archive)) from exc
    return size, digest.hexdigest()


def check_nifti(path: Path, member: str, archive: Path, limits: Limits) -> None:
    """Open an unpacked NIfTI's header: a 3D volume, within ``limits``, whose file can hold the data its
    header promises; else a DataValidationError naming the member (nothing is installed)."""
    import nibabel as nib
    import numpy as np

    where = f"member {member!r}"
    try:
        img = nib.load(str(path))
        shape = tuple(int(d) for d in img.shape)
        itemsize = np.dtype(img.get_data_dtype()).itemsize
        offset = int(img.header["vox_offset"])
    except Exception as exc:  # noqa: BLE001 - nibabel raises ImageFileError, EOFError, zlib errors...
        raise DataValidationError(f"{where} is not a readable NIfTI image ({type(exc).__name__}: {exc}); nothing "
                                  "was installed", file=str(archive)) from exc
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
        raise DataValidationError(f"{where}: a {len(shape)}D image {shape}, not a CT volume or its mask; nothing was "
                                  "installed", file=str(archive))
    try:
        check_volume_shape(shape, where, limits, itemsize=itemsize)
        with path.open("rb") as fh:
            gzipped = fh.read(2) == b"\x1f\x8b"
        check_payload_size(path, int(np.prod(shape, dtype=np.int64)) * itemsize, offset, gzipped)
    except InputError as exc:
        raise DataValidationError(f"{exc}; nothing was installed".replace(repr(str(path)), repr(member)),
                                  file=str(archive)) from exc


def _skip_note(skipped: list[str], archive: str) -> None:
    if skipped:
        logger.warning("%s: skipped %d member(s) that are not part of the dataset: %s", archive, len(skipped),
                       some(skipped))


def unpack_zenodo(archives: Mapping[str, Path], staging: Path,
                  limits: Limits | None = None) -> tuple[list[dict[str, str]], dict[str, list]]:
    """Unpack Zenodo's four archives into the dataset layout; returns metadata rows and the files written.

    ``ct_scans/<CT name>``, ``lung_mask/<case>``, ``infection_mask/<case>`` and
    ``lung_and_infection_mask/<case>`` (names as in the archives; a sub-folder inside an archive is
    flattened). Every CT must have its three masks and every mask its CT.
    """
    by_column: dict[str, dict[str, str]] = {}
    files: dict[str, list] = {}
    for archive in ZENODO_ARCHIVES:
        path = archives[archive.name]
        cases: dict[str, str] = {}
        skipped: list[str] = []
        with _open_zip(path) as zf:
            for info, member in _members(zf, path, staging):
                base = posixpath.basename(member)
                if not is_nifti(base):
                    skipped.append(member)
                    continue
                case = case_id_from_ct_name(base) if archive.column == "ct_scan" else case_id_from_path(base)
                if case in cases:
                    raise DataValidationError(f"two files for case {case!r}: {cases[case]!r} and {base!r}",
                                              file=archive.name)
                rel = f"{archive.folder}/{base}"
                files[rel] = list(_extract(zf, info, staging / rel, path))
                if limits is not None:
                    check_nifti(staging / rel, member, path, limits)
                cases[case] = rel
        _skip_note(skipped, archive.name)
        if not cases:
            raise DataValidationError("holds no .nii/.nii.gz file", file=archive.name)
        by_column[archive.column] = cases
    _check_cases(by_column)
    ids = sorted(by_column["ct_scan"])
    rows = [{col: by_column[col][case] for col in METADATA_COLUMNS} for case in ids]
    return rows, files


def _check_cases(by_column: Mapping[str, Mapping[str, str]]) -> None:
    all_ids = set().union(*(set(c) for c in by_column.values()))
    problems = []
    for archive in ZENODO_ARCHIVES:
        missing = sorted(all_ids - set(by_column[archive.column]))
        if missing:
            problems.append(f"{archive.name} has no file for case(s) {', '.join(missing)}")
    if problems:
        raise DataValidationError("missing case(s): " + "; ".join(problems) + ". Nothing was unpacked; check or "
                                  "download the archives again")


def unpack_kaggle(zip_path: Path, staging: Path,
                  limits: Limits | None = None) -> tuple[list[dict[str, str]], dict[str, list]]:
    """Unpack Kaggle's zip (``metadata.csv`` + four folders, at the top or in one folder); its
    ``metadata.csv`` is kept as it is (ingestion resolves its ``../input/<slug>/`` prefix).
    Every file it lists must be in the archive; only metadata.csv and the NIfTI files of the four folders
    are unpacked (each header checked against ``limits`` when given), anything else is skipped and named."""
    import pandas as pd

    with _open_zip(zip_path) as zf:
        members = list(_members(zf, zip_path, staging))
        metas = [m for _, m in members if posixpath.basename(m) == "metadata.csv"]
        if len(metas) != 1:
            raise DataValidationError(f"expected one metadata.csv (Kaggle's covid19-ct-scans layout), found "
                                      f"{len(metas)}", file=str(zip_path))
        root = posixpath.dirname(metas[0])
        files: dict[str, list] = {}
        skipped: list[str] = []
        for info, member in members:
            rel = member[len(root) + 1:] if root and member.startswith(root + "/") else None if root else member
            data = rel is not None and rel.split("/")[0] in DATA_FOLDERS and is_nifti(posixpath.basename(rel))
            if rel != "metadata.csv" and not data:
                skipped.append(member)
                continue
            files[rel] = list(_extract(zf, info, staging / rel, zip_path))
            if data and limits is not None:
                check_nifti(staging / rel, member, zip_path, limits)
    _skip_note(skipped, zip_path.name)
    try:
        meta = pd.read_csv(staging / "metadata.csv")
    except Exception as exc:
        raise DataValidationError(f"metadata.csv cannot be read: {exc}", file=str(zip_path)) from exc
    missing_cols = [c for c in METADATA_COLUMNS if c not in meta.columns]
    if missing_cols or meta.empty:
        raise DataValidationError(f"metadata.csv lacks column(s) {missing_cols} or rows", file=str(zip_path))
    problems = []
    for row in meta[list(METADATA_COLUMNS)].to_dict("records"):
        case = case_id_from_path(str(row["lung_mask"]))
        for col in METADATA_COLUMNS:
            value = row[col]
            if col == "lung_and_infection_mask" and (pd.isna(value) or not str(value).strip()):
                continue
            rel = resolve_relative(value, case=case)
            if rel not in files:
                problems.append(f"case {case}: {rel}")
    if problems:
        raise DataValidationError(f"missing case file(s) listed in metadata.csv but not in the archive: "
                                  f"{'; '.join(problems[:10])}" + (" ..." if len(problems) > 10 else ""),
                                  file=str(zip_path))
    return meta.to_dict("records"), files


def _write_text(staging: Path, rel: str, text: str, files: dict[str, list]) -> None:
    data = text.encode()
    (staging / rel).write_bytes(data)
    files[rel] = [len(data), hashlib.sha256(data).hexdigest()]


def finish(staging: Path, rows: list[dict[str, str]], files: dict[str, list], *, source: str,
           archives: Mapping[str, str], write_metadata: bool) -> None:
    """Write metadata.csv (Zenodo), the licence and citation, then the manifest (last)."""
    import pandas as pd

    if write_metadata:
        _write_text(staging, "metadata.csv", pd.DataFrame(rows, columns=list(METADATA_COLUMNS)).to_csv(index=False),
                    files)
    _write_text(staging, LICENSE_FILE, LICENSE_AND_CITATION, files)
    manifest = {"source": source, "archives": dict(archives), "cases": len(rows), "files": files}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def read_manifest(dest: Path) -> dict | None:
    path = dest / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def verify(dest: Path, manifest: Mapping) -> list[str]:
    """Problems with the files the manifest lists (missing, other size, other SHA-256); [] if none."""
    problems = []
    for rel, (size, digest) in sorted(manifest.get("files", {}).items()):
        path = dest / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif path.stat().st_size != size:
            problems.append(f"{rel}: {path.stat().st_size} bytes instead of {size}")
        else:
            h = hashlib.sha256()
            with open(path, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    h.update(chunk)
            if h.hexdigest() != digest:
                problems.append(f"{rel}: content changed (SHA-256)")
    return problems


def has_foreign_content(dest: Path) -> bool:
    """True when ``dest`` holds files and no manifest: data that fetch-data did not write."""
    if not dest.exists():
        return False
    if not dest.is_dir():
        return True
    entries = [p for p in dest.iterdir() if p.name != ".gitkeep"]
    return bool(entries) and not (dest / MANIFEST).is_file()


def make_staging(dest: Path) -> Path:
    """A fresh hidden folder next to ``dest``; stale ones from a killed run are removed first."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(f".{dest.name}{_PARTIAL}*"):
        shutil.rmtree(stale, ignore_errors=True)
    return output_tempdir(f".{dest.name}{_PARTIAL}", dest.parent)


def install(staging: Path, dest: Path) -> None:
    """Move the complete ``staging`` folder to ``dest`` (replacing an earlier fetch-data copy)."""
    if not dest.exists():
        staging.rename(dest)
        return
    if has_foreign_content(dest):  # checked again right before replacing anything
        raise InputError(f"{str(dest)!r} holds files that fetch-data did not write; not replacing them")
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}{_PARTIAL}old-", dir=dest.parent))
    old.rmdir()
    dest.rename(old)
    try:
        staging.rename(dest)
    except OSError:
        old.rename(dest)
        raise
    shutil.rmtree(old, ignore_errors=True)
