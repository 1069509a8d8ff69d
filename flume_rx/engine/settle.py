"""The sink of every pipeline: outcomes become acks, retries and dead letters, one Redis call per batch."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

from flume_rx import operators as fo
from flume_rx.engine.current import PROGRESS_KEPT_S
from flume_rx.engine.decide import Verdict, acked, decide
from flume_rx.engine.rate_watch import RateWatch
from flume_rx.engine.source import Delivery, JobSource, NotStarted, StartedLate
from flume_rx.engine.workflows import (
    cancelled_handoffs,
    chain_stopped,
    check_one_slot,
    flow_of,
    hop_of,
    is_workflow_job,
    member_outcome,
    next_in_chain,
)
from flume_rx.integrations.otel import end_run_span
from flume_rx.model import codec, registry
from flume_rx.model.errors import (
    BadArguments,
    UnknownWorker,
)
from flume_rx.model.job import CANCELLED_KEPT_S, Job, JobError
from flume_rx.model.registry import get_worker, result_ttl_of
from flume_rx.model.telemetry import Telemetry
from flume_rx.store import Handoff, Settlement, is_cluster

logger = logging.getLogger("flume_rx.pipeline")


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


SETTLE_AFTER_S = 0.001
"""The longest an outcome waits for others to share its settle call, while other jobs still run."""

SETTLE_COUNT = 256
"""Outcomes that make a settle call at once, however recent the first of them."""

SETTLE_RIDE_S = 0.004
"""The longest the first outcome waits when the outcomes, arriving as fast as they do, will free a whole fetch
within it: the settle then goes with a fetch's worth of outcomes, once, right before that fetch."""


