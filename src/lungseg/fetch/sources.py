"""Where the dataset comes from: Zenodo's four archives (checksummed), pooch downloads, ``--from``.

The COVID-19 CT Lung and Infection Segmentation Dataset is Zenodo record 3757476. Its four archives
and their SHA-256 values are the ones published with the record (and used by torch-em's downloader).
Kaggle's "covid19-ct-scans" is one zip with a ``metadata.csv``; it has no published checksum, so its
integrity is checked through the zip's own CRCs and the files its ``metadata.csv`` lists.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lungseg.errors import DataValidationError, InputError

logger = logging.getLogger(__name__)

ZENODO_RECORD = "https://zenodo.org/records/3757476"
ZENODO_BASE_URL = f"{ZENODO_RECORD}/files/"
DOI = "10.5281/zenodo.3757476"


@dataclass(frozen=True)
class Archive:
    """One of Zenodo's archives: its file name, the metadata.csv column and folder it fills."""

    name: str
    column: str
    folder: str


ZENODO_ARCHIVES: tuple[Archive, ...] = (
    Archive("COVID-19-CT-Seg_20cases.zip", "ct_scan", "ct_scans"),
    Archive("Lung_Mask.zip", "lung_mask", "lung_mask"),
    Archive("Infection_Mask.zip", "infection_mask", "infection_mask"),
    Archive("Lung_and_Infection_Mask.zip", "lung_and_infection_mask", "lung_and_infection_mask"),
)
#: SHA-256 of each archive, as published for the record. Tests pass their own (``hashes=``).
ZENODO_SHA256: dict[str, str] = {
    "COVID-19-CT-Seg_20cases.zip": "a5060480eff9315b069b086312dac4872777901fb80d268a5a83edd9f4e7b440",
    "Lung_Mask.zip": "f060b0d0299939a6d95ddefdbfa281de1a779c4d230a5adbd32414711d6d8187",
    "Infection_Mask.zip": "87901c73fdd2230260e61d2dbc57bf56026efc28264006b8ea2bf411453c1694",
    "Lung_and_Infection_Mask.zip": "34f5a573cb8fb53cb15abe81868395d9addf436854826a6fd6e70c2b294f19c3",
}

LICENSE_FILE = "LICENSE_AND_CITATION.md"
LICENSE_AND_CITATION = f"""\
# COVID-19 CT Lung and Infection Segmentation Dataset

Source: Zenodo record {ZENODO_RECORD} (DOI {DOI}), version 1.0.
20 chest CT volumes (10 from the Coronacases Initiative, 10 from Radiopaedia) with left lung, right
lung and infection masks, annotated by two radiologists and verified by a third.

## Licence

Creative Commons Attribution 4.0 International (CC BY 4.0), as stated on the Zenodo record:
https://creativecommons.org/licenses/by/4.0/ . Give credit by citing the dataset and the paper below.
The CT scans come from coronacases.org and radiopaedia.org; check their terms before redistributing.

## Citation

Ma Jun, Ge Cheng, Wang Yixin, An Xingle, Gao Jiantao, Yu Ziqi, Zhang Minqing, Liu Xin, Deng Xueyuan,
Cao Shucheng, Wei Hao, Mei Sen, Yang Xiaoyu, Nie Ziwei, Li Chen, Tian Lu, Zhu Yuntao, Zhu Qiongjie,
Dong Guoqiang, He Jian (2020). COVID-19 CT Lung and Infection Segmentation Dataset (Version 1.0)
[Data set]. Zenodo. https://doi.org/{DOI}

Ma J, Wang Y, An X, Ge C, Yu Z, Chen J, Zhu Q, Dong G, He J, He Z, Cao T, Zhu Y, Nie Z, Yang X (2021).
Toward data-efficient learning: A benchmark for COVID-19 CT lung and infection segmentation.
Medical Physics 48(3):1197-1210. https://doi.org/10.1002/mp.14676
"""


