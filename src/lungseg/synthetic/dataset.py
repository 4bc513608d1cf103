"""The synthetic dataset on disk: ``metadata.csv`` plus four NIfTI folders, in the Kaggle layout.

Two ways to write it, both streaming one case at a time:

- :func:`write_dataset` writes everything with ``nibabel`` directly (tests, scripts);
- :class:`LazyCaseStore` hands Kedro's ``PartitionedDataset`` one lazy loader per file.
  ``PartitionedDataset.save`` calls the loaders in *sorted key order*, i.e. every CT first, then
  every infection mask, and so on. The store therefore generates a case once, when its first file is
  asked for, keeps only that case in memory, and keeps its labels zlib-compressed (a few MB even for
  the ``full`` profile) until its three masks have been written.
"""

from __future__ import annotations

import functools
import logging
import time
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lungseg.datasets._atomic import atomic_path
from lungseg.layout import KAGGLE_PREFIX, METADATA_COLUMNS, NIFTI_SUFFIX
from lungseg.synthetic.nifti import COMPONENTS, component_image, mask_image, relative_stem
from lungseg.synthetic.phantom import SyntheticCase, case_id, generate_case
from lungseg.synthetic.profiles import resolve_profile

logger = logging.getLogger(__name__)

Loader = Callable[[], nib.Nifti1Image]


def metadata_frame(n_cases: int) -> pd.DataFrame:
    """``metadata.csv`` of ``n_cases`` cases, with paths in Kaggle's form
    (``../input/covid19-ct-scans/ct_scans/synth_000_org.nii.gz``...)."""
    rows = []
    for i in range(n_cases):
        cid = case_id(i)
        rows.append({
            column: f"{KAGGLE_PREFIX}/{relative_stem(component, cid)}{NIFTI_SUFFIX}"
            for column, component in zip(METADATA_COLUMNS, COMPONENTS, strict=True)
        })
    return pd.DataFrame(rows, columns=list(METADATA_COLUMNS))


def write_case(case: SyntheticCase, root: Path) -> dict[str, Path]:
    """Write the four files of one case under ``root`` (each atomically); returns their paths."""
    paths = {}
    for component in COMPONENTS:
        target = Path(root) / f"{relative_stem(component, case.case_id)}{NIFTI_SUFFIX}"
        with atomic_path(target, suffix=NIFTI_SUFFIX) as tmp:
            nib.save(component_image(case, component), str(tmp))
        paths[component] = target
    return paths


def write_dataset(root: str | Path, profile: str | Mapping[str, Any] = "tiny", seed: int = 0,
                  n_cases: int | None = None) -> pd.DataFrame:
    """Generate a synthetic dataset and write it under ``root``; returns its metadata.

    One case is generated, written and released at a time. Every file, ``metadata.csv`` included,
    is written to a temporary name and renamed, so an interrupted run leaves no partial file.

    Args:
        root: dataset root (created if missing).
        profile: ``"tiny"``, ``"demo"``, ``"full"`` or a profile dict.
        seed: non-negative seed; case ``i`` depends only on ``(seed, i)`` and the profile.
        n_cases: number of cases (default: the profile's ``n_cases``).
    """
    root = Path(root)
    prof = resolve_profile(profile)
    n = prof["n_cases"] if n_cases is None else int(n_cases)
    start = time.perf_counter()
    for i in tqdm(range(n), desc="synthetic cases", unit="case"):
        case = generate_case(i, prof, seed)
        write_case(case, root)
        del case
    metadata = metadata_frame(n)
    with atomic_path(root / "metadata.csv", suffix=".csv") as tmp:
        metadata.to_csv(tmp, index=False)
    logger.info("Wrote %d synthetic case(s) to %s in %.1f s", n, root, time.perf_counter() - start)
    return metadata


class LazyCaseStore:
    """Lazy image loaders for Kedro that generate each case once and hold one case in memory.

    ``loaders()`` returns ``{relative path without .nii.gz: loader}`` for every file of every case,
    ordered case by case. Whatever order the loaders are called in, each returns the right image;
    the sorted order used by ``PartitionedDataset`` (all CTs, then each mask folder) generates every
    case exactly once.
    """

    def __init__(self, profile: str | Mapping[str, Any], seed: int, n_cases: int | None = None) -> None:
        self.profile = resolve_profile(profile)
        self.seed = int(seed)
        self.n_cases = self.profile["n_cases"] if n_cases is None else int(n_cases)
        self._current: SyntheticCase | None = None
        self._packed: dict[int, tuple[tuple[int, ...], str, np.ndarray, bytes]] = {}
        self._served: dict[int, set[str]] = {}
        self.generated = 0  # how many cases were generated (a case generated twice counts twice)

    def loaders(self) -> dict[str, Loader]:
        """One loader per file, keyed by the path relative to the dataset root, without suffix."""
        out: dict[str, Loader] = {}
        for i in range(self.n_cases):
            for component in COMPONENTS:
                out[relative_stem(component, case_id(i))] = functools.partial(self.image, i, component)
        return out

    def _generate(self, index: int) -> SyntheticCase:
        self._current = None  # release the previous case before building the next
        start = time.perf_counter()
        case = generate_case(index, self.profile, self.seed)
        self.generated += 1
        packed = (case.lung | (case.infection << 2)).astype(np.uint8)
        self._packed[index] = (case.lung.shape, case.orientation, case.affine, zlib.compress(packed.tobytes(), 1))
        del packed
        self._current = case
        logger.info("Generated synthetic case %s %s (%s, stored %s) in %.1f s", case.case_id, case.ct.shape,
                    case.source_kind, case.orientation, time.perf_counter() - start)
        return case

    def _labels(self, index: int) -> tuple[np.ndarray, np.ndarray, str, np.ndarray]:
        if self._current is not None and self._current.index == index:
            c = self._current
            return c.lung, c.infection, c.orientation, c.affine
        if index not in self._packed:
            self._generate(index)
            return self._labels(index)
        shape, orientation, affine, blob = self._packed[index]
        packed = np.frombuffer(zlib.decompress(blob), dtype=np.uint8).reshape(shape)
        return packed & 3, packed >> 2, orientation, affine

    def image(self, index: int, component: str) -> nib.Nifti1Image:
        """The image of one file of case ``index`` (``component`` is a folder name)."""
        if component == "ct_scans":
            current = self._current
            case = current if current is not None and current.index == index else self._generate(index)
            img = component_image(case, component)
        else:
            lung, infection, orientation, affine = self._labels(index)
            img = mask_image(component, lung, infection, orientation, affine)
        served = self._served.setdefault(index, set())
        served.add(component)
        if "ct_scans" in served and self._current is not None and self._current.index == index:
            self._current = None  # the CT is out; masks come from the compressed labels
        if served >= set(COMPONENTS):
            self._packed.pop(index, None)
            self._served.pop(index, None)
        return img
