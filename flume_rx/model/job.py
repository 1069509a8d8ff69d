"""The job model: what a producer enqueues and a worker receives."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from flume_rx.model.errors import ConfigError

UniqueUntil = Literal["finish", "start", "expiry"]
"""How long a unique job holds its key (see ``Flume.enqueue``)."""
UNIQUE_UNTIL: tuple[UniqueUntil, ...] = ("finish", "start", "expiry")
CANCELLED_KEPT_S = 24 * 3600.0
"""How long the record of a cancelled or aborted job says so (``Flume.job``)."""
ABORT_KEPT_S = 600.0
"""How long an abort of a running job waits for it. ``Flume.cancel`` records the abort in Redis for this long,
besides telling the listening workers: a worker that was not listening yet, or whose link was down, still
learns of it, and a job whose worker died is aborted where it is fetched next (orphan recovery returns it after
``orphan_timeout``, by default 15 s)."""
MAX_ATTEMPT = 2**64 - 1
"""The largest attempt count a record can hold (msgpack's largest integer); counting stops there."""


def check_name(name: object, what: str = "queue") -> str:
    """``name`` if it can name a queue, a namespace or a rate limiter: a non-empty string without braces.

    Every Redis key of a queue starts with the hash tag ``{<namespace>:<queue>}``; a brace in a name would
    end the tag early and scatter the queue's keys over cluster slots.

    Raises:
        ConfigError: it cannot; the message names ``what`` and the value.
    """
    if not isinstance(name, str) or not name or "{" in name or "}" in name:
        raise ConfigError(
            f"{what} must be a non-empty string without braces (got {name!r}); pick another name"
        )
    return name


def new_job_id() -> str:
    """A random, URL-safe job id (uuid4 hex); unique enough that no coordination is needed.

    Built from the random bytes directly: ``uuid.uuid4().hex`` makes the same string through an int and a
    UUID object, which cost a producer that wakes to enqueue one job 39 µs of its cold start, against 11 µs
    this way (a call every 5 ms).
    """
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # the RFC 4122 variant
    return raw.hex()


@dataclass(slots=True, frozen=True)
class JobError:
    """Why the last attempt of a job failed, kept with the job through retries and into the dead letters."""

    kind: str
    message: str
    traceback: str = ""


@dataclass(slots=True, frozen=True)
class Step:
    """A workflow step not yet enqueued: its job id is chosen up front, so it can be followed from the start."""

    id: str
    queue: str
    worker: str
    args: tuple[Any, ...] | list[Any]


@dataclass(slots=True, frozen=True)
class Flow:
    """What a job of a workflow hands on when it is settled (see ``Flume.chain`` and ``Flume.group``).

    Attributes:
        chain: the steps after this one; when this job succeeds, the first of them is enqueued with this job's
            result appended to its args, carrying the rest.
        group: the id of the group this job is a member of ("" when none): its ack or dead letter records its
            outcome in the group, and the last member to settle enqueues the group's callback.
        then_queue: the queue of the group's callback (the group's record lives in its slot).
        member: this job's place in the group (its outcome's index in the callback's list).
        then_id: the job id of the group's callback ("" in flows written before it was carried): the record
            its waiters watch, told at once when the group cannot hand its outcomes on.
    """

    chain: tuple[Step, ...] = ()
    group: str = ""
    then_queue: str = ""
    member: int = 0
    then_id: str = ""


@dataclass(slots=True, frozen=True)
class Job:
    """One unit of work.

    Attributes:
        id: the job id returned by enqueue.
        queue: the Redis queue the job was enqueued to.
        worker: the registered name of the worker that runs it (never an import path).
        args: positional arguments for the worker, msgpack-encodable.
        attempt: how many times the job has been started before (0 on the first run).
        created_at: unix seconds when the job was first enqueued.
        enqueued_at: unix seconds when the job was last put on its queue (enqueue, retry or recovery).
        cost: how many rate-limit tokens one run takes (e.g. SES recipients); 1 by default.
        error: the failure of the previous attempt, if any.
        unique_key: the unique key this job holds (``enqueue(unique_key=...)``); None for ordinary jobs.
        unique_until: when the key is given up: ``finish`` (acked or dead), ``start`` (a worker starts it)
            or ``expiry`` (only when ``unique_for`` runs out).
        meta: see below.
    """

    id: str
    queue: str
    worker: str
    args: tuple[Any, ...] | list[Any]
    attempt: int = 0
    created_at: float = field(default_factory=time.time)
    enqueued_at: float = 0.0
    cost: int = 1
    error: JobError | None = None
    unique_key: str | None = None
    unique_until: UniqueUntil = "finish"
    meta: dict[str, Any] | None = None
    """What travels with the job for flume_rx's own features (a trace context under ``"trace"``); None for
    most jobs, which then keep the short record."""

    def next_attempt(self, error: JobError) -> Job:
        """The same job, one attempt further on (counting stops at :data:`MAX_ATTEMPT`), remembering why this
        attempt failed."""
        return replace(self, attempt=min(self.attempt + 1, MAX_ATTEMPT), error=error)


_JOB_FIELDS = (
    "id",
    "queue",
    "worker",
    "args",
    "attempt",
    "created_at",
    "enqueued_at",
    "cost",
    "error",
    "unique_key",
    "unique_until",
    "meta",
)


def _job_maker() -> Callable[..., Job]:
    """A constructor of Job from all its fields in order, for decode (one per fetched job) and enqueue (one
    per job, where a producer waking to enqueue runs it with cold caches).

    Job is frozen, so its generated ``__init__`` sets each field through ``object.__setattr__``, which took
    half of decode's time; setting the slots directly does the same in half the time. Should Job's fields
    ever change, this falls back to the class itself.
    """
    if tuple(f.name for f in fields(Job)) != _JOB_FIELDS:
        return Job
    new = object.__new__
    slots: list[Any] = [getattr(Job, name) for name in _JOB_FIELDS]
    s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11 = (slot.__set__ for slot in slots)

    def make(
        job_id: str,
        queue: str,
        worker: str,
        args: list[Any],
        attempt: int,
        created_at: float,
        enqueued_at: float,
        cost: int,
        error: JobError | None,
        unique_key: str | None,
        unique_until: UniqueUntil,
        meta: dict[str, Any] | None = None,
    ) -> Job:
        job: Job = new(Job)
        s0(job, job_id)
        s1(job, queue)
        s2(job, worker)
        s3(job, args)
        s4(job, attempt)
        s5(job, created_at)
        s6(job, enqueued_at)
        s7(job, cost)
        s8(job, error)
        s9(job, unique_key)
        s10(job, unique_until)
        s11(job, meta)
        return job

    return make


make_job = _job_maker()
"""``Job(...)`` with every field given in order, only faster (see ``_job_maker``)."""


def build_job(queue: str, worker: str, args: Sequence[Any], cost: int = 1) -> Job:
    """A new job after checking its queue, worker name, args and cost (for the client, test mode and schedules).

    Raises:
        ConfigError: one of them is not what enqueue takes.
    """
    check_name(queue)
    if not isinstance(worker, str) or not worker:
        raise ConfigError(f"worker must be the registered worker's name, a non-empty string (got {worker!r})")
    if isinstance(args, str | bytes) or not isinstance(args, Sequence):
        raise ConfigError(f'args must be a list of positional arguments (got {args!r}); e.g. [42, "welcome"]')
    if isinstance(cost, bool) or not isinstance(cost, int) or cost < 0:
        raise ConfigError(f"cost must be an integer >= 0 (got {cost!r})")
    now = time.time()
    return make_job(new_job_id(), queue, worker, list(args), 0, now, now, cost, None, None, "finish")
