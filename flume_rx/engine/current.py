"""The job a worker runs, seen from inside the worker: ``flume_rx.current_job()``.

A worker reports progress and learns that its job was aborted through it. Knowing the current job costs the
hot path one context-variable set per async job and one thread-local set per sync job; everything else happens
only when a worker asks.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

from flume_rx.engine.source import Delivery
from flume_rx.integrations.otel import in_span
from flume_rx.model.errors import ConfigError, JobAborted
from flume_rx.model.job import Job

logger = logging.getLogger("flume_rx.current")

ASYNC_JOB: contextvars.ContextVar[Delivery | None] = contextvars.ContextVar("flume_rx_job", default=None)
_SYNC_JOB = threading.local()

PROGRESS_KEPT_S = 24 * 3600.0
"""How long a job's last progress report stays readable (``Flume.job``) after it was made."""


class CurrentJob:
    """The job the calling worker runs.

    >>> from flume_rx import current_job, worker
    >>> @worker("ResizeWorker")
    ... def resize(image_id):
    ...     job = current_job()
    ...     job.progress(0.4, "resized")
    ...     job.check_aborted()  # raises JobAborted once Flume.cancel asked to abort this job
    """

    __slots__ = ("_delivery", "_loop")

    def __init__(self, delivery: Delivery, loop: asyncio.AbstractEventLoop) -> None:
        self._delivery = delivery
        self._loop = loop

    @property
    def job(self) -> Job:
        return self._delivery.job

    @property
    def aborted(self) -> bool:
        """Whether ``Flume.cancel`` asked to abort this job; a sync worker checks it where it can stop."""
        return self._delivery.aborted

    def check_aborted(self) -> None:
        """Raise :class:`JobAborted` if this job was asked to stop (the job is then recorded as cancelled)."""
        if self._delivery.aborted:
            raise JobAborted(f"job {self.job.id} was aborted by Flume.cancel")

    def progress(self, fraction: float, message: str = "") -> None:
        """Report how far the job is (0 to 1) and what it is doing, for ``Flume.job``, ``flume-rx job`` and
        the dashboard. It returns at once; the write happens on the worker's event loop.

        Raises:
            ConfigError: ``fraction`` is not a number from 0 to 1.
        """
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 <= fraction <= 1:
            raise ConfigError(f"progress fraction must be a number from 0 to 1 (got {fraction!r})")
        if not math.isfinite(fraction):
            raise ConfigError(f"progress fraction must be finite (got {fraction!r})")
        delivery = self._delivery
        delivery.reported = True
        write = delivery.source.store.set_progress(
            delivery.job.queue,
            delivery.job.id,
            float(fraction),
            str(message)[:500],
            round(PROGRESS_KEPT_S * 1000),
        )
        self._loop.call_soon_threadsafe(_spawn, self._loop, write)


def current_job() -> CurrentJob | None:
    """The job the calling worker runs, or None outside a worker."""
    delivery = ASYNC_JOB.get()
    if delivery is None:
        delivery = getattr(_SYNC_JOB, "delivery", None)
        if delivery is None:
            return None
        return CurrentJob(delivery, _SYNC_JOB.loop)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return CurrentJob(delivery, loop)


async def in_span_async(span: Any, call: Any) -> Any:
    """Run a traced async job's coroutine with its span current."""
    with in_span(span):
        return await call


def run_as_job(
    delivery: Delivery, loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], args: Sequence[Any]
) -> Any:
    """Run a sync worker on a stage thread with ``delivery`` as its current job."""
    local = _SYNC_JOB
    local.delivery, local.loop = delivery, loop
    try:
        if delivery.span is not None:
            with in_span(delivery.span):
                return fn(*args)
        return fn(*args)
    finally:
        local.delivery = None


def abort(deliveries: Sequence[Delivery]) -> None:
    """Abort running jobs: an async job's task is cancelled, a sync job sees ``current_job().aborted``."""
    tasks = None
    for delivery in deliveries:
        delivery.aborted = True
        if delivery.call is None:
            continue
        if tasks is None:
            tasks = asyncio.all_tasks()
        for task in tasks:
            if (
                task.get_coro() is delivery.call
                or getattr(task.get_coro(), "cr_await", None) is delivery.call
            ):
                task.cancel()


def _spawn(loop: asyncio.AbstractEventLoop, write: Any) -> None:
    task = loop.create_task(write)
    task.add_done_callback(_log_failure)


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("a progress report was lost: %s", task.exception())
