"""The processor stage: runs each job's registered worker, one job or one batch at a time."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import Any

import reactivex
from reactivex import Observable, abc

from flume_rx import operators as fo
from flume_rx.engine.current import ASYNC_JOB, in_span_async, run_as_job
from flume_rx.engine.source import Delivery, NotStarted, StartedLate
from flume_rx.engine.threads import Handed, StageThreads
from flume_rx.integrations.otel import is_traced, start_run_span
from flume_rx.model import registry
from flume_rx.model.errors import (
    BatchFailed,
    JobAborted,
    Throttled,
    UnknownWorker,
)
from flume_rx.model.job import Job
from flume_rx.model.registry import WorkerSpec, get_worker
from flume_rx.model.telemetry import Telemetry

logger = logging.getLogger("flume_rx.pipeline")


def run_workers(
    *,
    stages: int,
    executor: Executor,
    max_demand: int | None = None,
    min_demand: int | None = None,
    timeout_s: float | None = None,
    scheduler: abc.SchedulerBase | None = None,
) -> Callable[[Observable[Any]], Observable[fo.Outcome[Any, Any]]]:
    """The processor stage: runs each job's registered worker with at most ``stages`` at once.

    It holds up to ``max_demand`` items and asks for more once it holds ``min_demand`` (see
    :func:`flume_rx.operators.process`), so fetches come in batches; behind a throttle it holds only what
    its stages can start. Items are :class:`Delivery` objects, or lists of them after a batcher. Async
    workers run on the loop, sync workers in ``executor``'s threads (with :class:`StageThreads`, their
    outcomes come back to the loop in batches rather than with one wake-up of the loop per job).

    With :class:`StageThreads` of at most ``stages`` threads, a sync job is handed to the threads before one
    is free for it (see :func:`handed_ahead` for how many, and only while no async job or batch runs), so a
    thread that finishes takes its next job at once. The job begins when a thread takes it: only then does it
    count as started (its clock and timeout, ``job.started``, the release of a ``unique_until="start"`` key),
    and a stop that comes first hands it back unstarted. Which jobs go ahead is looked at per job only when a
    sync worker was registered by the time the processor is built (as the runtime does, once it has imported
    the workers): an async job costs that look nothing otherwise. A sync worker registered later still runs,
    without being handed ahead.
    """
    queues_ahead = registry.sync_workers and isinstance(executor, StageThreads) and executor.size <= stages
    ahead = handed_ahead(stages, max_demand) if queues_ahead else 0
    return fo.process(
        functools.partial(_call, executor=executor),
        stages,
        max_demand=max_demand,
        min_demand=min_demand,
        timeout_s=timeout_s,
        scheduler=scheduler,
        ahead=ahead,
        queues=_queues if ahead else None,
        fn_all=functools.partial(_call_all, executor=executor)
        if isinstance(executor, StageThreads)
        else None,
    )


def handed_ahead(stages: int, max_demand: int | None) -> int:
    """How many sync jobs wait for a stage thread beyond the ``stages`` running: all the processor holds.

    The loop hands the threads their jobs and collects their outcomes, and it shares the interpreter lock
    with them, so it comes late whenever the threads (or a fetch, or a settle) keep the lock: with ``stages``
    ahead (the earlier rule) the threads ran out of handed jobs about once every three jobs of one redis-py
    ``INCR`` while the loop waited, with everything held ahead once every seven or eight, with fewer context
    switches and no more CPU per job (docs/performance.md). Nothing starts earlier for it: a job begins when a
    thread takes it, a stop hands back those not taken, and never more than ``stages`` run.
    """
    held = stages if max_demand is None else max_demand
    return max(stages, held - stages)


def _queues(item: Delivery | list[Delivery]) -> bool:
    """Whether this item's call waits for a stage thread (a plain sync job); noted on the delivery for _call."""
    if isinstance(item, list):
        return False
    job = item.job
    try:
        spec = get_worker(job.worker)
    except UnknownWorker:
        item.queued = False
        return False
    # A traced job's span starts as it is handed over, so it is not handed over early.
    item.queued = not spec.is_async and (job.meta is None or not is_traced(job))
    return item.queued


