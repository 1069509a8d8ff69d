"""The enqueue API, written once for :class:`~flume_rx.Flume` and its test stand-in
:class:`~flume_rx.testing.FlumeTest`.

:class:`Producer` checks every argument and builds the jobs; a subclass only says where checked jobs go
(:meth:`Producer._put`): Redis for ``Flume``, a list (or an inline run) for ``FlumeTest``. So the two cannot
drift apart in what they accept, what they refuse, or the errors they raise.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from flume_rx.integrations.otel import enqueue_meta
from flume_rx.model.errors import ConfigError
from flume_rx.model.job import UNIQUE_UNTIL, Job, UniqueUntil, build_job

DEFAULT_UNIQUE_FOR_S = 3600.0

When = Literal["now", "at", "in"]
"""``now``; ``at`` a unix time; ``in`` seconds from now (on Redis's clock for ``Flume``)."""


@dataclass(frozen=True, slots=True)
class Uniqueness:
    """The unique key a job is enqueued with, checked: how long it holds it and until when."""

    key: str
    for_s: float
    until: UniqueUntil


class Producer(ABC):
    """Enqueueing: ``enqueue``, ``enqueue_in``, ``enqueue_at``, ``bulk_enqueue``."""

    max_payload_bytes: int

    def enqueue(
        self,
        queue: str,
        worker: str,
        args: Sequence[Any] = (),
        *,
        cost: int = 1,
        unique_key: str | None = None,
        unique_for: float = DEFAULT_UNIQUE_FOR_S,
        unique_until: UniqueUntil = "finish",
    ) -> str:
        """Put one job on ``queue`` for the worker registered as ``worker``; returns its id.

        Args:
            unique_key: while a job enqueued with this key on this queue holds it, enqueue adds nothing and
                returns that job's id; decided atomically in Redis.
            unique_for: the most seconds a unique key is held, from the job's due time (a safety net for a
                job that is never settled, and the whole hold with ``unique_until="expiry"``).
            unique_until: how long the job holds its key. ``"finish"`` (default): while it is queued,
                scheduled, running or waiting to retry, until it is acked or dead. ``"start"``: while it is
                queued or scheduled, until a worker starts it (a job enqueued while it runs will run again
                after it). ``"expiry"``: for the whole ``unique_for``, however soon it finishes (at most one
                such job per key per ``unique_for``).

        Raises:
            EncodeError: ``args`` cannot be encoded as msgpack or the job is too large; nothing is written.
            ConfigError: a unique argument is not one enqueue takes.
        """
        job = self._build(queue, worker, args, cost)
        return self._put([job], "now", [0.0], [uniqueness_of(unique_key, unique_for, unique_until)])[0]

    def bulk_enqueue(
        self,
        queue: str,
        jobs: Iterable[tuple[str, Sequence[Any]]],
        *,
        unique_keys: Sequence[str | None] | None = None,
        unique_for: float = DEFAULT_UNIQUE_FOR_S,
        unique_until: UniqueUntil = "finish",
    ) -> list[str]:
        """Put many ``(worker, args)`` jobs on ``queue`` at once; returns their ids in order.

        Every job is checked before any is written. With ``Flume`` the call is all or nothing: one script
        call in one MULTI/EXEC, so Redis writes every job or none (a Redis at ``maxmemory`` refuses the call
        before it writes anything, however many jobs it carries). When it raises ``StoreError`` because Redis
        refused, nothing was written and the call can be retried as a whole. Only a reply lost on the way back
        (the connection dropped after Redis ran the call) leaves the outcome unknown, as for :meth:`enqueue`.
        A very large call holds Redis for its whole run (0.1 to 0.4 s per 100,000 small jobs, measured on a
        shared 2-core machine); split it where other clients must not wait that long.

        Args:
            unique_keys: one per job (None for a job without one), as ``unique_key`` of :meth:`enqueue`: a
                job whose key is held (by an earlier job, or by an earlier job of this call) is not added,
                and the holder's id stands in its place.
            unique_for: as for :meth:`enqueue`, for every unique job of the call.
            unique_until: as for :meth:`enqueue`, for every unique job of the call.

        Raises:
            EncodeError: a job's args cannot be encoded or a job is too large; nothing is written.
            StoreError: Redis is unreachable or refused the call (full, for one); nothing is written.
        """
        built = [self._build(queue, worker, args, 1) for worker, args in jobs]
        if unique_keys is None:
            unique: list[Uniqueness | None] = [None] * len(built)
        else:
            check_unique(unique_for, unique_until)
            keys = check_unique_keys(unique_keys, len(built))
            unique = [uniqueness_of(key, unique_for, unique_until) for key in keys]
        return self._put(built, "now", [0.0] * len(built), unique)

    def enqueue_in(
        self,
        queue: str,
        seconds: float,
        worker: str,
        args: Sequence[Any] = (),
        *,
        cost: int = 1,
        unique_key: str | None = None,
        unique_for: float = DEFAULT_UNIQUE_FOR_S,
        unique_until: UniqueUntil = "finish",
    ) -> str:
        """Run the job ``seconds`` from now, counted on Redis's clock, so a producer's skewed clock cannot
        make it early or late; ``unique_key`` and the rest as for :meth:`enqueue`."""
        delay_s = check_time(seconds, "seconds", "5.0 (seconds from now)")
        job = self._build(queue, worker, args, cost)
        return self._put([job], "in", [delay_s], [uniqueness_of(unique_key, unique_for, unique_until)])[0]

    def enqueue_at(
        self,
        queue: str,
        unix_ts: float,
        worker: str,
        args: Sequence[Any] = (),
        *,
        cost: int = 1,
        unique_key: str | None = None,
        unique_for: float = DEFAULT_UNIQUE_FOR_S,
        unique_until: UniqueUntil = "finish",
    ) -> str:
        """Run the job at ``unix_ts`` (float seconds since the epoch); ``unique_key`` and the rest as for
        :meth:`enqueue`."""
        due = check_time(unix_ts, "unix_ts", "time.time() + 60")
        job = self._build(queue, worker, args, cost)
        return self._put([job], "at", [due], [uniqueness_of(unique_key, unique_for, unique_until)])[0]

    def _build(self, queue: str, worker: str, args: Sequence[Any], cost: int) -> Job:
        """A checked job (a subclass may also round-trip it through the codec)."""
        job = build_job(queue, worker, args, cost)
        meta = enqueue_meta()
        return job if meta is None else replace(job, meta=meta)

    @abstractmethod
    def _put(
        self, jobs: Sequence[Job], when: When, dues: Sequence[float], unique: Sequence[Uniqueness | None]
    ) -> list[str]:
        """Add checked jobs of one queue, each due per ``when`` and ``dues``, unique or not; returns the id of
        each job, or of the job already holding its unique key."""


def uniqueness_of(key: str | None, for_s: float, until: UniqueUntil) -> Uniqueness | None:
    """The checked uniqueness of a job enqueued with ``key`` (None: an ordinary job).

    Raises:
        ConfigError: the key, ``unique_for`` or ``unique_until`` is not one enqueue takes.
    """
    if key is None:
        return None
    check_unique(for_s, until)
    check_unique_key(key)
    return Uniqueness(key, float(for_s), until)


def check_time(value: float, name: str, example: str) -> float:
    """Check a due time or delay of ``enqueue_at``/``enqueue_in``: a finite number; returns it as a float.

    Raises:
        ConfigError: naming the argument, for a non-number, NaN or an infinity (no moment to run the job at).
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number of seconds (got {value!r}); e.g. {example}")
    return float(value)


def check_unique_key(unique_key: str) -> None:
    """Check one ``unique_key``.

    Raises:
        ConfigError: the key is empty or not a string.
    """
    if not isinstance(unique_key, str) or not unique_key:
        raise ConfigError(f'unique_key must be a non-empty string (got {unique_key!r}); e.g. "welcome:42"')


def check_unique_keys(unique_keys: Sequence[str | None], jobs: int) -> Sequence[str | None]:
    """Check ``bulk_enqueue``'s ``unique_keys``: one key (or None) per job; returns them.

    Raises:
        ConfigError: not a list of ``jobs`` entries. (Each key is checked as it is used.)
    """
    if isinstance(unique_keys, str) or len(unique_keys) != jobs:
        raise ConfigError(
            f"unique_keys must be a list with one key (or None) per job: got {unique_keys!r} for {jobs} jobs"
        )
    return unique_keys


def check_unique(unique_for: float, unique_until: str) -> None:
    """Check ``enqueue``'s ``unique_for`` and ``unique_until``.

    Raises:
        ConfigError: ``unique_for`` is not a positive number of seconds, or ``unique_until`` is unknown.
    """
    if (
        isinstance(unique_for, bool)
        or not isinstance(unique_for, int | float)
        or not 0 < unique_for < math.inf
    ):
        raise ConfigError(f"unique_for must be a positive number of seconds (got {unique_for!r}); e.g. 3600")
    if unique_until not in UNIQUE_UNTIL:
        raise ConfigError(
            f"unique_until must be one of {', '.join(repr(u) for u in UNIQUE_UNTIL)} (got {unique_until!r})"
        )
