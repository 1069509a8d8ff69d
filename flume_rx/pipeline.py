"""Pipeline assembly: the reactivex graph of one job pipeline, from the Redis source to the settle sink.

    request_n source ─▶ [user operators] ─▶ [buffer_with_time_or_count] ─▶ [throttle] ─▶ process ─▶ settle
      (fetch into the                                                     (tokens right             (ack / retry /
       in-flight list)                                                     before start)             dead, batched)

Demand flows right to left: ``process`` requests one item per free stage, the batcher asks for what fills the
batches it was asked for, and the source fetches only that, never more than ``max_demand`` unsettled jobs.
A per-key limit (``key_from``) takes each job's tokens before the batcher instead, as a batch can mix keys.
The same parts serve config pipelines (:func:`assemble`) and pipelines written in code
(``Flume.source(...).pipe(...)``, then ``Flume.run``).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import random
import time
import traceback
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from typing import Any

import reactivex
from reactivex import Observable, abc
from reactivex import operators as ops
from reactivex.scheduler.eventloop import AsyncIOScheduler

from flume_rx import codec
from flume_rx import operators as fo
from flume_rx.config import PipelineConfig, RetryConfig, pacing_burst
from flume_rx.errors import (
    BadArguments,
    BatchFailed,
    DecodeError,
    JobTimeout,
    StoreError,
    Throttled,
    UnknownWorker,
)
from flume_rx.job import Job, JobError
from flume_rx.registry import get_worker
from flume_rx.store import Outage, RedisStore, Settlement
from flume_rx.telemetry import Telemetry

logger = logging.getLogger("flume_rx.pipeline")

_TRACEBACK_TAIL_CHARS = 2000


class NotStarted(Exception):
    """The pipeline was stopping when this job's turn came; it was handed back to the queue unstarted."""


@dataclass(eq=False, slots=True)
class Delivery:
    """A fetched job on its way through a pipeline; it knows the source it must be settled with."""

    job: Job
    payload: bytes
    source: JobSource


