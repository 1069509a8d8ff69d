"""flume_rx: background job pipelines for Python on Redis, built as reactive streams.

>>> from flume_rx import Flume, worker, Job
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flume_rx.model.errors import (
    BatchFailed,
    ConfigError,
    DecodeError,
    EncodeError,
    FlumeError,
    JobAborted,
    JobCancelled,
    JobFailed,
    JobTimeout,
    ResultTimeout,
    ResultUnavailable,
    StoreError,
    Throttled,
    UnknownWorker,
)
from flume_rx.model.job import Job, JobError
from flume_rx.model.registry import WorkerHandle, worker

if TYPE_CHECKING:
    from flume_rx.engine.current import current_job
    from flume_rx.engine.keyed import from_args
    from flume_rx.operators import throttle_by_key
    from flume_rx.surfaces.client import Flume

__version__ = "0.1.0"

__all__ = [
    "BatchFailed",
    "ConfigError",
    "DecodeError",
    "EncodeError",
    "Flume",
    "FlumeError",
    "Job",
    "JobAborted",
    "JobCancelled",
    "JobError",
    "JobFailed",
    "JobTimeout",
    "ResultTimeout",
    "ResultUnavailable",
    "StoreError",
    "Throttled",
    "UnknownWorker",
    "WorkerHandle",
    "current_job",
    "from_args",
    "throttle_by_key",
    "worker",
]


def __getattr__(name: str) -> Any:
    # Flume pulls in redis and reactivex; importing it lazily keeps `import flume_rx` cheap for workers'
    # modules that only need @worker.
    if name == "Flume":
        from flume_rx.surfaces.client import Flume

        return Flume
    if name == "current_job":
        from flume_rx.engine.current import current_job

        return current_job
    if name == "throttle_by_key":
        from flume_rx.operators import throttle_by_key

        return throttle_by_key
    if name == "from_args":
        from flume_rx.engine.keyed import from_args

        return from_args
    raise AttributeError(f"module 'flume_rx' has no attribute {name!r}")