class Settler:
    """The sink of every pipeline: turns outcomes into acks, retries and dead letters, one Redis call per batch.

    Outcomes wait for each other: a settle call goes when ``flush_count`` outcomes are pending, when the
    first of them has waited ``flush_after_s``, or at once when no job of that source is still running
    (nothing would join the call, and its credits are what the source waits for). Sync workers finish one
    job per loop iteration, so without the wait every settle carried one job.

    Riding with the fetch: a source fetches only once a whole refill's credits are free (its ``min_fetch``),
    so settles smaller than that only add calls. When the wait is over but the outcomes, at the rate they
    came, will free a whole fetch within ``ride_s`` of the first one, they wait for it (one source pending
    only) and go the moment they do; the fetch follows their credits. Fast sync jobs (~20 a millisecond)
    settled ~20 at a time and fetched 50: now 50 and 50. Slower outcomes go after ``flush_after_s`` as before,
    and a source with nothing running still settles at once. A job's credit goes back to
    its source only once Redis has confirmed, so the in-flight list never holds more than ``max_demand``
    jobs; an outcome not yet settled when the process dies is still in the in-flight list, and comes back.
    """

    def __init__(
        self,
        telemetry: Telemetry,
        *,
        rng: random.Random | None = None,
        flush_after_s: float = SETTLE_AFTER_S,
        flush_count: int = SETTLE_COUNT,
        ride_s: float = SETTLE_RIDE_S,
    ) -> None:
        if not flush_after_s >= 0:
            raise ValueError(f"flush_after_s must be >= 0 seconds (got {flush_after_s})")
        if not ride_s >= 0:
            raise ValueError(f"ride_s must be >= 0 seconds (got {ride_s})")
        if flush_count < 1:
            raise ValueError(f"flush_count must be >= 1 outcome (got {flush_count})")
        self.telemetry = telemetry
        self.flush_after_s = flush_after_s
        self.flush_count = flush_count
        self.ride_s = ride_s
        self._riding = False  # past flush_after_s, waiting for a fetch's worth of outcomes
        self._pending: dict[int, tuple[JobSource, list[Settlement], list[Delivery]]] = {}
        self._count = 0  # outcomes in _pending
        self._first_at = 0.0  # loop time the oldest of them arrived
        self._wake: asyncio.Future[None] | None = None  # the flush waiting for more outcomes
        self._checking = False  # a look at _due is scheduled
        self._flushing: asyncio.Task[None] | None = None
        self._rng = rng or random.Random()
        self._idle = asyncio.Event()
        self._idle.set()
        # Refusals not yet reported, by window: how many, and how long ago the oldest refused call started.
        self._refused: dict[RateWatch, tuple[int, float]] = {}

    def _report_refused(self) -> None:
        refused, self._refused = self._refused, {}
        for watch, (count, age_s) in refused.items():
            watch.refused(count, age_s)

    def on_next(self, outcome: fo.Outcome[Any, Any]) -> None:
        item = outcome.item
        if isinstance(outcome.error, NotStarted):
            if isinstance(outcome.error, StartedLate) and isinstance(item, Delivery):
                item.source.hand_back_late(item)  # back to its throttle for a new token
            return  # else handed back by JobSource.hand_back_unstarted
        duration_ms = (outcome.finished_at - outcome.started_at) * 1000
        if isinstance(item, list):
            failures: dict[int, BaseException] = {}
            if outcome.error is not None:
                failures = dict.fromkeys(range(len(item)), outcome.error)
            elif isinstance(outcome.value, dict):
                failures = outcome.value
            for index, delivery in enumerate(item):
                self._settle_one(delivery, failures.get(index), duration_ms)
            self._count += len(item)
            if item:
                self._schedule_flush(item[0].source)
        else:
            self._settle_one(item, outcome.error, duration_ms, outcome.value)
            self._count += 1
            self._schedule_flush(item.source)

    def on_next_all(self, outcomes: list[fo.Outcome[Any, Any]]) -> None:
        """:meth:`on_next` of each outcome, with one look at the flush per source rather than per outcome."""
        source: JobSource | None = None
        for outcome in outcomes:
            item = outcome.item
            if isinstance(item, list) or isinstance(outcome.error, NotStarted):
                self.on_next(outcome)
                continue
            if source is not item.source:
                if source is not None:
                    self._schedule_flush(source)
                source = item.source
            duration_ms = (outcome.finished_at - outcome.started_at) * 1000
            self._settle_one(item, outcome.error, duration_ms, outcome.value)
            self._count += 1
        if source is not None:
            self._schedule_flush(source)

    def on_error(self, error: Exception) -> None:
        logger.error("pipeline failed: %s", error, exc_info=error)

    def on_completed(self) -> None:
        pass

    def _settle_one(
        self, delivery: Delivery, error: BaseException | None, duration_ms: float, value: Any = None
    ) -> None:
        try:
            settlement = self._settlement_of(delivery, error, duration_ms, value)
        except Exception as exc:  # a fault of settling itself costs this one job, never the pipeline
            settlement = self._settle_fault(delivery, exc)
        pending = self._pending.get(id(delivery.source))
        if pending is None:
            pending = self._pending[id(delivery.source)] = (delivery.source, [], [])
        _, settlements, deliveries = pending
        settlements.append(settlement)
        deliveries.append(delivery)

    def _settlement_of(
        self, delivery: Delivery, error: BaseException | None, duration_ms: float, value: Any
    ) -> Settlement:
        source, job = delivery.source, delivery.job
        if (
            error is None
            and delivery.span is None
            and delivery.hop is None
            and job.meta is None
            and not delivery.reported
            and not registry.results_kept
            and not self.telemetry.active
        ):
            # The common case, a plain success: its ack, with nothing to keep, hand on, end or report.
            return acked(job, delivery.payload, time.time())
        if isinstance(error, TypeError):
            error = _unbound_arguments(job, error)
        verdict = decide(job, delivery.payload, error, source.settle_policy, now_s=time.time(), rng=self._rng)
        if delivery.span is not None:
            reason = "" if verdict.error is None else f"{verdict.error.kind}: {verdict.error.message}"
            end_run_span(delivery.span, verdict.kind, reason=reason, delay_s=verdict.delay_s)
            delivery.span = None
        if delivery.aborted and error is not None:  # it stopped because it was aborted (or failed meanwhile)
            return self._aborted(delivery)
        settlement = verdict.settlement
        # Plain jobs of workers that keep no results skip both looks below (the registry says whether any
        # worker keeps results; only jobs with meta or a hop can hand anything on).
        keep_s = result_ttl_of(job.worker) if registry.results_kept else None
        if keep_s is None and delivery.reported:
            keep_s = PROGRESS_KEPT_S  # how it ended replaces its progress, for as long as that was kept
        if keep_s is not None and verdict.kind in ("succeeded", "dead"):
            # Encoded before anything is reported: a result msgpack cannot hold sends the job to the dead
            # letters with that reason (through _settle_fault), as any other fault of settling does.
            result = codec.encode_result(value) if verdict.kind == "succeeded" else b""
            state: Literal["done", "dead"] = "done" if verdict.kind == "succeeded" else "dead"
            settlement = replace(settlement, outcome=(job.id, result, round(keep_s * 1000), state))
        if (delivery.hop is not None or (job.meta is not None and is_workflow_job(job))) and verdict.kind in (
            "succeeded",
            "dead",
        ):
            settlement = _with_handoffs(settlement, delivery, verdict, value)
        self._report(verdict, job, source, duration_ms)
        return settlement

    def _aborted(self, delivery: Delivery) -> Settlement:
        """A job ``Flume.cancel`` aborted (while it ran, or before it began): whatever it ended with, it is
        done with and recorded as cancelled (no retry)."""
        job = delivery.job
        logger.warning("job %s (%s) of %r was aborted by Flume.cancel", job.id, job.worker, job.queue)
        self.telemetry.emit_job("job.cancelled", job)
        keep_ms = round(CANCELLED_KEPT_S * 1000)
        unique = None if job.unique_key is None or job.unique_until == "expiry" else (job.unique_key, job.id)
        # As a job that went dead: its group learns it failed, its chain's later steps are stopped.
        handoffs = cancelled_handoffs(job, True, keep_ms, delivery.source.max_payload_bytes)
        return Settlement(
            delivery.payload,
            "ack",
            unique=unique,
            outcome=(job.id, b"", keep_ms, "cancelled"),
            handoffs=tuple(handoffs),
        )

    def _report(self, verdict: Verdict, job: Job, source: JobSource, duration_ms: float) -> None:
        """The telemetry and logs of a verdict (and the penalty a throttled job puts on a shared window)."""
        telemetry = self.telemetry
        if verdict.kind == "succeeded":
            if telemetry.active:  # the one event of every job: skip building its fields when nobody listens
                telemetry.emit_job(
                    "job.succeeded",
                    job,
                    attempt=job.attempt,
                    duration_ms=duration_ms,
                )
            return
        if verdict.kind == "throttled":
            telemetry.emit_job("job.throttled", job)
            watch = source.rate_watch
            if watch is not None:
                # One report per window and loop iteration, at once rather than with the settle batch: the
                # sooner the shared rate follows the downstream, the fewer calls it refuses.
                # The window measures what the downstream had accepted when the oldest refused call started.
                if not self._refused:
                    asyncio.get_running_loop().call_soon(self._report_refused)
                count, age_s = self._refused.get(watch, (0, 0.0))
                self._refused[watch] = (count + 1, max(age_s, duration_ms / 1000))
            return
        job_error, failed = verdict.error, verdict.failed
        assert job_error is not None and failed is not None  # a retried or dead verdict records its failure
        telemetry.emit_job(
            "job.failed",
            job,
            attempt=job.attempt,
            duration_ms=duration_ms,
            error=f"{job_error.kind}: {job_error.message}",
        )
        max_retries = source.retry.max_retries
        if verdict.kind == "dead":
            _log_dead(job, job_error, max_retries, verdict.permanent)
            telemetry.emit_job(
                "job.dead",
                job,
                attempt=job.attempt,
                reason=f"{job_error.kind}: {job_error.message}",
            )
        else:
            _log_retry(job, job_error, max_retries, verdict.delay_s)
            telemetry.emit_job(
                "job.retried",
                job,
                attempt=failed.attempt,
                delay_ms=verdict.delay_s * 1000,
            )

    def _settle_fault(self, delivery: Delivery, fault: Exception) -> Settlement:
        """The job's outcome could not be turned into a settlement: it goes to the dead letters, saying why."""
        job = delivery.job
        reason = (
            f"flume_rx could not settle this job's outcome ({type(fault).__name__}: {_safe_str(fault)}); "
            "it was not retried, see the worker's log"
        )
        logger.error("job %s of %r went to the dead letters: %s", job.id, job.queue, reason, exc_info=fault)
        self.telemetry.emit_job(
            "job.dead",
            job,
            attempt=job.attempt,
            reason=f"SettleError: {reason}",
        )
        unique = None
        if job.unique_key is not None and job.unique_until != "expiry":
            unique = (job.unique_key, job.id)
        keep_s = result_ttl_of(job.worker)
        # A worker that keeps results has its waiters told, as for any other dead letter.
        outcome: tuple[str, bytes, int, Literal["dead"]] | None = None
        if keep_s is not None:
            outcome = (job.id, b"", round(keep_s * 1000), "dead")
        # A group member still tells its group, so the callback is not left waiting for it.
        joined = _member_failed(job, f"SettleError: {reason}")
        try:
            record = codec.encode_cut_to_fit(
                job.next_attempt(JobError("SettleError", reason)), delivery.source.max_payload_bytes
            )
        except Exception:  # not even that fits: the job goes to the dead letters as it was fetched
            return Settlement(delivery.payload, "dead", unique=unique, outcome=outcome, handoffs=joined)
        return Settlement(delivery.payload, "dead", record, unique=unique, outcome=outcome, handoffs=joined)

    def _schedule_flush(self, source: JobSource) -> None:
        if self._idle.is_set():
            self._idle.clear()
        loop = asyncio.get_running_loop()
        if not self._first_at:
            self._first_at = loop.time()
        if self._flushing is None or self._flushing.done():
            self._flushing = loop.create_task(self._flush())
        elif self._wake is not None and not self._checking:
            if self._count >= self.flush_count:
                _wake_up(self._wake)
            elif self._riding and source.short_of_fetch(len(self._pending[id(source)][2])) <= 0:
                _wake_up(self._wake)  # a fetch's worth: its credits are what the source waits for
            elif len(source.running) <= len(self._pending[id(source)][2]):
                # Every job this source started waits here: looked at again once the processor has started
                # what this outcome's stage frees (it emits the outcome first, so the source may look idle
                # although its next job is about to start). A source with a job still running needs no look:
                # until the flush, jobs only start, so it cannot fall idle before the timer.
                self._checking = True
                loop.call_soon(self._check_due)

    def _check_due(self) -> None:
        self._checking = False
        if self._wake is not None and self._due():
            _wake_up(self._wake)

    def _due(self) -> bool:
        """Whether the pending outcomes should go now rather than wait for company."""
        if self._count >= self.flush_count:
            return True
        # A source with nothing running sends no more outcomes until it gets its credits back.
        return any(len(source.running) <= len(deliveries) for source, _, deliveries in self._pending.values())

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        # Yield once so every outcome of this loop iteration joins the same round trip.
        await asyncio.sleep(0)
        while self._pending:
            wait_s = self._first_at + self.flush_after_s - loop.time()
            if wait_s > 0 and not self._due():
                await self._wait(wait_s)
            ride_s = self._ride_left(loop.time())
            if ride_s > 0 and not self._due():
                self._riding = True
                try:
                    await self._wait(ride_s)
                finally:
                    self._riding = False
            batches, self._pending = self._pending, {}
            self._count, self._first_at = 0, 0.0
            for source, settlements, deliveries in batches.values():
                try:
                    await source.settle(settlements)
                except Exception as exc:  # not an outage (those are retried): find the outcome at fault
                    await self._settle_apart(source, settlements, exc)
                source.release(deliveries)
        self._idle.set()

    async def _wait(self, timeout_s: float) -> None:
        """Until woken (a reason to go now) or ``timeout_s`` has passed."""
        wake = self._wake = asyncio.get_running_loop().create_future()
        timer = asyncio.get_running_loop().call_later(timeout_s, _wake_up, wake)
        try:
            await wake
        finally:
            timer.cancel()
            self._wake = None

    def _ride_left(self, now: float) -> float:
        """How much longer the pending outcomes wait for a fetch's worth of company: 0 to go now.

        Only for one source, whose outcomes, at the rate they came since the first, free a whole fetch (with
        the credits free already) before the first has waited ``ride_s``.
        """
        left = self._first_at + self.ride_s - now
        if left <= 0 or len(self._pending) != 1:
            return 0.0
        ((source, _, deliveries),) = self._pending.values()
        short = source.short_of_fetch(len(deliveries))
        waited = now - self._first_at
        if short <= 0 or waited <= 0 or short * waited / len(deliveries) > left:
            return 0.0
        return left

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
                await source.settle([settlement])
            except Exception as exc:
                logger.error(
                    "an outcome on %r could not be settled (%s: %s); its job goes to the dead letters",
                    source.queue,
                    type(exc).__name__,
                    _safe_str(exc),
                )
                # A group member still tells its group it failed (or the callback would wait for it forever);
                # if even that is refused, the job goes to the dead letters bare.
                reason = (
                    f"SettleError: its outcome could not be settled ({type(exc).__name__}: {_safe_str(exc)})"
                )
                joined = _member_failed_of(settlement.payload, reason)
                attempts = [Settlement(settlement.payload, "dead", handoffs=joined)] if joined else []
                attempts.append(Settlement(settlement.payload, "dead"))
                for attempt in attempts:
                    try:
                        await source.settle([attempt])
                        break
                    except Exception:
                        continue
                else:
                    logger.error(
                        "the job stays in flight; orphan recovery returns it when this consumer is gone"
                    )

    async def drained(self) -> None:
        """Wait until every outcome received so far is settled in Redis."""
        await self._idle.wait()


