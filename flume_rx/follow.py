"""Following one job after enqueue: where it is now (``Flume.job``) and taking it back (``Flume.cancel``).

flume_rx keeps no per-job index on the hot path: a job is its payload, which moves between the queue, the
scheduled and retry sets, a consumer's in-flight list and the dead letters. Looking a job up therefore scans
those places of its queue (in chunks, so Redis is never blocked) and recognises the job by its id; the cost
grows with the queue's length, which suits an operator's or a support tool's question, not a per-job poll.
What leaves no payload behind (a cancelled job) is kept in a small record with a TTL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from flume_rx import codec
from flume_rx.errors import ConfigError, DecodeError
from flume_rx.job import Job, JobError
from flume_rx.store import PeekWhere, SyncStore

JobState = Literal["queued", "scheduled", "running", "retry", "dead", "cancelled", "unknown"]
"""Where a job is: waiting to run, due later, started by a consumer, waiting to retry after a failure, in the
dead letters, cancelled before it ran, or not found (never enqueued, done, or its record expired)."""

CANCELLED_KEPT_S = 24 * 3600.0
"""How long ``Flume.job`` still answers "cancelled" for a cancelled job."""

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
    """

    id: str
    state: JobState
    queue: str | None = None
    job: Job | None = None
    at: float | None = None
    consumer: str | None = None
    consumer_alive: bool | None = None

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
            "args": None if self.job is None else _jsonable(self.job.args),
            "attempt": None if self.job is None else self.job.attempt,
            "created_at": None if self.job is None else self.job.created_at,
            "enqueued_at": None if self.job is None else self.job.enqueued_at,
            "error": None if error is None else f"{error.kind}: {error.message}",
            "traceback": None if error is None else error.traceback or None,
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


def cancel_job(store: SyncStore, job_id: str, queues: Sequence[str], orphan_timeout_s: float) -> JobInfo:
    """Cancel job ``job_id`` if it is waiting (queued, scheduled or waiting to retry): it is taken off in one
    step with a record saying so. Returns what the job is afterwards: ``cancelled``, or where it was found
    when it could not be cancelled (running, dead, unknown)."""
    for _ in range(3):
        info, payload = _locate(store, job_id, queues, orphan_timeout_s)
        if info.state not in ("queued", "scheduled", "retry") or info.queue is None or payload is None:
            return info
        if store.cancel(info.queue, job_id, payload, round(CANCELLED_KEPT_S * 1000)):
            return find_job(store, job_id, [info.queue], orphan_timeout_s)
    # It kept moving under us (fetched, retried): say where it is now.
    return find_job(store, job_id, queues, orphan_timeout_s)


def _find_on(
    store: SyncStore, queue: str, job_id: str, orphan_timeout_s: float
) -> tuple[JobInfo, bytes | None] | None:
    record = store.job_record(queue, job_id)
    if record.get("state") == b"cancelled":
        cancelled_at = int(record.get("at_ms", 0)) / 1000
        return JobInfo(job_id, "cancelled", queue, _decoded(record.get("job", b"")), cancelled_at), None
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


def _matching(payload: bytes, job_id: str) -> Job | None:
    # The id is a string inside the msgpack record: a byte search skips decoding every other job.
    if job_id.encode() not in payload:
        return None
    job = _decoded(payload)
    return job if job is not None and job.id == job_id else None


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _decoded(payload: bytes) -> Job | None:
    try:
        return codec.decode(payload)
    except DecodeError:
        return None