def _call(
    item: Delivery | list[Delivery], *, executor: Executor
) -> Observable[Any] | asyncio.Future[Any] | Coroutine[Any, Any, Any] | fo.Queued[Any]:
    if isinstance(item, list):
        return _call_many(item, executor)
    # The per-job hot path: the worker's coroutine, which process runs as a task, or an executor future.
    refused = _refused(item)
    if refused is not None:
        return refused
    if item.queued and isinstance(executor, StageThreads):
        return _hand_to_thread(item, executor)
    if item.lease is not None:
        spec = get_worker(item.job.worker)  # UnknownWorker becomes this job's outcome
        if spec.is_async:
            # Its first line runs at the task's first step, a turn of the loop or more from now: look there.
            begin = _begin_unless_late(item, spec)
            item.call = begin  # what an abort finds its task by
            return begin
    spec, args = _start(item)
    if spec.is_async:
        coro: Coroutine[Any, Any, Any] = spec.fn(*args)
        # The current job, for current_job() and for an abort to find its task.
        item.call = coro
        ASYNC_JOB.set(item)
        return coro if item.span is None else in_span_async(item.span, coro)
    loop = asyncio.get_running_loop()
    if isinstance(executor, StageThreads):
        return executor.run_soon(run_as_job, item, loop, spec.fn, args)
    return loop.run_in_executor(executor, functools.partial(run_as_job, item, loop, spec.fn, args))


def _refused(item: Delivery) -> Observable[Any] | None:
    """The outcome of a job that must not begin (its source is stopping, or it was aborted); None when it
    may. The one place both ways of starting a job look."""
    if item.source.stopping:
        return reactivex.throw(NotStarted())
    if item.aborted:
        return reactivex.throw(_aborted_before_it_began(item))
    return None


def _call_all(items: list[Delivery | list[Delivery]], *, executor: StageThreads) -> list[Any]:
    """:func:`_call` for the items a round of the processor starts at once: the sync jobs among them go to
    the stage threads in one hand-over."""
    loop = asyncio.get_running_loop()
    calls: list[Any] = []
    handed: list[Handed] = []
    for item in items:
        try:
            if isinstance(item, list) or not item.queued:
                calls.append(_call(item, executor=executor))
                continue
            refused = _refused(item)
            if refused is not None:
                calls.append(refused)
                continue
            call = _to_hand(item, loop)
        except Exception as error:  # this item's outcome, not the round's
            calls.append(reactivex.throw(error))
            continue
        handed.append(call)
        calls.append(call[0])
    if handed:
        executor.hand_all(handed)
    return calls


def _start(item: Delivery, spec: WorkerSpec | None = None) -> tuple[WorkerSpec, tuple[Any, ...] | list[Any]]:
    """Begin ``item`` on the loop (counted started, ``job.started``, its span if traced); returns its worker's
    spec and the args to call it with. The caller builds the call: where the current job is set differs
    between :func:`_call` (the caller's context, before the task) and :func:`_begin_unless_late` (the task's).

    ``spec`` is looked up here when the caller has none, only once the job counts as started, so an unknown
    worker fails a started job (UnknownWorker becomes its outcome).
    """
    source = item.source
    source.started(item)
    job = item.job
    if source.telemetry.active:
        _emit_started(source.telemetry, job, time.time())
    if spec is None:
        spec = get_worker(job.worker)
    args = ([list(job.args)],) if spec.batch else job.args
    if job.meta is not None and is_traced(job):
        item.span = start_run_span(job)
    return spec, args


def _hand_to_thread(item: Delivery, executor: StageThreads) -> fo.Queued[Any]:
    """Hand a sync job to the stage threads; it begins when one takes it (see :func:`_take`)."""
    call = _to_hand(item, asyncio.get_running_loop())
    executor.hand_all([call])
    return call[0]


def _to_hand(item: Delivery, loop: asyncio.AbstractEventLoop) -> Handed:
    """The stage threads' call for a sync job (see :meth:`StageThreads.hand_all`)."""
    spec = get_worker(item.job.worker)
    job = item.job
    args = ([list(job.args)],) if spec.batch else job.args
    # Running from now on for an abort to find it (a job aborted before it begins sees it at its first look);
    # hand_back_unstarted still hands it back until a thread has taken it.
    item.source.running.add(item)
    queued: fo.Queued[Any] = fo.Queued()
    return queued, run_as_job, (item, loop, spec.fn, args), functools.partial(_take, item, queued)


def _take(item: Delivery, queued: fo.Queued[Any]) -> tuple[Callable[[list[_Begun]], None], _Begun]:
    """In the stage thread taking ``item``: it begins now, unless its source is stopping (then NotStarted) or
    its grant's hold is over (then StartedLate: a start now would fall outside what the window counted).
    Returns the start's note, which the loop takes with the others of its batch (:func:`_begun_all`)."""
    lease = item.lease
    if lease is not None and not lease.begin():
        raise StartedLate()
    if item.aborted:
        raise _aborted_before_it_began(item)
    at = time.time()
    if not item.source.take(item):
        raise NotStarted()
    return _begun_all, (item, queued, at)


