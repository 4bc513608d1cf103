"""``CasePartitionedDataset``: kedro-datasets' ``PartitionedDataset``, whose lazy partitions are computed and
written one task per case on a Dask cluster when a node runs there (:class:`lungseg.runner.DaskRunner`).

A node that returns ``{case: loader}`` (``ingestion.canonical_cases``, ``preprocessing.enhanced_cases``)
leaves the per-case work to the save: ``PartitionedDataset`` calls each loader and saves its partition
one after the other, in this process. Here each ``loader()`` + ``save`` is one task of
:func:`lungseg.parallel.case_map` (the loader, the partition's dataset and nothing else travel to the
worker, so both must pickle), and every worker writes its own cases: the same files as the serial
save, each written atomically by its dataset. Outside a Dask task it is ``PartitionedDataset`` itself.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

from kedro_datasets.partitions import PartitionedDataset

from lungseg.parallel import case_map


def _save_partition(job: tuple[Any, Any]) -> None:
    dataset, data = job
    dataset.save(data() if callable(data) else data)


class CasePartitionedDataset(PartitionedDataset):
    """A ``PartitionedDataset`` (same arguments) whose partitions are saved in parallel on a Dask cluster."""

    def save(self, data: dict[str, Any]) -> None:
        if self._overwrite and self._filesystem.exists(self._normalized_path):
            self._filesystem.rm(self._normalized_path, recursive=True)
        jobs = []
        for partition_id, partition_data in sorted(data.items()):
            kwargs = deepcopy(self._dataset_config)
            kwargs[self._filepath_arg] = self._join_protocol(self._partition_to_path(partition_id))
            lazy = callable(partition_data) and self._save_lazily
            jobs.append((self._dataset_type(**kwargs), partition_data if lazy else (lambda d=partition_data: d)))
        # each task returns None, so every case may be in flight at once: no worker waits for a long
        # case at the head of a window before it gets the next one
        for _ in case_map(_save_partition, jobs, ahead=len(jobs)):
            pass
        self._invalidate_caches()
