"""The ``Flume`` facade: enqueue jobs, look at and act on queues; pipelines in code come from
:mod:`flume_rx.surfaces.code_pipelines`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from reactivex import Observable

from flume_rx.engine.source import JobSource
from flume_rx.engine.threads import StageThreads
from flume_rx.engine.workflows import (
    GROUP_KEPT_S,
    Chain,
    Group,
    StepSpec,
    callback_record,
    check_one_slot,
    group_members,
    group_record,
    job_of,
    new_group_id,
    pending_records,
    steps_of,
    to_queue,
)
from flume_rx.integrations.otel import enqueue_meta
from flume_rx.model import codec
from flume_rx.model.config import (
    FlumeConfig,
    PipelineConfig,
    default_redis_url,
)
from flume_rx.model.errors import ConfigError, DecodeError, ResultUnavailable
from flume_rx.model.job import Flow, Job, check_name
from flume_rx.model.telemetry import Event, Telemetry
from flume_rx.store import (
    ConsumerInfo,
    PeekWhere,
    QueueStats,
    RatePoint,
    RedisStore,
    SyncStore,
    UniqueEnqueue,
    is_cluster,
)
from flume_rx.surfaces.code_pipelines import CodePipelines
from flume_rx.surfaces.follow import (
    JobInfo,
    WorkflowInfo,
    await_result,
    cancel_job,
    find_job,
    find_workflow,
    wait_result,
    workflow_of,
)
from flume_rx.surfaces.producer import Producer, Uniqueness, When

"""How long a unique key is held at most when ``unique_for`` is not given."""


class Flume(Producer, CodePipelines):
    """A connection to one flume_rx namespace on one Redis.

    >>> flume = Flume(redis_url="redis://127.0.0.1:6379/0", namespace="flume")  # doctest: +SKIP
    >>> jid = flume.enqueue("email_service", "EmailWorker", [42, "welcome"])     # doctest: +SKIP

    Args:
        redis_url: defaults to FLUME_REDIS_URL, else redis://127.0.0.1:6379/0.
        namespace: prefix of every key, so several applications can share one Redis.
        max_payload_bytes: enqueue refuses larger jobs (default 1 MiB).
        config: a loaded config; its URL, namespace and limits are used where no argument is given.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        namespace: str | None = None,
        *,
        max_payload_bytes: int | None = None,
        config: FlumeConfig | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.config = config or FlumeConfig(redis_url=redis_url or default_redis_url())
        self.redis_url = redis_url or self.config.redis_url
        self.namespace = namespace or self.config.namespace
        self.max_payload_bytes = max_payload_bytes or self.config.max_payload_bytes
        self.telemetry = telemetry or Telemetry()
        self._store = SyncStore.from_url(self.redis_url, self.namespace)
        self._async_store: RedisStore | None = None
        self._sources: list[tuple[JobSource, PipelineConfig]] = []
        self._executors: list[StageThreads] = []
        self._consumer: str | None = None

    @classmethod
    def from_config(cls, config: FlumeConfig) -> Flume:
        return cls(config=config)

    # ---- enqueueing ---------------------------------------------------------------------------------------------

    def _put(
        self, jobs: Sequence[Job], when: When, dues: Sequence[float], unique: Sequence[Uniqueness | None]
    ) -> list[str]:
        """Write checked jobs of one queue in one round trip: now, at ``due`` (unix s) or in ``due`` s (Redis
        clock), through the unique-key script when any job has a key."""
        if not jobs:
            return []
        queue = jobs[0].queue
        if any(u is not None for u in unique):
            return self._enqueue_unique(jobs, unique, when, dues)
        payloads = [codec.encode(job, self.max_payload_bytes) for job in jobs]
        if when == "now":
            self._store.enqueue(queue, payloads)
        elif when == "in":
            self._store.schedule_in(queue, list(zip(payloads, dues, strict=True)))
        else:
            self._store.schedule(queue, list(zip(payloads, dues, strict=True)))
        self.telemetry.emit("job.enqueued", queue=queue, count=len(payloads))
        return [job.id for job in jobs]

    def _enqueue_unique(
        self, jobs: Sequence[Job], unique: Sequence[Uniqueness | None], when: When, dues: Sequence[float]
    ) -> list[str]:
        held = next(u for u in unique if u is not None)  # one unique_for and unique_until per call
        marked = [
            job if u is None else replace(job, unique_key=u.key, unique_until=u.until)
            for job, u in zip(jobs, unique, strict=True)
        ]
        requests = [
            UniqueEnqueue(job.id, codec.encode(job, self.max_payload_bytes), job.unique_key, due)
            for job, due in zip(marked, dues, strict=True)
        ]
        results = self._store.enqueue_unique(jobs[0].queue, requests, round(held.for_s * 1000), when)
        added = sum(1 for was_added, _ in results if was_added)
        if added:
            self.telemetry.emit("job.enqueued", queue=jobs[0].queue, count=added)
        return [job_id for _, job_id in results]

    # ---- looking and acting -------------------------------------------------------------------------------------

    def stats(self, queues: Sequence[str] | None = None) -> dict[str, QueueStats]:
        """Per queue: queued, in_flight, scheduled, retry, dead, processed, failed, and more.

        ``consumers`` counts the live ones only (heard from within the config's ``orphan_timeout``);
        ``consumers_silent`` those taken for dead.
        """
        return self._store.stats(queues, self.config.orphan_timeout_s)

    def dead_list(self, queue: str, limit: int = 100) -> list[Job]:
        """The newest ``limit`` dead jobs of ``queue``, newest first; :meth:`dead_letters` adds their time of
        death."""
        return [entry.job for entry in self.dead_letters(queue, limit)]

    def dead_letters(self, queue: str, limit: int = 100) -> list[PeekedJob]:
        """The newest ``limit`` dead jobs of ``queue``, newest first, each with its time of death (``at``).

        ``job.error`` holds the last attempt's error and the tail of its traceback. Payloads that no longer
        decode are left out.
        """
        return _decoded(self._store.dead_list(queue, limit))

    def dead_retry(
        self, queue: str, job_ids: Sequence[str] | None = None, *, keep_attempts: bool = False
    ) -> int:
        """Put dead jobs (all, or those with ``job_ids``) back on their queue; returns how many.

        Each starts afresh with all its retries (attempt 0, no error) unless ``keep_attempts``, with which it
        keeps its attempt count, so one more failure sends it back to the dead letters.
        """
        if job_ids is None and keep_attempts:
            return self._store.dead_retry(queue, None)
        if job_ids is not None:
            wanted = set(job_ids)
            payloads = [p for p, _ in self._store.dead_list(queue, 1_000_000) if _job_id(p) in wanted]
            return self._move_dead(queue, payloads, keep_attempts)
        # All of them, newest first, a chunk at a time: at most as many as were dead when we started, so jobs
        # that die again meanwhile are not taken round a second time.
        budget, moved = self.dead_count(queue), 0
        while moved < budget:
            chunk = self._store.dead_list(queue, min(_SCAN_CHUNK, budget - moved))
            step = self._move_dead(queue, [p for p, _ in chunk], keep_attempts)
            if step == 0:
                break
            moved += step
        return moved

    def _move_dead(self, queue: str, payloads: Sequence[bytes], keep_attempts: bool) -> int:
        if not payloads:
            return 0
        fresh = None if keep_attempts else [_fresh(p, self.max_payload_bytes) for p in payloads]
        return self._store.dead_retry(queue, payloads, fresh)

    def dead_purge(self, queue: str) -> int:
        """Delete every dead job of ``queue`` for good; returns how many."""
        return self._store.dead_purge(queue)

    def dead_count(self, queue: str) -> int:
        """How many dead jobs ``queue`` holds."""
        return self._store.stats([queue])[queue]["dead"]

    def window_rate(self, key: str) -> tuple[float, int] | None:
        """The shared window ``key``'s effective rate at its last grant or refusal and its allowed (both per
        period); None while it is quiet (then the rate is its configured allowed)."""
        return self._store.window_rate(key)

    def window_counts(self, key: str) -> tuple[int, int]:
        """Token grants so far, and how many of them made the caller wait, for the shared window ``key``."""
        return self._store.window_counts(key)

    def pause(self, queue: str) -> None:
        self._store.pause(queue)

    def resume(self, queue: str) -> None:
        self._store.resume(queue)

    def consumers(self, queues: Sequence[str] | None = None) -> list[ConsumerInfo]:
        """Every consumer of the queues (all known by default): last heartbeat, its age, jobs in flight, and
        ``alive`` (False once silent for the config's ``orphan_timeout``: taken for dead)."""
        return self._store.consumers(queues, self.config.orphan_timeout_s)

    def rates(
        self, queue: str, resolution: Literal["second", "minute"] = "second", count: int = 60
    ) -> list[RatePoint]:
        """Jobs processed and failed per second (last 120 kept) or minute (last 60 kept), cluster-wide."""
        return self._store.rates(queue, resolution, count)

    def peek(self, queue: str, where: PeekWhere = "queued", limit: int = 20) -> list[Job]:
        """Jobs of ``queue`` without taking them (payloads that no longer decode are left out).

        ``queued`` lists them in the order they will run, ``scheduled`` and ``retry`` by due time, ``dead``
        oldest first. :meth:`peek_entries` adds each one's due time or time of death.
        """
        return [entry.job for entry in self.peek_entries(queue, where, limit)]

    def peek_entries(self, queue: str, where: PeekWhere = "queued", limit: int = 20) -> list[PeekedJob]:
        """As :meth:`peek`, each job with ``at``: its due time (scheduled, retry), its time of death (dead), or
        None (queued)."""
        return _decoded(self._store.peek(queue, where, limit))

    def delete(self, queue: str, job_ids: Sequence[str]) -> int:
        """Remove the jobs with ``job_ids`` from the queue, its scheduled and retry sets and its dead letters;
        a job already fetched by a worker is not touched. Returns how many were removed."""
        wanted = set(job_ids)
        found: list[bytes] = []
        for where in ("queued", "scheduled", "retry", "dead"):
            start = 0
            while chunk := self._store.peek(queue, where, _SCAN_CHUNK, start):
                found += [payload for payload, _ in chunk if _job_id(payload) in wanted]
                start += len(chunk)
        return self._store.delete(queue, found)

    def job(self, job_id: str, queue: str | None = None) -> JobInfo:
        """Where job ``job_id`` is now: queued, scheduled, running (and on which consumer), retry (and when),
        dead (and why), cancelled, or unknown, with its fields as stored.

        It looks on ``queue``, or on every known queue; the cost grows with the queues' lengths (no per-job
        index is kept, so enqueue and the workers pay nothing for it).
        """
        return find_job(self._store, job_id, self._queues(queue), self.config.orphan_timeout_s)

    def workflow(self, job_id: str, queue: str | None = None) -> WorkflowInfo | None:
        """The chain or group job ``job_id`` is part of, with each of its jobs' state: a chain's steps in
        order, or a group's members, how many have finished, and its callback. None for a job of no
        workflow. Each job is looked up as :meth:`job` does (at most ``WORKFLOW_SHOWN`` of them)."""
        return find_workflow(self._store, job_id, self._queues(queue), self.config.orphan_timeout_s)

    def workflow_of(self, info: JobInfo) -> WorkflowInfo | None:
        """:meth:`workflow` of a job :meth:`job` already found (spares looking it up again)."""
        return workflow_of(self._store, info, self.config.orphan_timeout_s)

    def cancel(self, job_id: str, queue: str | None = None) -> JobInfo:
        """Cancel job ``job_id``. A waiting one (queued, scheduled or waiting to retry) is taken off and
        recorded as cancelled, in one step; a workflow job to come (``waiting``) is recorded as cancelled and
        skipped when its turn comes; a running one is aborted (its worker records it as cancelled when it
        stops). A cancelled chain step stops its chain; a cancelled group member still completes its group,
        as a failed one. Returns the job's state afterwards (``running`` for an abort asked); a dead or
        unknown job is left as it is and its state returned."""
        return cancel_job(
            self._store, job_id, self._queues(queue), self.config.orphan_timeout_s, self.max_payload_bytes
        )

    def result(self, job_id: str, queue: str | None = None, timeout: float | None = None) -> Any:
        """Wait for job ``job_id`` to finish and return its worker's return value.

        The worker must keep results (``@worker(..., result_ttl=SECONDS)``). The wait blocks on a message
        the job's settle publishes, not a poll. ``queue`` spares a lookup of where the job is.

        Raises:
            JobFailed: the job went to the dead letters (its error's kind, message and traceback).
            JobCancelled: it was cancelled.
            ResultTimeout: ``timeout`` seconds passed first.
            ResultUnavailable: there is nothing to wait for (unknown job, or a worker that keeps no results).
        """
        return wait_result(
            self._store, job_id, self._queue_of(job_id, queue), timeout, self.config.orphan_timeout_s
        )

    async def aresult(self, job_id: str, queue: str | None = None, timeout: float | None = None) -> Any:
        """:meth:`result` for asyncio code: waits without blocking the event loop."""
        where = queue if queue is not None else await asyncio.to_thread(self._queue_of, job_id, None)
        # A client of this call's own: the caller's loop may end with this call (asyncio.run), and a client
        # kept past its loop cannot be closed.
        async with RedisStore.from_url(self.redis_url, self.namespace) as store:
            return await await_result(
                store, self._store, job_id, check_name(where), timeout, self.config.orphan_timeout_s
            )

    # ---- workflows ----------------------------------------------------------------------------------------------

    def chain(self, steps: Sequence[StepSpec]) -> Chain:
        """Run ``steps`` one after the other, each receiving the previous one's result as its last argument.

        >>> flume.chain([("wf/resize", "resize", ["a.jpg"]), ("wf/upload", "upload")])  # doctest: +SKIP

        Only the first step is enqueued now; each step's job carries the rest. When a step succeeds, its ack
        and the next step's enqueue are one Redis script call, so a worker killed at any moment neither loses
        nor doubles the hand-off. A step that goes to the dead letters stops the chain there (its record says
        dead, for ``Flume.job``), and the later steps are recorded as cancelled, so
        ``Flume.result`` of any of them raises ``JobCancelled`` naming the step that failed. The steps' job ids
        are chosen now (``Chain.ids``), and ``Flume.result(chain.last, chain.last_queue)`` waits for the
        chain's result before its last step exists (its worker must keep results).

        Args:
            steps: ``(queue, worker)`` or ``(queue, worker, args)`` each, or ``handle.step(*args)``.

        Raises:
            ConfigError: no steps, a malformed step, or (on Redis Cluster) queues of different groups: name
                them in one group, such as ``wf/resize`` and ``wf/upload``, so they share a slot.
        """
        checked = steps_of(steps, "chain")
        if not checked:
            raise ConfigError("a chain needs at least one step; pass them as [(queue, worker, args), ...]")
        self._check_slots([step.queue for step in checked], "chain")
        first, rest = checked[0], tuple(checked[1:])
        # The enqueuing span's context travels down the chain, as it does with a plain job.
        job = job_of(first, Flow(rest) if rest else None, enqueue_meta())
        self._store.enqueue_workflow(
            [(job.queue, codec.encode(job, self.max_payload_bytes))],
            waiting=pending_records(checked),
            waiting_ms=round(GROUP_KEPT_S * 1000),
        )
        self.telemetry.emit("job.enqueued", queue=job.queue, count=1)
        return Chain([step.id for step in checked], [step.queue for step in checked])

    def group(self, jobs: Sequence[StepSpec], then: StepSpec, *, keep_s: float = GROUP_KEPT_S) -> Group:
        """Run ``jobs`` in parallel, then ``then`` once every one of them has finished for good.

        >>> flume.group([("wf/resize", "resize", [p]) for p in photos],  # doctest: +SKIP
        ...             then=("wf/notify", "album_ready", ["album-7"]))

        The callback receives, after its own args, one entry per member in the order given:
        ``{"id", "ok", "result", "error"}`` (``result`` the member's return value when ``ok``; ``error``
        ``"Kind: message"`` when it went to the dead letters or was aborted). Each member's outcome is recorded
        in the same script call as its ack or dead letter, and the member that completes the group enqueues
        the callback in that same call: exactly once, even if workers are killed. A member that is retried
        counts once it succeeds or goes dead. ``Flume.result(group.then, group.then_queue)`` waits for the
        callback's result (its worker must keep results).

        Args:
            jobs: the members, ``(queue, worker, args)`` each (or ``handle.step(*args)``).
            then: the callback, ``(queue, worker, args)``.
            keep_s: how long the group waits for its members; outcomes after that are not gathered.

        Raises:
            ConfigError: no members, a malformed step, or (on Redis Cluster) queues of different groups.
        """
        if not keep_s > 0:
            raise ConfigError(f"keep_s must be > 0 seconds (got {keep_s!r}); how long the group waits")
        group_id = new_group_id()
        members, callback = group_members(jobs, then, group_id, enqueue_meta())
        self._check_slots([callback.queue, *(m.queue for m in members)], "group")
        payloads = [(m.queue, codec.encode(m, self.max_payload_bytes)) for m in members]
        codec.encode(callback, self.max_payload_bytes)  # its args are checked now, not when the group ends
        keep_ms = round(keep_s * 1000)
        record = {**group_record(callback, len(members), group_id, self.max_payload_bytes), "keep": keep_ms}
        self._store.enqueue_workflow(
            payloads,
            (callback.queue, group_id, record, keep_ms),
            waiting=[(callback.queue, callback.id, callback_record(callback, members, group_id))],
            waiting_ms=keep_ms,
        )
        for queue in dict.fromkeys(m.queue for m in members):
            self.telemetry.emit(
                "job.enqueued", queue=queue, count=sum(1 for m in members if m.queue == queue)
            )
        return Group(group_id, [m.id for m in members], callback.id, callback.queue)

    def to_queue(self, queue: str, worker: str | None = None) -> Callable[[Observable[Any]], Observable[Any]]:
        """The durable hop of a pipeline built in code: each job that succeeds sends its result on, as the one
        argument of a new job of ``worker`` (default: named as ``queue``) on ``queue``, in the same Redis
        script call as its ack.

        >>> flume.source("wf/resize").pipe(flume.process(), flume.to_queue("wf/upload", "upload"))  # doctest: +SKIP

        It goes after :meth:`process` (it marks outcomes). On Redis Cluster, the two queues must share a
        group (``wf/resize``, ``wf/upload``); a job whose hop crosses slots goes to the dead letters saying so.
        """
        return to_queue(check_name(queue), worker or queue)

    def _check_slots(self, queues: Sequence[str], what: str) -> None:
        if is_cluster(self._store.client):
            check_one_slot(self._store.keys, queues, what)

    def _queue_of(self, job_id: str, queue: str | None) -> str:
        if queue is not None:
            return check_name(queue)
        found = self.job(job_id)
        if found.queue is None:
            raise ResultUnavailable(
                f"job {job_id} is on no known queue: it was never enqueued, or it finished under a worker that "
                "keeps no results; pass queue= or register the worker with @worker(..., result_ttl=SECONDS)"
            )
        return found.queue

    def _queues(self, queue: str | None) -> list[str]:
        return [check_name(queue)] if queue is not None else self._store.known_queues()

    @property
    def events(self) -> Observable[Event]:
        """Every telemetry event of this process as a reactivex Observable."""
        return self.telemetry.events

    def close(self) -> None:
        self._store.close()
        for executor in self._executors:
            executor.shutdown(wait=False)

    def __enter__(self) -> Flume:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


_SCAN_CHUNK = 1000


@dataclass(frozen=True, slots=True)
class PeekedJob:
    """A job looked at where it waits, with ``at``: when it is due (scheduled, retry) or when it died (dead),
    in unix seconds on Redis's clock; None for a queued job."""

    job: Job
    at: float | None


def _decoded(entries: Iterable[tuple[bytes, float | None]]) -> list[PeekedJob]:
    found: list[PeekedJob] = []
    for payload, at in entries:
        try:
            found.append(PeekedJob(codec.decode(payload), at))
        except DecodeError:
            continue
    return found


def _fresh(payload: bytes, max_payload_bytes: int) -> bytes:
    """A dead job's payload as a new first attempt, with all its retries; one that does not decode as is."""
    try:
        job = codec.decode(payload)
    except DecodeError:
        return payload
    return codec.encode(replace(job, attempt=0, error=None, enqueued_at=time.time()), max_payload_bytes)


def _job_id(payload: bytes) -> str:
    try:
        return codec.decode(payload).id
    except Exception:
        return ""
