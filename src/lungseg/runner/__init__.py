"""Kedro runners of the project: :class:`DaskRunner` (``kedro run --runner=lungseg.runner.DaskRunner``)."""

from lungseg.parallel import SchedulerUnreachableError, open_client
from lungseg.runner.dask_runner import DaskRunner

__all__ = ["DaskRunner", "SchedulerUnreachableError", "open_client"]