def archive_hashes(hashes: Mapping[str, str] | None = None) -> dict[str, str]:
    """The expected SHA-256 of each archive: ``hashes`` when given, else the published ones."""
    table = dict(ZENODO_SHA256 if hashes is None else hashes)
    missing = [a.name for a in ZENODO_ARCHIVES if a.name not in table]
    if missing:
        raise InputError(f"no SHA-256 given for archive(s) {missing}")
    return {name: str(value).split(":")[-1].lower() for name, value in table.items()}


def sha256_of(path: str | Path) -> str:
    import pooch

    return pooch.file_hash(str(path), alg="sha256")


def download_archives(cache_dir: Path, *, base_url: str = ZENODO_BASE_URL, hashes: Mapping[str, str] | None = None,
                      retries: int = 2, progress: bool = True, timeout: float = 60.0) -> dict[str, Path]:
    """Download Zenodo's four archives into ``cache_dir`` with pooch; returns ``{archive: path}``.

    pooch streams each file to a temporary name, checks its SHA-256 and only then moves it into
    place, retrying ``retries`` times; an archive already in the cache with the right hash is not
    downloaded again, so a run that stopped halfway starts again from the first missing archive
    (pooch does not resume a partly downloaded file; it downloads that one archive again).
    """
    import pooch
    import requests

    expected = archive_hashes(hashes)
    fetcher = pooch.create(
        path=cache_dir,
        base_url=base_url if base_url.endswith("/") else base_url + "/",
        registry={a.name: f"sha256:{expected[a.name]}" for a in ZENODO_ARCHIVES},
        retry_if_failed=retries,
    )
    paths: dict[str, Path] = {}
    for archive in ZENODO_ARCHIVES:
        url = fetcher.get_url(archive.name)
        downloader = pooch.HTTPDownloader(progressbar=progress, chunk_size=1 << 16, timeout=timeout)
        try:
            paths[archive.name] = Path(fetcher.fetch(archive.name, downloader=downloader))
        except ValueError as exc:  # pooch: the hash of the download does not match
            raise DataValidationError(
                f"the SHA-256 of the file downloaded from {url} is not the expected {expected[archive.name]} "
                f"(a corrupted or changed download; it was deleted, nothing was unpacked). Details: {exc}",
                file=archive.name,
            ) from exc
        except requests.RequestException as exc:
            raise DataValidationError(
                f"the download from {url} failed ({type(exc).__name__}: {exc}). Run the command again: the "
                f"archives already complete in {cache_dir} are kept and not downloaded twice. Without internet, "
                "download the four archives elsewhere and use --from",
                file=archive.name,
            ) from exc
    return paths


def locate_archives(source: Path, hashes: Mapping[str, str] | None = None) -> tuple[str, dict[str, Path]]:
    """``--from``: ``("zenodo", {archive: path})`` for a folder holding Zenodo's four archives (their
    SHA-256 checked), or ``("kaggle", {"kaggle": path})`` for Kaggle's single zip (or a folder that
    holds just that zip)."""
    if not source.exists():
        raise InputError(f"--from {str(source)!r}: no such file or folder")
    names = {a.name for a in ZENODO_ARCHIVES}
    if source.is_file():
        if source.name in names:
            raise InputError(f"--from {str(source)!r} is one of Zenodo's four archives; give the folder that "
                             f"holds all four ({', '.join(sorted(names))})")
        return "kaggle", {"kaggle": source}
    found = {n: source / n for n in names if (source / n).is_file()}
    others = sorted(p for p in source.glob("*.zip") if p.name not in names)
    if not found and len(others) == 1:
        return "kaggle", {"kaggle": others[0]}
    if len(found) < len(names):
        missing = sorted(names - set(found))
        raise InputError(f"--from {str(source)!r}: Zenodo archive(s) {missing} not found there; give the folder "
                         "holding Zenodo's four archives, or Kaggle's single zip")
    expected = archive_hashes(hashes)
    for name, path in found.items():
        logger.info("checking the SHA-256 of %s", path)
        actual = sha256_of(path)
        if actual != expected[name]:
            raise DataValidationError(
                f"SHA-256 {actual} is not the published {expected[name]}: the archive is truncated, corrupted "
                "or not Zenodo's; download it again", file=str(path))
    return "zenodo", found