def _with_handoffs(settlement: Settlement, delivery: Delivery, verdict: Verdict, value: Any) -> Settlement:
    """A workflow job's settlement, with what it hands on: the next chain step, a hop's job, or its outcome as
    a group member. A chain step that went dead stops its chain, and its record says so (``Flume.job``)."""
    job, source = delivery.job, delivery.source
    handoffs: list[Handoff] = []
    if verdict.kind == "succeeded":
        following = next_in_chain(job, value, source.max_payload_bytes)
        if following is not None:
            handoffs.append(following)
        if delivery.hop is not None:
            queue, worker = delivery.hop
            if is_cluster(source.store.client):
                check_one_slot(source.store.keys, [job.queue, queue], "to_queue hop")
            handoffs.append(hop_of(queue, worker, value, source.max_payload_bytes))
        joined = member_outcome(job, True, value, None)
    else:
        error = verdict.error
        assert error is not None  # a dead verdict records its failure
        joined = member_outcome(job, False, None, f"{error.kind}: {error.message}")
        flow = flow_of(job)
        if flow is not None and flow.chain:
            keep_ms = round(CANCELLED_KEPT_S * 1000)
            if settlement.outcome is None:
                settlement = replace(settlement, outcome=(job.id, b"", keep_ms, "dead"))
            handoffs += chain_stopped(
                job, f"{error.kind}: {error.message}", keep_ms, source.max_payload_bytes
            )
    if joined is not None:
        handoffs.append(joined)
    return replace(settlement, handoffs=tuple(handoffs))


def _member_failed_of(payload: bytes, error: str) -> tuple[Handoff, ...]:
    """:func:`_member_failed` for a job known only by its payload (none when it does not decode)."""
    try:
        job = codec.decode(payload)
    except Exception:
        return ()
    return _member_failed(job, error)


def _member_failed(job: Job, error: str) -> tuple[Handoff, ...]:
    try:
        joined = member_outcome(job, False, None, error)
    except Exception:  # its flow field is what failed: nothing to tell
        return ()
    return () if joined is None else (joined,)


def _wake_up(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


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
