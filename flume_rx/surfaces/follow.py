"""Following one job after enqueue: where it is now (``Flume.job``) and taking it back (``Flume.cancel``).

flume_rx keeps no per-job index on the hot path: a job is its payload, which moves between the queue, the
scheduled and retry sets, a consumer's in-flight list and the dead letters. Looking a job up therefore scans
those places of its queue (in chunks, so Redis is never blocked) and recognises the job by its id; the cost
grows with the queue's length, which suits an operator's or a support tool's question, not a per-job poll.
What leaves no payload behind (a cancelled job) is kept in a small record with a TTL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from flume_rx.engine.workflows import cancelled_handoffs, flow_of, job_of, step_list, steps_stopped
from flume_rx.model import codec
from flume_rx.model.errors import (
    ConfigError,
    DecodeError,
    JobCancelled,
    JobFailed,
    ResultTimeout,
    ResultUnavailable,
)
from flume_rx.model.job import ABORT_KEPT_S, CANCELLED_KEPT_S, Flow, Job, JobError, Step
from flume_rx.store import Handoff, PeekWhere, RedisStore, SyncStore

JobState = Literal[
    "queued", "scheduled", "running", "retry", "dead", "done", "cancelled", "waiting", "unknown"
]
"""Where a job is: waiting to run, due later, started by a consumer, waiting to retry after a failure, in the
dead letters, done (only for workers that keep results), cancelled before it ran (or a chain step whose
chain stopped before it), a workflow job not yet enqueued (a chain step whose earlier step has not succeeded
yet, a group's callback whose members have not all finished; ``JobInfo.after`` says which), or not found
(never enqueued, done by a worker that keeps no results, or its record expired)."""

RESULT_RECHECK_S = 5.0
"""How often a result wait reads the record again even without a message (a message lost with a reconnect)."""


_SCAN_CHUNK = 1000
_WAITING: tuple[PeekWhere, ...] = ("queued", "scheduled", "retry", "dead")


@dataclass(frozen=True, slots=True)
class JobInfo:
    """What is known of one job now.

    Attributes:
        id: the job id asked about.
        state: see :data:`JobState`.
        queue: the queue it was found on (None when unknown).
        job: its fields as stored now (attempt, args, the last error...); None when unknown.
        at: unix seconds on Redis's clock: when it is due (scheduled, retry), when it died (dead), when it
            was cancelled (cancelled); None otherwise.
        consumer: the consumer running it (running), e.g. ``host:pid:...``.
        consumer_alive: whether that consumer still beats (a dead one's jobs come back at orphan recovery).
        result: the worker's return value (done, for workers that keep results).
        progress: the last fraction its worker reported through ``current_job().progress``, and
            ``progress_message`` what it said.
        after: what a workflow job comes after: the job id of the chain step before it, or the id of the
            group whose callback it is (None for other jobs and a chain's first step). A ``waiting`` job
            waits on it; a step cancelled because its chain stopped has a ``ChainStopped`` error naming the
            step where it stopped.
    """

    id: str
    state: JobState
    queue: str | None = None
    job: Job | None = None
    at: float | None = None
    consumer: str | None = None
    consumer_alive: bool | None = None
    result: Any = None
    progress: float | None = None
    progress_message: str | None = None
    after: str | None = None

    @property
    def error(self) -> JobError | None:
        """Why its last attempt failed (retry, dead), if it failed."""
        return None if self.job is None else self.job.error

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly fields (for ``flume-rx job --json`` and the dashboard)."""
        error = self.error
        return {
            "id": self.id,
            "state": self.state,
            "queue": self.queue,
            "at": self.at,
            "consumer": self.consumer,
            "consumer_alive": self.consumer_alive,
            "worker": None if self.job is None else self.job.worker,
            "args": None if self.job is None else jsonable(self.job.args),
            "attempt": None if self.job is None else self.job.attempt,
            "created_at": None if self.job is None else self.job.created_at,
            "enqueued_at": None if self.job is None else self.job.enqueued_at,
            "error": None if error is None else f"{error.kind}: {error.message}",
            "traceback": None if error is None else error.traceback or None,
            "result": jsonable(self.result),
            "progress": self.progress,
            "progress_message": self.progress_message,
            "after": self.after,
        }


def find_job(store: SyncStore, job_id: str, queues: Sequence[str], orphan_timeout_s: float) -> JobInfo:
    """Where job ``job_id`` is on any of ``queues``.

    A job can move while it is looked for (a worker fetches it between two reads); a job not seen in one
    pass is looked for once more before it is called unknown.

    Raises:
        ConfigError: ``job_id`` is not a job id.
    """
    return _locate(store, job_id, queues, orphan_timeout_s)[0]


def _locate(
    store: SyncStore, job_id: str, queues: Sequence[str], orphan_timeout_s: float
) -> tuple[JobInfo, bytes | None]:
    """The job's info and the payload it was found as (None when it leaves none: cancelled, unknown)."""
    if not isinstance(job_id, str) or not job_id or len(job_id) > 200:
        raise ConfigError(f"job id must be the id enqueue returned, a non-empty string (got {job_id!r})")
    for _ in range(2):
        for queue in queues:
            found = _find_on(store, queue, job_id, orphan_timeout_s)
            if found is not None:
                return found
    return JobInfo(job_id, "unknown"), None


def cancel_job(
    store: SyncStore,
    job_id: str,
    queues: Sequence[str],
    orphan_timeout_s: float,
    max_payload_bytes: int = codec.DEFAULT_MAX_PAYLOAD_BYTES,
) -> JobInfo:
    """Cancel job ``job_id``: a waiting one (queued, scheduled or waiting to retry) is taken off in one step
    with a record saying so; a running one is aborted by its worker, which records it as cancelled once it
    stops; a workflow job to come (``waiting``) is recorded as cancelled and not enqueued when its turn
    comes, as Celery's revoke does with a chain's later task. Returns what the job is afterwards:
    ``cancelled``, ``running`` (abort asked), or where it was found when there was nothing to cancel (dead,
    unknown)."""
    keep_ms = round(CANCELLED_KEPT_S * 1000)
    for _ in range(3):
        info, payload = _locate(store, job_id, queues, orphan_timeout_s)
        if info.state == "waiting" and info.queue is not None:
            record, handoffs = _to_come_cancelled(store, info.queue, job_id, keep_ms, max_payload_bytes)
            if store.cancel_to_come(info.queue, job_id, record, keep_ms, handoffs):
                return find_job(store, job_id, [info.queue], orphan_timeout_s)
            continue  # enqueued meanwhile: look again
        if info.state == "running":
            # Its worker aborts it (an async job's task is cancelled; a sync job sees current_job().aborted)
            # and records it as cancelled when it stops. Recorded, not only told: a worker not listening
            # yet finds it when it subscribes, and a job of a dead worker is aborted where it runs next.
            store.abort(job_id, round(ABORT_KEPT_S * 1000))
            return info
        if info.state not in ("queued", "scheduled", "retry") or info.queue is None or payload is None:
            return info
        # A workflow job hands on in the same step: its group still completes, its chain's later steps stop.
        handoffs = [] if info.job is None else _cancelled_handoffs(info.job, keep_ms, max_payload_bytes)
        if store.cancel(info.queue, job_id, payload, keep_ms, handoffs):
            return find_job(store, job_id, [info.queue], orphan_timeout_s)
    # It kept moving under us (fetched, retried): say where it is now.
    return find_job(store, job_id, queues, orphan_timeout_s)


def _to_come_cancelled(
    store: SyncStore, queue: str, job_id: str, keep_ms: int, max_payload_bytes: int
) -> tuple[bytes, list[Handoff]]:
    """The job record of a workflow job to come that is cancelled, and its hand-offs: a chain step's later
    steps are stopped with it."""
    record = store.job_record(queue, job_id)
    steps = step_list(record.get("chain", b""))
    at = int(record.get("step", b"0"))
    if steps and at < len(steps) and steps[at][0] == job_id:
        worker = steps[at][2]
        me = Step(job_id, queue, worker, [])
        later = [Step(i, q, w, []) for i, q, w in steps[at + 1 :]]
        why = "was cancelled before its turn came"
        handoffs = steps_stopped(later, me, why, keep_ms, max_payload_bytes)
    else:
        worker, handoffs = record.get("worker", b"").decode(), []
    return codec.encode(job_of(Step(job_id, queue, worker, []), None), max_payload_bytes), handoffs


def _cancelled_handoffs(job: Job, keep_ms: int, max_payload_bytes: int) -> list[Handoff]:
    try:
        return cancelled_handoffs(job, False, keep_ms, max_payload_bytes)
    except DecodeError:  # a malformed flow hands nothing on; the job is still taken off
        return []


def _find_on(
    store: SyncStore, queue: str, job_id: str, orphan_timeout_s: float, depth: int = 0
) -> tuple[JobInfo, bytes | None] | None:
    record = store.job_record(queue, job_id)
    recorded = _from_record(job_id, queue, record)
    if recorded is not None:
        return replace(recorded, after=_after(record)), None
    found = _find_payload(store, queue, job_id, orphan_timeout_s)
    if found is None and "chained" in record:
        return _to_come(store, queue, job_id, record, orphan_timeout_s, depth)
    if found is None or "progress" not in record:
        return found
    info, payload = found
    progress = float(record["progress"])
    message = record.get("progress_message", b"").decode("utf-8", errors="replace")
    return replace(info, progress=progress, progress_message=message), payload


def _find_payload(
    store: SyncStore, queue: str, job_id: str, orphan_timeout_s: float
) -> tuple[JobInfo, bytes | None] | None:
    for where in _WAITING:
        start = 0
        while chunk := store.peek(queue, where, _SCAN_CHUNK, start):
            for payload, at in chunk:
                job = _matching(payload, job_id)
                if job is not None:
                    return JobInfo(job_id, where, queue, job, at), payload
            start += len(chunk)
    for consumer in store.consumers([queue], orphan_timeout_s):
        for payload in store.inflight(queue, consumer["consumer"]):
            job = _matching(payload, job_id)
            if job is not None:
                info = JobInfo(job_id, "running", queue, job, None, consumer["consumer"], consumer["alive"])
                return info, payload
    return None


_MAX_CHAIN_LOOKUPS = 100
"""Earlier steps looked at, at most, to say whether a chain step is still to come."""


def _to_come(
    store: SyncStore, queue: str, job_id: str, record: dict[str, bytes], orphan_timeout_s: float, depth: int
) -> tuple[JobInfo, bytes | None] | None:
    """A workflow job found nowhere, whose record says it was to come: ``waiting`` while what it comes after
    is unfinished, ``cancelled`` when that was cancelled (its chain will not go on); None when it was
    enqueued since (it has moved on, or finished with nothing kept)."""
    after = _after(record)
    waiting = JobInfo(job_id, "waiting", queue, after=after), None
    if "group" in record:
        return waiting if store.group_count(queue, record["group"].decode()) is not None else None
    before_queue = record.get("after_queue")
    if after is None or before_queue is None:
        return None
    if depth >= _MAX_CHAIN_LOOKUPS:
        return waiting
    before = _find_on(store, before_queue.decode(), after, orphan_timeout_s, depth + 1)
    state = "unknown" if before is None else before[0].state
    if state in ("queued", "scheduled", "running", "retry", "waiting"):
        return waiting
    if state == "cancelled":
        return JobInfo(job_id, "cancelled", queue, after=after), None
    return None


def _after(record: dict[str, bytes]) -> str | None:
    after = record.get("after") or record.get("group")
    return None if after is None else after.decode()


def _from_record(job_id: str, queue: str, record: dict[str, bytes]) -> JobInfo | None:
    """The state a job's record holds: done (with its result), dead or cancelled; None without a record."""
    state = record.get("state")
    at = int(record.get("at_ms", 0)) / 1000
    if state == b"done":
        return JobInfo(
            job_id, "done", queue, None, at, result=codec.decode_result(record.get("result", b"\xc0"))
        )
    if state in (b"dead", b"cancelled"):
        return JobInfo(
            job_id, "dead" if state == b"dead" else "cancelled", queue, _decoded(record["job"]), at
        )
    return None


WORKFLOW_SHOWN = 50
"""Jobs of one workflow looked up at most by :func:`find_workflow` (each lookup scans its queue)."""


@dataclass(frozen=True, slots=True)
class WorkflowJob:
    """One job of a workflow as :class:`WorkflowInfo` shows it: where it goes, and what is known of it now
    (None past :data:`WORKFLOW_SHOWN`, not looked up)."""

    id: str
    queue: str
    worker: str
    info: JobInfo | None

    def as_dict(self) -> dict[str, Any]:
        info = self.info
        error = None if info is None else info.error
        return {
            "id": self.id,
            "queue": self.queue,
            "worker": self.worker,
            "state": None if info is None else info.state,
            "after": None if info is None else info.after,
            "error": None if error is None else f"{error.kind}: {error.message}",
            "progress": None if info is None else info.progress,
        }


@dataclass(frozen=True, slots=True)
class WorkflowInfo:
    """The workflow a job is part of (``Flume.workflow``, ``flume-rx job``, the dashboard's lookup).

    Attributes:
        kind: ``chain`` or ``group``.
        id: a chain's first step's job id, or the group's id.
        jobs: a chain's steps in order, or a group's members in order.
        callback: a group's callback.
        settled: how many of a group's members have finished for good; None once its callback is enqueued
            (or for a chain).
    """

    kind: Literal["chain", "group"]
    id: str
    jobs: tuple[WorkflowJob, ...]
    callback: WorkflowJob | None = None
    settled: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly fields."""
        return {
            "kind": self.kind,
            "id": self.id,
            "jobs": [job.as_dict() for job in self.jobs],
            "callback": None if self.callback is None else self.callback.as_dict(),
            "settled": self.settled,
        }


def find_workflow(
    store: SyncStore, job_id: str, queues: Sequence[str], orphan_timeout_s: float
) -> WorkflowInfo | None:
    """The chain or group job ``job_id`` belongs to, with the state of each of its jobs; None for a job of
    no workflow (or one whose workflow's records expired)."""
    return workflow_of(store, find_job(store, job_id, queues, orphan_timeout_s), orphan_timeout_s)


def workflow_of(store: SyncStore, info: JobInfo, orphan_timeout_s: float) -> WorkflowInfo | None:
    """:func:`find_workflow` for a job already looked up."""
    if info.queue is None:
        return None
    record = store.job_record(info.queue, info.id)
    known = {info.id: info}

    def shown(items: list[tuple[str, str, str]]) -> tuple[WorkflowJob, ...]:
        return tuple(
            WorkflowJob(
                job_id,
                queue,
                worker,
                known.get(job_id) or find_job(store, job_id, [queue], orphan_timeout_s)
                if n < WORKFLOW_SHOWN
                else None,
            )
            for n, (job_id, queue, worker) in enumerate(items)
        )

    steps = step_list(record.get("chain", b""))
    if steps:
        return WorkflowInfo("chain", steps[0][0], shown(steps))
    if "group" in record and "members" in record:
        group, then = record["group"].decode(), (info.id, info.queue)
    else:
        flow = _flow(info.job)
        if flow is None or not flow.group or not flow.then_id:
            return None
        group, then = flow.group, (flow.then_id, flow.then_queue)
        record = store.job_record(flow.then_queue, flow.then_id)
    members = step_list(record.get("members", b""))
    count = store.group_count(then[1], group)
    callback = known.get(then[0]) or find_job(store, then[0], [then[1]], orphan_timeout_s)
    worker = record.get("worker", b"").decode()
    return WorkflowInfo(
        "group",
        group,
        shown(members),
        WorkflowJob(then[0], then[1], worker, callback),
        None if count is None else count[1],
    )


def _flow(job: Job | None) -> Flow | None:
    try:
        return None if job is None else flow_of(job)
    except DecodeError:
        return None


def result_of(info: JobInfo) -> Any:
    """The result a finished job's info holds.

    Raises:
        JobFailed: it went to the dead letters (with the error it died of).
        JobCancelled: it was cancelled.
    """
    if info.state == "dead":
        error = info.error or JobError("unknown", "no error was recorded")
        raise JobFailed(info.id, error.kind, error.message, error.traceback)
    if info.state == "cancelled":
        raise JobCancelled(f"job {info.id} was cancelled before it ran, so it has no result")
    return info.result


def wait_result(
    store: SyncStore, job_id: str, queue: str, timeout_s: float | None, orphan_timeout_s: float
) -> Any:
    """Block until job ``job_id`` of ``queue`` is done or dead, woken by the message its settle publishes.

    Raises:
        ResultTimeout, ResultUnavailable, JobFailed, JobCancelled: see ``Flume.result``.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    pubsub = store.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    try:
        # Subscribed before the first read: an outcome settled in between is either read or announced.
        pubsub.subscribe(store.keys.of(queue).record(job_id))
        looked = False
        while True:
            info = _from_record(job_id, queue, store.job_record(queue, job_id))
            if info is not None:
                return result_of(info)
            if not looked:
                looked = True
                _check_waitable(find_job(store, job_id, [queue], orphan_timeout_s), store, queue)
            wait_s = _remaining(deadline, job_id)
            pubsub.get_message(timeout=min(wait_s, RESULT_RECHECK_S))
    finally:
        pubsub.close()


async def await_result(
    store: RedisStore,
    sync: SyncStore,
    job_id: str,
    queue: str,
    timeout_s: float | None,
    orphan_timeout_s: float,
) -> Any:
    """:func:`wait_result` for asyncio: awaits the message without blocking the loop."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    if not hasattr(store.client, "pubsub"):  # the asyncio cluster client has none: wait in its thread
        return await asyncio.to_thread(wait_result, sync, job_id, queue, timeout_s, orphan_timeout_s)
    pubsub = store.client.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(store.keys.of(queue).record(job_id))
        looked = False
        while True:
            info = _from_record(job_id, queue, await store.job_record(queue, job_id))
            if info is not None:
                return result_of(info)
            if not looked:
                looked = True
                found = await asyncio.to_thread(find_job, sync, job_id, [queue], orphan_timeout_s)
                _check_waitable(found, sync, queue)
            wait_s = _remaining(deadline, job_id)
            await pubsub.get_message(ignore_subscribe_messages=True, timeout=min(wait_s, RESULT_RECHECK_S))
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]


def _check_waitable(found: JobInfo, store: SyncStore, queue: str) -> None:
    # A workflow job to come reads "waiting", so a record alone (a chain's) no longer means a result comes.
    if found.state == "unknown" and "state" not in store.job_record(queue, found.id):
        raise ResultUnavailable(
            f"job {found.id} is unknown on {queue!r}: it was never enqueued there, or it finished under a worker "
            "that keeps no results; register the worker with @worker(..., result_ttl=SECONDS)"
        )


def _remaining(deadline: float | None, job_id: str) -> float:
    if deadline is None:
        return RESULT_RECHECK_S
    left = deadline - time.monotonic()
    if left <= 0:
        raise ResultTimeout(
            f"job {job_id} did not finish within the timeout; wait longer or look with flume.job"
        )
    return left


def _matching(payload: bytes, job_id: str) -> Job | None:
    # The id is a string inside the msgpack record: a byte search skips decoding every other job.
    if job_id.encode() not in payload:
        return None
    job = _decoded(payload)
    return job if job is not None and job.id == job_id else None


def jsonable(value: Any) -> Any:
    """``value`` as JSON can carry it: bytes as hex, tuples as lists, keys as strings (job args and results)."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


def _decoded(payload: bytes) -> Job | None:
    try:
        return codec.decode(payload)
    except DecodeError:
        return None