@dataclass(eq=False)
class JobSource:
    """The Redis side of one pipeline in one process: fetching, what is outstanding, and stopping."""

    store: RedisStore
    queue: str
    consumer: str
    max_demand: int
    telemetry: Telemetry
    retry: RetryConfig = field(default_factory=RetryConfig)
    window: fo.TokenWindow | None = None
    block_s: float = 1.0
    max_payload_bytes: int = codec.DEFAULT_MAX_PAYLOAD_BYTES
    stopping: bool = False
    outstanding: set[Delivery] = field(default_factory=set)
    running: set[Delivery] = field(default_factory=set)
    flowable: fo.PullSource[Delivery] = field(init=False)
    exhausted: bool = False
    burst: bool = False

    def __post_init__(self) -> None:
        self._outage = Outage(f"fetch from {self.queue!r}")
        self._unique_releases: list[Settlement] = []
        self._releasing: asyncio.Task[None] | None = None
        self.flowable = fo.request_n(self._fetch, self.max_demand, on_pressure=self._on_pressure)

    def _fetch(self, n: int) -> Observable[Sequence[Delivery]]:
        if self.stopping:
            return reactivex.empty()
        # An empty answer (burst mode on an empty queue, or stopping) completes without emitting: exhausted.
        fetched: Observable[list[Delivery]] = reactivex.from_future(
            asyncio.ensure_future(self._fetch_async(n))
        )
        return fetched.pipe(ops.filter(_non_empty))

    async def _fetch_async(self, n: int) -> list[Delivery]:
        reply_lost = False
        while not self.stopping:
            started = time.monotonic()
            try:
                if reply_lost:
                    await self._return_unseen()
                    reply_lost = False
                payloads = await self.store.fetch(
                    self.queue, self.consumer, n, 0.0 if self.burst else self.block_s
                )
            except StoreError as exc:
                # The fetch may have run in Redis although its reply never came (a timeout, a dropped link).
                reply_lost = True
                await asyncio.sleep(self._outage.failed(exc))
                continue
            self._outage.ok()
            if not payloads:
                if self.burst:
                    return []
                if time.monotonic() - started < self.block_s / 2:
                    # A paused queue answers at once; do not spin.
                    await asyncio.sleep(min(0.2, self.block_s))
                continue
            deliveries = await self._decode(payloads)
            if deliveries:
                return deliveries
        return []

    @property
    def fetch_queues(self) -> tuple[str, ...]:
        """Every queue this source fetches from."""
        return (self.queue,)

    async def _return_unseen(self) -> None:
        """Give back jobs a fetch with a lost reply moved into our in-flight lists.

        No pipeline holds them, and this consumer is alive, so orphan recovery would never return them. (A
        process runs one pipeline per queue, so every other job in these lists is one we hold.)
        """
        known = {d.payload for d in self.outstanding}
        for queue in self.fetch_queues:
            unseen = [p for p in await self.store.inflight(queue, self.consumer) if p not in known]
            if unseen:
                returned = await self.store.requeue_all(queue, self.consumer, unseen)
                logger.warning("returned %d job(s) of a fetch whose reply was lost to %r", returned, queue)

    async def _decode(self, payloads: Sequence[bytes]) -> list[Delivery]:
        deliveries: list[Delivery] = []
        bad: list[Settlement] = []
        for payload in payloads:
            try:
                job = codec.decode(payload, self.max_payload_bytes)
            except DecodeError as exc:
                bad.append(Settlement(payload, "dead", self._undecodable_record(payload, exc)))
                continue
            delivery = Delivery(job, payload, self)
            deliveries.append(delivery)
        if bad:
            await self._settle_with_retries(bad)
            for settlement in bad:
                self.telemetry.emit(
                    "job.dead",
                    queue=self.queue,
                    worker="",
                    job_id="",
                    attempt=0,
                    reason=_reason_of(settlement),
                )
            logger.error("%d undecodable payload(s) from %r went to the dead letters", len(bad), self.queue)
        self.outstanding.update(deliveries)
        if deliveries:
            self.telemetry.emit("job.fetched", queue=self.queue, count=len(deliveries))
        return deliveries

    def _undecodable_record(self, payload: bytes, error: DecodeError) -> bytes:
        digest = hashlib.sha1(payload).hexdigest()[:16]
        record = Job(
            id=f"undecodable-{digest}",
            queue=self.queue,
            worker="",
            args=[payload[: max(0, self.max_payload_bytes - 4096)]],
            error=JobError("DecodeError", str(error)),
            enqueued_at=time.time(),
        )
        return codec.encode(record, self.max_payload_bytes)

    async def _settle_with_retries(self, settlements: Sequence[Settlement]) -> None:
        await self._settle_queue(self.queue, settlements)

    async def _settle_queue(self, queue: str, settlements: Sequence[Settlement]) -> None:
        """Settle on ``queue``, retrying with backoff through an outage (settling is idempotent)."""
        outage = Outage(f"settle on {queue!r}")
        while True:
            try:
                await self.store.settle(queue, self.consumer, settlements)
            except StoreError as exc:
                await asyncio.sleep(outage.failed(exc))
                continue
            outage.ok()
            return

    def _on_pressure(self, engaged: bool, held_s: float) -> None:
        if engaged:
            self.telemetry.emit(
                "backpressure.engaged", queue=self.queue, in_flight=self.flowable.credits.in_flight
            )
        else:
            self.telemetry.emit("backpressure.released", queue=self.queue, held_ms=held_s * 1000)

    def started(self, delivery: Delivery) -> None:
        """Note that a worker starts ``delivery``: a job of ``unique_until="start"`` gives up its key.

        Releases of one loop iteration share one Redis call. If that call is lost (the process stops first),
        settling the job releases the key instead.
        """
        self.running.add(delivery)
        job = delivery.job
        if job.unique_key is None or job.unique_until != "start":
            return
        if not self._unique_releases:
            self._releasing = asyncio.get_running_loop().create_task(self._release_unique_keys())
        self._unique_releases.append(Settlement(delivery.payload, "release", unique=(job.unique_key, job.id)))

    async def _release_unique_keys(self) -> None:
        await asyncio.sleep(0)  # let every start of this loop iteration join the call
        releases, self._unique_releases = self._unique_releases, []
        await self._settle_with_retries(releases)

    def release(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            self.outstanding.discard(delivery)
            self.running.discard(delivery)
        self.flowable.release(len(deliveries))

    async def hand_back_unstarted(self) -> int:
        """At stop: give every fetched, unstarted job back to the queue at once."""
        unstarted = [d for d in self.outstanding if d not in self.running]
        if not unstarted:
            return 0
        await self._settle_with_retries([Settlement(d.payload, "requeue") for d in unstarted])
        for delivery in unstarted:
            self.outstanding.discard(delivery)
        return len(unstarted)


def _non_empty(batch: Sequence[Delivery]) -> bool:
    return len(batch) > 0


def _unbound_arguments(job: Job, error: TypeError) -> BaseException:
    """The TypeError of a call whose args cannot bind to the worker's parameters, as the permanent fault it is.

    Checked only after a TypeError, so a job that runs pays nothing for it; a TypeError the worker's own code
    raised (its args bind) stays an ordinary, retried failure.
    """
    try:
        spec = get_worker(job.worker)
    except UnknownWorker:
        return error
    reason = spec.bind_error(job.args)
    if reason is None:
        return error
    shown = repr(list(job.args))
    if len(shown) > 200:
        shown = shown[:200] + "...]"
    return BadArguments(
        f"the args {shown} of job {job.id} do not fit worker {job.worker!r}{spec.signature} ({reason}); "
        "enqueue it again with args that match those parameters"
    )


def _safe_str(error: BaseException) -> str:
    """``str(error)``, or a stand-in when the exception cannot even be printed."""
    try:
        return str(error)
    except Exception as exc:
        return f"<its message cannot be printed: {type(exc).__name__}: {exc}>"


def _reason_of(settlement: Settlement) -> str:
    try:
        job = codec.decode(settlement.new_payload or b"")
    except DecodeError:
        return ""
    return "" if job.error is None else f"{job.error.kind}: {job.error.message}"


# ---------------------------------------------------------------------------------------------------------------
# Running workers


def run_workers(
    *,
    stages: int,
    executor: Executor,
    timeout_s: float | None = None,
    scheduler: abc.SchedulerBase | None = None,
) -> Callable[[Observable[Any]], Observable[fo.Outcome[Any, Any]]]:
    """The processor stage: runs each job's registered worker with at most ``stages`` at once.

    Items are :class:`Delivery` objects, or lists of them after a batcher. Async workers run on the loop,
    sync workers in ``executor``'s threads.
    """
    return fo.process(
        functools.partial(_call, executor=executor), stages, timeout_s=timeout_s, scheduler=scheduler
    )


def _call(
    item: Delivery | list[Delivery], *, executor: Executor
) -> Observable[Any] | asyncio.Future[Any] | Coroutine[Any, Any, Any]:
    if isinstance(item, list):
        return _call_many(item, executor)
    # The per-job hot path: the worker's coroutine, which process runs as a task, or an executor future.
    source = item.source
    if source.stopping:
        return reactivex.throw(NotStarted())
    source.started(item)
    job = item.job
    if source.telemetry.active:
        _emit_started(source.telemetry, job, time.time())
    spec = get_worker(job.worker)  # UnknownWorker becomes this job's outcome
    args = ([list(job.args)],) if spec.batch else job.args
    if spec.is_async:
        coro: Coroutine[Any, Any, Any] = spec.fn(*args)
        return coro
    return asyncio.get_running_loop().run_in_executor(executor, functools.partial(spec.fn, *args))


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
    telemetry.emit(
        "job.started",
        queue=job.queue,
        worker=job.worker,
        job_id=job.id,
        attempt=job.attempt,
        wait_ms=(now - job.enqueued_at) * 1000 if job.enqueued_at else None,
    )


async def _invoke(fn: Callable[..., Any], is_async: bool, executor: Executor, *args: Any) -> Any:
    if is_async:
        return await fn(*args)
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


# ---------------------------------------------------------------------------------------------------------------
# Settling outcomes


class Settler:
    """The sink of every pipeline: turns outcomes into acks, retries and dead letters, one Redis call per batch.

    Outcomes arriving in the same loop iteration are settled together; a job's credit goes back to its source
    only once Redis has confirmed, so the in-flight list never holds more than ``max_demand`` jobs.
    """

    def __init__(self, telemetry: Telemetry, *, rng: random.Random | None = None) -> None:
        self.telemetry = telemetry
        self._pending: dict[int, tuple[JobSource, list[Settlement], list[Delivery]]] = {}
        self._flushing: asyncio.Task[None] | None = None
        self._rng = rng or random.Random()
        self._idle = asyncio.Event()
        self._idle.set()

    def on_next(self, outcome: fo.Outcome[Any, Any]) -> None:
        item = outcome.item
        if isinstance(outcome.error, NotStarted):
            return  # handed back by JobSource.hand_back_unstarted
        duration_ms = (outcome.finished_at - outcome.started_at) * 1000
        if isinstance(item, list):
            failures: dict[int, BaseException] = {}
            if outcome.error is not None:
                failures = dict.fromkeys(range(len(item)), outcome.error)
            elif isinstance(outcome.value, dict):
                failures = outcome.value
            for index, delivery in enumerate(item):
                self._settle_one(delivery, failures.get(index), duration_ms)
        else:
            self._settle_one(item, outcome.error, duration_ms)
        self._schedule_flush()

    def on_error(self, error: Exception) -> None:
        logger.error("pipeline failed: %s", error, exc_info=error)

    def on_completed(self) -> None:
        pass

    def _settle_one(self, delivery: Delivery, error: BaseException | None, duration_ms: float) -> None:
        try:
            settlement = self._settlement_of(delivery, error, duration_ms)
        except Exception as exc:  # a fault of settling itself costs this one job, never the pipeline
            settlement = self._settle_fault(delivery, exc)
        pending = self._pending.get(id(delivery.source))
        if pending is None:
            pending = self._pending[id(delivery.source)] = (delivery.source, [], [])
        _, settlements, deliveries = pending
        settlements.append(settlement)
        deliveries.append(delivery)

    def _settlement_of(
        self, delivery: Delivery, error: BaseException | None, duration_ms: float
    ) -> Settlement:
        source, job = delivery.source, delivery.job
        telemetry = self.telemetry
        if error is None:
            # Enqueue-to-done latency for the cluster-wide p50/p99 (stats and dashboard); clocks of two hosts.
            latency_ms = (time.time() - job.enqueued_at) * 1000 if job.enqueued_at else None
            settlement = Settlement(delivery.payload, "ack", latency_ms=latency_ms)
            if telemetry.active:  # the one event of every job: skip building its fields when nobody listens
                telemetry.emit(
                    "job.succeeded",
                    queue=job.queue,
                    worker=job.worker,
                    job_id=job.id,
                    attempt=job.attempt,
                    duration_ms=duration_ms,
                )
        elif isinstance(error, Throttled):
            settlement = Settlement(delivery.payload, "requeue")
            telemetry.emit("job.throttled", queue=job.queue, worker=job.worker, job_id=job.id)
            if source.window is not None:
                source.window.penalize().subscribe(
                    lambda rate: telemetry.emit("throttle.penalized", key=job.queue, rate=rate),
                    lambda exc: logger.warning("could not lower the shared rate: %s", exc),
                )
        else:
            if isinstance(error, TimeoutError):
                error = JobTimeout(f"job {job.id} ran longer than the processor timeout")
            elif isinstance(error, TypeError):
                error = _unbound_arguments(job, error)
            job_error = JobError(
                type(error).__name__,
                str(error),
                "".join(traceback.format_exception(error))[-_TRACEBACK_TAIL_CHARS:],
            )
            failed = job.next_attempt(job_error)
            telemetry.emit(
                "job.failed",
                queue=job.queue,
                worker=job.worker,
                job_id=job.id,
                attempt=job.attempt,
                duration_ms=duration_ms,
                error=f"{job_error.kind}: {job_error.message}",
            )
            permanent = isinstance(error, UnknownWorker) or bool(getattr(error, "permanent", False))
            if permanent or failed.attempt > source.retry.max_retries:
                settlement = Settlement(
                    delivery.payload, "dead", codec.encode_cut_to_fit(failed, source.max_payload_bytes)
                )
                _log_dead(job, job_error, source.retry.max_retries, permanent)
                telemetry.emit(
                    "job.dead",
                    queue=job.queue,
                    worker=job.worker,
                    job_id=job.id,
                    attempt=job.attempt,
                    reason=f"{job_error.kind}: {job_error.message}",
                )
            else:
                delay_s = fo.backoff_delay(
                    job.attempt, source.retry.backoff_initial_s, source.retry.backoff_max_s, self._rng
                )
                settlement = Settlement(
                    delivery.payload,
                    "retry",
                    codec.encode_cut_to_fit(failed, source.max_payload_bytes),
                    int(delay_s * 1000),
                )
                _log_retry(job, job_error, source.retry.max_retries, delay_s)
                telemetry.emit(
                    "job.retried",
                    queue=job.queue,
                    worker=job.worker,
                    job_id=job.id,
                    attempt=failed.attempt,
                    delay_ms=delay_s * 1000,
                )
        if job.unique_key is not None and job.unique_until != "expiry":
            # For unique_until="start" the key went at the start; this is the safety net if that call was lost.
            settlement = replace(settlement, unique=(job.unique_key, job.id))
        return settlement

    def _settle_fault(self, delivery: Delivery, fault: Exception) -> Settlement:
        """The job's outcome could not be turned into a settlement: it goes to the dead letters, saying why."""
        job = delivery.job
        reason = (
            f"flume_rx could not settle this job's outcome ({type(fault).__name__}: {_safe_str(fault)}); "
            "it was not retried, see the worker's log"
        )
        logger.error("job %s of %r went to the dead letters: %s", job.id, job.queue, reason, exc_info=fault)
        self.telemetry.emit(
            "job.dead",
            queue=job.queue,
            worker=job.worker,
            job_id=job.id,
            attempt=job.attempt,
            reason=f"SettleError: {reason}",
        )
        unique = None
        if job.unique_key is not None and job.unique_until != "expiry":
            unique = (job.unique_key, job.id)
        try:
            record = codec.encode_cut_to_fit(
                job.next_attempt(JobError("SettleError", reason)), delivery.source.max_payload_bytes
            )
        except Exception:  # not even that fits: the job goes to the dead letters as it was fetched
            return Settlement(delivery.payload, "dead", unique=unique)
        return Settlement(delivery.payload, "dead", record, unique=unique)

    def _schedule_flush(self) -> None:
        self._idle.clear()
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        # Yield once so every outcome of this loop iteration joins the same round trip.
        await asyncio.sleep(0)
        while self._pending:
            batches, self._pending = self._pending, {}
            for source, settlements, deliveries in batches.values():
                try:
                    await source._settle_with_retries(settlements)
                except Exception as exc:  # not an outage (those are retried): find the outcome at fault
                    await self._settle_apart(source, settlements, exc)
                source.release(deliveries)
        self._idle.set()

    async def _settle_apart(
        self, source: JobSource, settlements: Sequence[Settlement], fault: Exception
    ) -> None:
        """A batch Redis would not take: settle its outcomes one by one, and the ones that still fail go to the
        dead letters as they were fetched, so one bad outcome costs one job and the pipeline goes on."""
        logger.error(
            "settling %d outcome(s) on %r failed; settling them one by one",
            len(settlements),
            source.queue,
            exc_info=fault,
        )
        for settlement in settlements:
            try:
                await source._settle_with_retries([settlement])
            except Exception as exc:
                logger.error(
                    "an outcome on %r could not be settled (%s: %s); its job goes to the dead letters",
                    source.queue,
                    type(exc).__name__,
                    _safe_str(exc),
                )
                try:
                    await source._settle_with_retries([Settlement(settlement.payload, "dead")])
                except Exception:
                    logger.exception(
                        "the job stays in flight; orphan recovery returns it when this consumer is gone"
                    )

    async def drained(self) -> None:
        """Wait until every outcome received so far is settled in Redis."""
        await self._idle.wait()


def _job_fields(job: Job, error: JobError, max_retries: int) -> dict[str, Any]:
    """A failed job's fields for a log record (the JSON log format shows them beside the message)."""
    return {
        "queue": job.queue,
        "worker": job.worker,
        "job_id": job.id,
        "attempt": job.attempt + 1,
        "max_attempts": max_retries + 1,
        "error": f"{error.kind}: {error.message}",
    }


def _log_retry(job: Job, error: JobError, max_retries: int, delay_s: float) -> None:
    fields = _job_fields(job, error, max_retries)
    fields["retry_in_s"] = round(delay_s, 3)
    logger.warning(
        "job %s of %r (worker %s) failed on attempt %d of %d: %s; next try in %.1f s",
        job.id,
        job.queue,
        job.worker,
        fields["attempt"],
        fields["max_attempts"],
        fields["error"],
        delay_s,
        extra=fields,
    )


_LOGGED_TRACEBACK_LINES = 12


def _log_dead(job: Job, error: JobError, max_retries: int, permanent: bool) -> None:
    fields = _job_fields(job, error, max_retries)
    tail = "\n".join(error.traceback.rstrip().splitlines()[-_LOGGED_TRACEBACK_LINES:])
    fields["traceback"] = tail
    why = "a permanent failure" if permanent else "its last attempt"
    logger.error(
        "job %s of %r (worker %s) went to the dead letters after %s (attempt %d of %d): %s%s",
        job.id,
        job.queue,
        job.worker,
        why,
        fields["attempt"],
        fields["max_attempts"],
        fields["error"],
        "\n" + tail if tail else "",
        extra=fields,
    )


# ---------------------------------------------------------------------------------------------------------------
# Assembly of a configured pipeline


def load_callable(path: str) -> Any:
    """Import ``module:attribute``."""
    import importlib

    from flume_rx.errors import ConfigError

    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"cannot import module {module_name!r} named in {path!r} ({exc}); check the path"
        ) from exc
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigError(f"module {module_name!r} has no attribute {attribute!r} (from {path!r})") from None


