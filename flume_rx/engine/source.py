"""The Redis side of a pipeline: fetching jobs on demand, what is outstanding, and stopping."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import reactivex
from reactivex import Observable, abc
from reactivex.disposable import Disposable

from flume_rx import operators as fo
from flume_rx.engine.decide import SettlePolicy
from flume_rx.engine.rate_watch import RateWatch
from flume_rx.model import codec
from flume_rx.model.config import RetryConfig
from flume_rx.model.errors import (
    DecodeError,
    StoreError,
)
from flume_rx.model.job import Job, JobError
from flume_rx.model.telemetry import Telemetry
from flume_rx.store import Outage, RedisStore, Settlement, through_outage

logger = logging.getLogger("flume_rx.pipeline")


BurstMode = Literal["drained", "ready"]
"""When a burst run stops. ``"drained"``: once its queues hold no work at all: nothing queued, no due scheduled
job, no job waiting to retry (due or not), nothing in any consumer's in-flight list, and nothing held here, so
a job that fails is retried before the run ends (scheduled jobs not yet due are left). ``"ready"``: once nothing
is ready to run now (the queue is empty); jobs waiting to retry and scheduled ones are left for later."""

BURST_POLL_S = 0.02
"""How often a draining burst run looks again while jobs it holds are still running."""

ABORTS_WAITING_MAX = 10_000
"""The most aborts a source keeps for jobs it does not hold (yet); past it the lapsed go, then the oldest."""


def burst_mode(burst: bool | BurstMode) -> BurstMode | None:
    """``burst`` as given to a run (True means ``"drained"``); None when it is not a burst run.

    Raises:
        ValueError: naming the value, when it is neither a bool nor a mode.
    """
    if burst is False:
        return None
    if burst is True:
        return "drained"
    if burst in ("drained", "ready"):
        return burst
    raise ValueError(f"burst must be True, False, 'drained' or 'ready' (got {burst!r})")


class NotStarted(Exception):
    """The pipeline was stopping when this job's turn came; it was handed back to the queue unstarted."""


class StartedLate(NotStarted):
    """The job would have begun after its grant's hold (released in time, its first line came later): it goes
    back to the throttle unstarted, for a token of a new grant (:meth:`JobSource.hand_back_late`)."""


@dataclass(eq=False, slots=True)
class Delivery:
    """A fetched job on its way through a pipeline; it knows the source it must be settled with."""

    job: Job
    payload: bytes
    source: JobSource
    call: Any = None
    """The worker's coroutine while an async job runs (how an abort finds its task)."""
    aborted: bool = False
    """Set when ``Flume.cancel`` asked to abort the running job (see :func:`flume_rx.current_job`)."""
    span: Any = None
    """The OpenTelemetry span a traced job runs in, ended when it is settled."""
    reported: bool = False
    """Its worker reported progress: its settlement records how it ended, so it stops showing as running."""
    hop: tuple[str, str] | None = None
    """``(queue, worker)`` a ``Flume.to_queue`` hop sends this job's result to, in the step of its ack."""
    queued: bool = False
    """The processor hands it to a stage thread ahead of a free one: it begins when a thread takes it."""
    taken: bool = False
    """A worker has begun it (a stage thread took it, or the loop started it): a stop no longer hands it back."""
    lease: fo.Lease | None = None
    """Its grant's hold on it, when a throttle released it: it must begin by ``lease.start_by`` or go back."""


