"""The settle decision: what becomes of a job given how its run ended, as a pure function.

:func:`decide` maps ``(job, outcome, policy)`` to a :class:`Verdict`: the :class:`~flume_rx.store.Settlement`
Redis applies (ack, requeue, retry or dead, releasing the job's unique key when it should) and what the
settler reports. It touches no Redis, no clock and no global state (time and randomness come in as
arguments), so every branch is tested on its own (tests/engine/test_decide.py); the settler
(:mod:`flume_rx.engine.settle`) batches the settlements and emits the telemetry and logs.
"""

from __future__ import annotations

import random
import traceback
from dataclasses import dataclass
from typing import Literal

from flume_rx import operators as fo
from flume_rx.model import codec
from flume_rx.model.config import RetryConfig
from flume_rx.model.errors import JobTimeout, Throttled, UnknownWorker
from flume_rx.model.job import Job, JobError
from flume_rx.store import Settlement

TRACEBACK_TAIL_CHARS = 2000
"""The end of a failure's traceback kept in the job's record (the part that names where it failed)."""


@dataclass(frozen=True, slots=True)
class SettlePolicy:
    """What a pipeline does with failures: how often to retry, how long to wait, how big a record may be."""

    retry: RetryConfig
    max_payload_bytes: int = codec.DEFAULT_MAX_PAYLOAD_BYTES


@dataclass(slots=True)
class Verdict:
    """The decision for one job (read-only once made; not frozen, as :class:`~flume_rx.store.Settlement`,
    because it is made once per job and a frozen dataclass's fields cost ~1,000 instructions each to set).

    Attributes:
        kind: ``succeeded`` (acked), ``throttled`` (back on its queue, no attempt spent), ``retried``
            (into the retry set after ``delay_s``) or ``dead`` (into the dead letters).
        settlement: what Redis applies.
        error: the failure as recorded in the job (None when it succeeded or was throttled).
        failed: the job as recorded for its retry or dead letter: one attempt further, with ``error``.
        delay_s: the retry delay.
        permanent: the failure can never succeed on retry (an unknown worker, ``permanent=True``).
    """

    kind: Literal["succeeded", "throttled", "retried", "dead"]
    settlement: Settlement
    error: JobError | None = None
    failed: Job | None = None
    delay_s: float = 0.0
    permanent: bool = False


def decide(
    job: Job,
    payload: bytes,
    error: BaseException | None,
    policy: SettlePolicy,
    *,
    now_s: float,
    rng: random.Random,
) -> Verdict:
    """The verdict on ``job`` (fetched as ``payload``) whose run ended with ``error`` (None: it succeeded).

    Args:
        now_s: unix seconds now, for the enqueue-to-settle latency of a success.
        rng: the source of the retry delay's jitter.

    Raises:
        EncodeError: the job's record does not fit ``policy.max_payload_bytes`` even with its error cut.
    """
    if error is None:
        return Verdict("succeeded", acked(job, payload, now_s))
    unique = _unique_of(job)
    if isinstance(error, Throttled):
        return Verdict("throttled", Settlement(payload, "requeue", unique=unique))
    if isinstance(error, TimeoutError):
        error = JobTimeout(f"job {job.id} ran longer than the processor timeout")
    job_error = JobError(
        type(error).__name__,
        str(error),
        "".join(traceback.format_exception(error))[-TRACEBACK_TAIL_CHARS:],
    )
    failed = job.next_attempt(job_error)
    record = codec.encode_cut_to_fit(failed, policy.max_payload_bytes)
    permanent = isinstance(error, UnknownWorker) or bool(getattr(error, "permanent", False))
    if permanent or failed.attempt > policy.retry.max_retries:
        settlement = Settlement(payload, "dead", record, unique=unique)
        return Verdict("dead", settlement, job_error, failed, permanent=permanent)
    retry = policy.retry
    delay_s = fo.backoff_delay(job.attempt, retry.backoff_initial_s, retry.backoff_max_s, rng)
    settlement = Settlement(payload, "retry", record, int(delay_s * 1000), unique=unique)
    return Verdict("retried", settlement, job_error, failed, delay_s=delay_s)


def acked(job: Job, payload: bytes, now_s: float) -> Settlement:
    """The settlement of ``job`` (fetched as ``payload``) that succeeded: its ack, and its enqueue-to-done
    latency for the cluster-wide p50/p99 (stats and dashboard; clocks of two hosts)."""
    latency_ms = (now_s - job.enqueued_at) * 1000 if job.enqueued_at else None
    return Settlement(payload, "ack", latency_ms=latency_ms, unique=_unique_of(job))


def _unique_of(job: Job) -> tuple[str, str] | None:
    """The unique key this settlement releases: every settlement of a unique job carries it (a retry keeps
    the key in Redis regardless), except for ``unique_until="expiry"``. For ``"start"`` the key went when
    the job started; this is the safety net if that call was lost."""
    if job.unique_key is None or job.unique_until == "expiry":
        return None
    return (job.unique_key, job.id)