def cost_of(cost_path: str | None) -> Callable[[Any], int]:
    """The throttle cost of an item (a Delivery or a batch of them): the job's own cost, or a named function."""
    job_cost: Callable[[Job], int]
    if cost_path is None:
        job_cost = _own_cost
    else:
        fn = load_callable(cost_path)
        job_cost = functools.partial(_cost_from_args, fn)

    def cost(item: Delivery | list[Delivery]) -> int:
        if isinstance(item, list):
            return sum(job_cost(d.job) for d in item)
        return job_cost(item.job)

    return cost


def _own_cost(job: Job) -> int:
    return job.cost


def _cost_from_args(fn: Callable[..., int], job: Job) -> int:
    return max(0, int(fn(*job.args)))


def grant_batch(allowed: int, stages: int, burst: int | None) -> int:
    """The fewest tokens worth one Redis call: the window's pacing burst (a twentieth of the limit by
    default), at most what the stages can start.

    With one token per call, a full window answers every take with a one-token reservation and the limiter
    costs a Redis call per job; twenty calls per period keep it near 0.05 calls per job. The stages bound keeps
    a grant startable at once (within the grant's hold), and the burst bound keeps a configured burst in force
    (the window grants max(burst, min_tokens) at once).
    """
    return max(1, min(stages, burst or max(1, allowed // 20)))


def assemble(
    config: PipelineConfig,
    source: JobSource,
    *,
    executor: Executor,
    scheduler: AsyncIOScheduler,
) -> Observable[fo.Outcome[Any, Any]]:
    """The reactivex graph of a configured pipeline, from its source to the outcomes of its jobs."""
    stages: list[Callable[[Any], Any]] = [load_callable(path) for path in config.operators]
    telemetry = source.telemetry
    key_from = None if config.rate_limiter is None else config.rate_limiter.key_from
    if config.rate_limiter is not None and key_from is not None:
        from flume_rx.keyed_throttle import RedisKeyedWindow, key_of, throttle_by_key

        # Per-key tokens are taken per job, before the batcher, since a batch can mix keys. A released job
        # then starts at most batcher.timeout later: the batcher asks the throttle only for items of
        # batches the processor requested (one per free stage), withdraws what a batch closed by its timer
        # no longer has room for, so every item it receives has a requested batch that leaves (and starts
        # at once) within its timeout. Counting each grant that much longer keeps every key's window exact.
        limiter = config.rate_limiter
        keyed = RedisKeyedWindow(
            source.store,
            limiter.key,
            limiter.allowed,
            limiter.period_s,
            limiter.hold_s,
            lag_s=0.0 if config.batcher is None else config.batcher.timeout_s,
        )
        stages.append(throttle_by_key(keyed, key=key_of(key_from), cost=cost_of(limiter.cost)))
    if config.batcher is not None:
        stages.append(
            fo.buffer_with_time_or_count(
                config.batcher.timeout_s,
                config.batcher.size,
                scheduler=scheduler,
                on_flush=lambda size, trigger: telemetry.emit(
                    "batch.flushed", queue=config.queue, size=size, trigger=trigger
                ),
            )
        )
    if key_from is None and source.window is not None and config.rate_limiter is not None:
        window = source.window
        key = config.rate_limiter.key

        def on_throttle_event(kind: str, fields: dict[str, Any]) -> None:
            telemetry.emit(f"throttle.{kind}", key=key, rate=window.current_rate(), **fields)

        # The throttle sits right before the processor: tokens are taken when a job can start at once,
        # so the shared window counts starts, not fetches.
        stages.append(
            fo.throttle(
                window,
                cost=cost_of(config.rate_limiter.cost),
                min_tokens=grant_batch(
                    window.allowed,
                    config.processor.stages,
                    pacing_burst(window.allowed, config.rate_limiter.burst),
                ),
                scheduler=scheduler,
                on_event=on_throttle_event,
            )
        )
    stages.append(
        run_workers(
            stages=config.processor.stages,
            executor=executor,
            timeout_s=config.processor.timeout_s,
            scheduler=scheduler,
        )
    )
    result: Observable[fo.Outcome[Any, Any]] = source.flowable.pipe(*stages)
    return result