@dataclass(eq=False)
class JobSource:
    """The Redis side of one pipeline in one process: fetching, what is outstanding, and stopping."""

    store: RedisStore
    queue: str
    consumer: str
    max_demand: int
    telemetry: Telemetry
    min_fetch: int = 1
    """The fewest jobs a fetch waits to have credits for (see :func:`~flume_rx.operators.request_n`): the
    processor's refill, so the jobs of a settle batch coming back do not each cost a fetch of their own."""
    retry: RetryConfig = field(default_factory=RetryConfig)
    window: fo.TokenWindow | None = None
    window_key: str = ""
    """The rate limiter's key, as telemetry names the window (the queue's name when empty)."""
    block_s: float = 1.0
    max_payload_bytes: int = codec.DEFAULT_MAX_PAYLOAD_BYTES
    stopping: bool = False
    outstanding: set[Delivery] = field(default_factory=set)
    running: set[Delivery] = field(default_factory=set)
    flowable: fo.PullSource[Delivery] = field(init=False)
    exhausted: bool = False
    burst_mode: BurstMode | None = None
    """When a burst run stops (``--burst``, ``Flume.run(burst=...)``); None: the run never stops by itself."""

    def __post_init__(self) -> None:
        self.settle_policy = SettlePolicy(self.retry, self.max_payload_bytes)
        self._outage = Outage(f"fetch from {self.queue!r}")
        # A stage thread taking a job and a stop handing back the unstarted ones decide under it, so a job is
        # either run or handed back, never both.
        self._take_lock = threading.Lock()
        self._unique_releases: list[Settlement] = []
        self._releasing: asyncio.Task[None] | None = None
        self._handing_back: set[asyncio.Task[None]] = set()
        # A fetch cancelled while its Lua call was under way may have moved jobs we never saw.
        self._reply_lost = False
        # Aborts asked for jobs not held here: job id -> when the ask lapses (epoch s). A fetch that brings one
        # marks it aborted, so it never begins.
        self._aborts_waiting: dict[str, float] = {}
        self.flowable = fo.request_n(
            self._fetch,
            self.max_demand,
            on_pressure=self._on_pressure,
            hand_back=self._hand_back,
            min_fetch=max(1, min(self.min_fetch, self.max_demand)),
        )
        self.rate_watch: RateWatch | None = None
        if self.window is not None:
            self.rate_watch = RateWatch(self.window, self.window_key or self.queue, self.telemetry)

    def _fetch(self, n: int) -> Observable[Sequence[Delivery]]:
        if self.stopping:
            return reactivex.empty()
        # An empty answer (burst mode on an empty queue, or stopping) completes without emitting: exhausted.
        return reactivex.create(functools.partial(self._subscribe_fetch, n))

    def _subscribe_fetch(
        self,
        n: int,
        observer: abc.ObserverBase[Sequence[Delivery]],
        _scheduler: abc.SchedulerBase | None = None,
    ) -> abc.DisposableBase:
        """Run one fetch as a task; disposing it cancels the task, and hands back whatever jobs it brought.

        The task emits its jobs itself, in the step that decoded them: a done-callback would wait a turn of
        the loop (its callbacks are scheduled, not run), and every job of the fetch with it."""
        disposed = False

        async def fetch() -> None:
            try:
                deliveries = await self._fetch_async(n)
            except Exception as error:
                if not disposed:
                    observer.on_error(error)
                return
            if disposed:
                # Disposed while the reply was read (a dispose while the task waits cancels the wait, and the
                # fetch's own give-back covers a reply lost to it): nobody will receive these jobs.
                self._hand_back(deliveries)
                return
            try:
                if deliveries:
                    observer.on_next(deliveries)
                observer.on_completed()
            except Exception as error:
                # A fault downstream: reported now, as a done-callback's would be, not when the task is freed.
                asyncio.get_running_loop().call_exception_handler(
                    {"message": f"a fetch's subscriber on {self.queue!r} failed", "exception": error}
                )

        task = asyncio.ensure_future(fetch())

        def cancel() -> None:
            nonlocal disposed
            disposed = True
            task.cancel()  # a finished fetch emitted its jobs or gave them back: nothing is left to cancel

        return Disposable(cancel)

    async def _fetch_async(self, n: int) -> list[Delivery]:
        """The one fetch loop of every source: up to ``n`` decoded jobs, riding out outages; ``[]`` when
        stopping or (burst mode) when no work is left. Subclasses change only :meth:`_fetch_payloads` (which
        Redis call) and :meth:`_when_empty` (how to wait when it brought nothing)."""
        block_s = 0.0 if self.burst_mode is not None else self.block_s
        while not self.stopping:
            started = time.monotonic()
            try:
                if self._reply_lost:
                    await self._return_unseen()
                    self._reply_lost = False
                self._reply_lost = True  # until the reply is in: a cancel now may strand moved jobs
                payloads = await self._fetch_payloads(n, block_s)
                self._reply_lost = False
            except StoreError as exc:
                # The fetch may have run in Redis although its reply never came (a timeout, a dropped link).
                self._reply_lost = True
                await asyncio.sleep(self._outage.failed(exc))
                continue
            self._outage.ok()
            if not payloads:
                waited = False
                if self.burst_mode is not None:
                    wait = await self._burst_wait()
                    if wait is None:
                        return []
                    block_s, waited = wait, True
                await self._when_empty(started, waited)
                continue
            deliveries = await self._decode_or_give_back(payloads)
            if deliveries:
                return deliveries
        return []

    async def _fetch_payloads(self, n: int, block_s: float) -> list[bytes]:
        """One fetch of up to ``n`` payloads into our in-flight list, blocking up to ``block_s`` for the first."""
        return await self.store.fetch(self.queue, self.consumer, n, block_s, self.max_payload_bytes)

    async def _when_empty(self, started: float, waited_for_burst: bool) -> None:
        """A fetch brought nothing (the blocking fetch already waited, unless the queue is paused)."""
        if not waited_for_burst and time.monotonic() - started < self.block_s / 2:
            # A paused queue answers at once; do not spin.
            await asyncio.sleep(min(0.2, self.block_s))

    async def _decode_or_give_back(self, payloads: Sequence[bytes]) -> list[Delivery]:
        try:
            return await self._decode(payloads)
        except asyncio.CancelledError:
            # Cancelled while dead-lettering the undecodable ones: the others were never seen downstream.
            # (Requeueing one that did reach the dead letters moves nothing: settle finds it gone.)
            self._requeue(payloads)
            raise

    def _hand_back(self, deliveries: Sequence[Delivery]) -> None:
        """Take back fetched jobs that never reached a worker: the subscription was cancelled first."""
        for delivery in deliveries:
            self.outstanding.discard(delivery)
        self._requeue([delivery.payload for delivery in deliveries])

    def _requeue(self, payloads: Sequence[bytes]) -> None:
        if not payloads or self.stopping:
            return  # stopping: the stop returns everything still in our in-flight lists
        task = asyncio.get_running_loop().create_task(
            self.settle([Settlement(payload, "requeue") for payload in payloads])
        )
        self._handing_back.add(task)
        task.add_done_callback(self._handing_back.discard)

    @property
    def fetch_queues(self) -> tuple[str, ...]:
        """Every queue this source fetches from."""
        return (self.queue,)

    async def _burst_wait(self) -> float | None:
        """After an empty fetch in a burst run: None when the run is over, else how long the next fetch may
        block (0 while jobs held here still run; they may fail and come back through the retry set)."""
        if self.burst_mode == "ready":
            return None
        if self.outstanding:
            await asyncio.sleep(BURST_POLL_S)
            return 0.0
        try:
            left = await self.store.work_left(self.fetch_queues)
        except StoreError as exc:
            await asyncio.sleep(self._outage.failed(exc))
            return 0.0
        # Work elsewhere (a retry not yet due, another consumer's jobs): promotion or recovery will put it on
        # the queue, where a blocking fetch sees it at once.
        return self.block_s if left else None

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
            await self.settle(bad)
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
        if self._aborts_waiting:
            self._mark_aborted(deliveries)
        if deliveries:
            self.telemetry.emit("job.fetched", queue=self.queue, count=len(deliveries))
        return deliveries

    def abort_asked(self, job_id: str, until_s: float) -> list[Delivery]:
        """``Flume.cancel`` asked to abort job ``job_id`` until ``until_s`` (epoch s): the deliveries of it held
        here, for the caller to abort. When none is held, the ask is kept until then, and a fetch that brings
        the job marks it aborted: it may be on its way here (a fetch whose reply is not in yet), or come back
        from a dead worker through orphan recovery."""
        found = [d for d in self.outstanding if d.job.id == job_id]
        if found or until_s <= time.time():
            return found
        waiting = self._aborts_waiting
        waiting.pop(job_id, None)  # re-inserted: the oldest ask is the first to go
        waiting[job_id] = until_s
        if len(waiting) > ABORTS_WAITING_MAX:
            now = time.time()
            for lapsed in [i for i, until in waiting.items() if until <= now]:
                del waiting[lapsed]
            while len(waiting) > ABORTS_WAITING_MAX:
                del waiting[next(iter(waiting))]
        return found

    def _mark_aborted(self, deliveries: Sequence[Delivery]) -> None:
        waiting, now = self._aborts_waiting, time.time()
        for delivery in deliveries:
            until = waiting.pop(delivery.job.id, None)
            if until is not None and until > now:
                delivery.aborted = True

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

    async def settle(self, settlements: Sequence[Settlement]) -> None:
        await self._settle_queue(self.queue, settlements)

    async def _settle_queue(self, queue: str, settlements: Sequence[Settlement]) -> None:
        """Settle on ``queue``, retrying with backoff through an outage (settling is idempotent)."""
        await through_outage(
            f"settle on {queue!r}", lambda: self.store.settle(queue, self.consumer, settlements)
        )

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
        delivery.taken = True
        job = delivery.job
        if job.unique_key is None or job.unique_until != "start":
            return
        if not self._unique_releases:
            self._releasing = asyncio.get_running_loop().create_task(self._release_unique_keys())
        self._unique_releases.append(Settlement(delivery.payload, "release", unique=(job.unique_key, job.id)))

    def short_of_fetch(self, settling: int) -> int:
        """How many outcomes beyond ``settling`` must settle before the credits for a whole fetch (the
        processor's refill, ``min_fetch``) are free; 0 or less when settling those frees them."""
        flowable = self.flowable
        return flowable.min_fetch - flowable.credits.available - settling

    def take(self, delivery: Delivery) -> bool:
        """In a stage thread about to run ``delivery``: whether it may (False once the source is stopping)."""
        with self._take_lock:
            if self.stopping:
                return False
            delivery.taken = True
            return True

    def hand_back_late(self, delivery: Delivery) -> None:
        """On the loop: ``delivery`` was refused at its first line because its grant's hold had ended. It goes
        back to the throttle that released it, unstarted and still ours (no settle, no attempt spent), and
        the throttle gives its token back to the window."""
        self.running.discard(delivery)
        lease, delivery.lease = delivery.lease, None
        if lease is not None:
            lease.hand_back(delivery)

    async def _release_unique_keys(self) -> None:
        await asyncio.sleep(0)  # let every start of this loop iteration join the call
        releases, self._unique_releases = self._unique_releases, []
        await self.settle(releases)

    def release(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            self.outstanding.discard(delivery)
            self.running.discard(delivery)
        self.flowable.release(len(deliveries))

    async def hand_back_unstarted(self) -> int:
        """At stop: give every fetched, unstarted job back to the queue at once."""
        if self._handing_back:
            await asyncio.gather(*self._handing_back)
        with self._take_lock:  # `stopping` is set: no thread takes a job after this look
            unstarted = [d for d in self.outstanding if not d.taken]
        if not unstarted:
            return 0
        await self.settle([Settlement(d.payload, "requeue") for d in unstarted])
        for delivery in unstarted:
            self.outstanding.discard(delivery)
            self.running.discard(delivery)  # handed to a stage thread, which will not run it now
        return len(unstarted)


def _reason_of(settlement: Settlement) -> str:
    try:
        job = codec.decode(settlement.new_payload or b"")
    except DecodeError:
        return ""
    return "" if job.error is None else f"{job.error.kind}: {job.error.message}"