_Begun = tuple[Delivery, "fo.Queued[Any]", float]
"""A sync job a thread took: the job, its queued call, and when it began."""


def _aborted_before_it_began(item: Delivery) -> JobAborted:
    """The outcome of a job ``Flume.cancel`` aborted before its worker began it: it never runs, and is
    recorded as cancelled as an abort while it ran is."""
    return JobAborted(f"job {item.job.id} was aborted by Flume.cancel before it began")


async def _begin_unless_late(item: Delivery, spec: WorkerSpec) -> Any:
    """An async job a throttle released, begun at its task's first step: unless its grant's hold is over by
    then (StartedLate) or its source is stopping (NotStarted); neither started it, so it goes back."""
    lease = item.lease
    if lease is not None and not lease.begin():
        raise StartedLate()
    source = item.source
    if source.stopping:
        raise NotStarted()
    _, args = _start(item, spec)
    ASYNC_JOB.set(item)  # in this task's context, where the worker runs
    coro: Coroutine[Any, Any, Any] = spec.fn(*args)
    return await (coro if item.span is None else in_span_async(item.span, coro))


def lease_to(item: Delivery | list[Delivery], lease: fo.Lease) -> None:
    """The throttle's ``on_release``: the job must begin within its grant's hold (a batch begins on the loop at
    once, as it is released, so it is not looked at)."""
    if not isinstance(item, list):
        item.lease = lease


def _begun_all(begun: list[_Begun]) -> None:
    """On the loop, once threads took these jobs: what the start of a job does, for a batch of starts."""
    begins: list[tuple[fo.Queued[Any], float | None]] = []
    for item, queued, at in begun:
        begins.append((queued, at))  # it began, whatever its bookkeeping below does
        try:
            source = item.source
            source.started(item)
            if source.telemetry.active:
                _emit_started(source.telemetry, item.job, at)
        except Exception:  # one job's bookkeeping failing must not cost the others of the batch their clocks
            logger.exception("noting the start of job %s failed", item.job.id)
    fo.begin_queued(begins)


def _call_many(deliveries: list[Delivery], executor: Executor) -> Observable[Any] | asyncio.Future[Any]:
    source = deliveries[0].source
    if source.stopping:
        return reactivex.throw(NotStarted())
    now = time.time()
    for delivery in deliveries:
        delivery.source.started(delivery)
        if source.telemetry.active:
            _emit_started(source.telemetry, delivery.job, now)
    return asyncio.ensure_future(_call_batch(deliveries, executor))


def _emit_started(telemetry: Telemetry, job: Job, now: float) -> None:
    wait_ms = (now - job.enqueued_at) * 1000 if job.enqueued_at else None
    telemetry.emit_job("job.started", job, attempt=job.attempt, wait_ms=wait_ms)


async def _invoke(fn: Callable[..., Any], is_async: bool, executor: Executor, *args: Any) -> Any:
    if is_async:
        return await fn(*args)
    if isinstance(executor, StageThreads):
        return await executor.run_soon(fn, *args)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, functools.partial(fn, *args))


async def _call_batch(deliveries: list[Delivery], executor: Executor) -> dict[int, BaseException]:
    """Run a batch; returns the failures by index (an empty dict when all succeeded)."""
    failures: dict[int, BaseException] = {}
    groups: dict[str, list[int]] = {}
    for index, delivery in enumerate(deliveries):
        groups.setdefault(delivery.job.worker, []).append(index)
    for name, indices in groups.items():
        try:
            spec = get_worker(name)
        except UnknownWorker as exc:
            failures.update(dict.fromkeys(indices, exc))
            continue
        if not spec.batch:
            results = await asyncio.gather(
                *(_invoke(spec.fn, spec.is_async, executor, *deliveries[i].job.args) for i in indices),
                return_exceptions=True,
            )
            failures.update(
                {i: r for i, r in zip(indices, results, strict=True) if isinstance(r, BaseException)}
            )
            continue
        try:
            await _invoke(spec.fn, spec.is_async, executor, [list(deliveries[i].job.args) for i in indices])
        except BatchFailed as exc:
            for local in exc.failed:
                if 0 <= local < len(indices):
                    message = exc.errors.get(local, str(exc))
                    if local in exc.throttled:
                        failures[indices[local]] = Throttled(message)
                        continue
                    permanent = [local] if local in exc.permanent else []
                    failures[indices[local]] = BatchFailed([local], message, permanent=permanent)
        except Exception as exc:
            failures.update(dict.fromkeys(indices, exc))
    return failures
