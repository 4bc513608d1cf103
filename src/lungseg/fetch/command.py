"""The ``lungseg fetch-data`` subcommand (argparse), kept here so that cli.py only registers it."""

from __future__ import annotations

import argparse
from pathlib import Path

from lungseg.fetch import DEFAULT_DEST, LICENSE_AND_CITATION, ZENODO_BASE_URL, default_cache_dir, fetch_data


def add_parser(sub, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``fetch-data`` to the ``lungseg`` subparsers ``sub``."""
    p = sub.add_parser(
        "fetch-data",
        parents=parents,
        help="download the real dataset (Zenodo 3757476, checksummed) into the layout ingestion reads",
        description="Download the COVID-19 CT Lung and Infection Segmentation Dataset (Zenodo 3757476: four "
        "archives, SHA-256 checked, about 1.1 GB), unpack it atomically into DEST with a metadata.csv, and "
        "write its licence and citation next to it. A second run verifies the files and does nothing. "
        "--from takes archives already downloaded: a folder holding Zenodo's four, or Kaggle's single zip.",
    )
    p.add_argument("--dest", type=Path, default=DEFAULT_DEST,
                   help="dataset root, raw_root in conf/base/globals.yml (default: %(default)s)")
    p.add_argument("--from", dest="source", type=Path, default=None, metavar="DIR_OR_ZIP",
                   help="use archives already downloaded instead of the network")
    p.add_argument("--cache", type=Path, default=None, metavar="DIR",
                   help="where downloads are kept, so a rerun skips complete archives (default: <DEST>/../.downloads/)")
    p.add_argument("--mirror", default=ZENODO_BASE_URL, metavar="URL",
                   help="base URL holding the four archives (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="hide download progress bars")
    p.set_defaults(func=cmd_fetch_data)
    return p


def cmd_fetch_data(args: argparse.Namespace) -> int:
    """Run :func:`lungseg.fetch.fetch_data` and print what was done, the licence and the citation (``-q``:
    nothing; the licence and citation are in the file next to the data all the same)."""
    say = _silent if getattr(args, "quiet", False) else print  # -q: warnings and errors only
    cache = args.cache if args.cache is not None else default_cache_dir(args.dest)
    if args.source is None:
        say(f"lungseg: downloading the dataset's four archives into {cache} (checksummed; complete archives "
            "are kept, so an interrupted run starts again from the first missing one)")
    result = fetch_data(args.dest, args.source, base_url=args.mirror, cache_dir=cache, progress=not args.no_progress)
    if result.action == "verified":
        say(f"lungseg: {result.dest} already holds the dataset ({result.n_cases} cases, {result.n_files} files "
            f"verified); nothing to do. Licence and citation: {result.license_file}")
        return 0
    say(LICENSE_AND_CITATION)
    say(f"lungseg: {result.n_cases} cases unpacked into {result.dest} (from {result.source}); metadata.csv, "
        f"licence and citation ({result.license_file.name}) are next to the data.")
    if args.source is None:
        say(f"lungseg: the downloaded archives stay in {cache}; delete them to free space.")
    say("lungseg: next: kedro run --pipelines=ingestion (or a variant, e.g. --pipelines=infection_unet)")
    return 0


def _silent(*args, **kwargs) -> None:
    """``print`` under ``-q``."""
