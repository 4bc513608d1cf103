"""``lungseg fetch-data``: the real dataset in one command, checksummed, unpacked atomically.

:func:`fetch_data` downloads Zenodo record 3757476's four archives with pooch (SHA-256 checked,
retried, cached so that an interrupted run skips the archives it completed), or takes archives
already downloaded (``source``: Zenodo's four in a folder, or Kaggle's single zip). It unpacks them into the layout
ingestion reads (``ct_scans/``, ``lung_mask/``, ``infection_mask/``, ``lung_and_infection_mask/`` and a
``metadata.csv`` with Kaggle's columns), with the licence and citation next to the data.

A second run verifies the files against the manifest and does nothing; with ``--from`` it also checks
what it is given (a Zenodo archive's SHA-256, a Kaggle zip's against the one installed) and installs it
when it differs. A checksum mismatch, a truncated archive, an unsafe member path, a symlink entry, an
archive over the size or ratio limits, a NIfTI whose header cannot be read or is over
``inference.limits``, or a missing case raises a :mod:`lungseg.errors` error and leaves nothing at the
destination; a full disk says so.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lungseg.errors import InputError
from lungseg.fetch import unpack
from lungseg.fetch.sources import (
    LICENSE_AND_CITATION,
    LICENSE_FILE,
    ZENODO_ARCHIVES,
    ZENODO_BASE_URL,
    ZENODO_SHA256,
    archive_hashes,
    download_archives,
    locate_archives,
    sha256_of,
)

__all__ = ["DEFAULT_DEST", "FetchResult", "ZENODO_BASE_URL", "ZENODO_SHA256", "LICENSE_AND_CITATION",
           "default_cache_dir", "fetch_data"]

logger = logging.getLogger(__name__)

DEFAULT_DEST = Path("data/01_raw/covid19-ct-scans")


@dataclass(frozen=True)
class FetchResult:
    """What :func:`fetch_data` did: ``action`` is ``"installed"`` or ``"verified"`` (nothing to do)."""

    dest: Path
    action: str
    source: str
    n_cases: int
    n_files: int

    @property
    def license_file(self) -> Path:
        return self.dest / LICENSE_FILE


def default_cache_dir(dest: Path) -> Path:
    """Where downloaded archives are kept: ``<dest's parent>/.downloads/zenodo-3757476``."""
    return Path(dest).parent / ".downloads" / "zenodo-3757476"


def fetch_data(dest: str | Path = DEFAULT_DEST, source: str | Path | None = None, *,
               base_url: str = ZENODO_BASE_URL, hashes: Mapping[str, str] | None = None,
               cache_dir: str | Path | None = None, retries: int = 2, progress: bool = True,
               timeout: float = 60.0) -> FetchResult:
    """Put the dataset at ``dest``; see the module docstring.

    Args:
        dest: the dataset root (``raw_root``).
        source: ``None`` to download; else a folder with Zenodo's four archives, or Kaggle's zip.
        base_url: where the four archives are (Zenodo, or a mirror / a test server).
        hashes: ``{archive name: SHA-256}``; default: the values published for the record.
        cache_dir: where downloads are kept (default :func:`default_cache_dir`).
        retries: extra attempts per download.
        progress: show download progress bars.
        timeout: seconds without data before a download attempt fails.
    """
    from lungseg.limits import load_limits

    dest = Path(dest)
    limits = load_limits()  # every NIfTI's header is held to inference.limits before it is installed
    located = locate_archives(Path(source), hashes) if source is not None else None  # --from: always checked
    manifest = unpack.read_manifest(dest)
    if manifest is not None:
        problems = unpack.verify(dest, manifest)
        if not problems and (located is None or _same_archives(located, manifest, hashes)):
            logger.info("%s already holds the dataset; %d files verified", dest, len(manifest["files"]))
            return FetchResult(dest, "verified", manifest.get("source", "?"), int(manifest.get("cases", 0)),
                               len(manifest["files"]))
        if problems:
            logger.warning("%s is damaged (%s); fetching it again", dest, "; ".join(problems[:5]))
        else:
            logger.info("--from %s is not the archive %s was installed from: checking and installing it", source, dest)
    elif unpack.has_foreign_content(dest):
        raise InputError(f"{str(dest)!r} already holds files that fetch-data did not write (no {unpack.MANIFEST}); "
                         "move them away or choose another --dest")

    if located is None:
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir(dest)
        kind, archives = "zenodo", download_archives(cache, base_url=base_url, hashes=hashes, retries=retries,
                                                     progress=progress, timeout=timeout)
    else:
        kind, archives = located

    staging = unpack.make_staging(dest)
    try:
        if kind == "zenodo":
            rows, files = unpack.unpack_zenodo(archives, staging, limits)
            expected = archive_hashes(hashes)
            sums = {a.name: expected[a.name] for a in ZENODO_ARCHIVES}
        else:
            rows, files = unpack.unpack_kaggle(archives["kaggle"], staging, limits)
            sums = {archives["kaggle"].name: sha256_of(archives["kaggle"])}
        unpack.finish(staging, rows, files, source=kind, archives=sums, write_metadata=kind == "zenodo")
        unpack.install(staging, dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("%d cases unpacked into %s", len(rows), dest)
    return FetchResult(dest, "installed", kind, len(rows), len(files))


def _same_archives(located: tuple[str, dict[str, Path]], manifest: Mapping, hashes: Mapping[str, str] | None) -> bool:
    """The archives given with ``--from`` are those the installed copy came from (by SHA-256)."""
    kind, archives = located
    if kind == "zenodo":  # locate_archives checked their SHA-256 against the published ones
        expected = archive_hashes(hashes)
        return manifest.get("archives") == {a.name: expected[a.name] for a in ZENODO_ARCHIVES}
    return manifest.get("archives") == {archives["kaggle"].name: sha256_of(archives["kaggle"])}
