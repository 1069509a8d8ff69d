"""Telemetry: every step of a pipeline emits a structured event.

Subscribe with the reactivex Observable ``telemetry.events`` (pipe it like any stream) or with plain handlers
via :meth:`Telemetry.attach`. Emitting costs one attribute check when nobody listens.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from reactivex import Observable
from reactivex.subject import Subject

if TYPE_CHECKING:
    from flume_rx.model.job import Job

logger = logging.getLogger("flume_rx.telemetry")

EVENT_NAMES = (
    "job.enqueued",  # queue, count
    "job.fetched",  # queue, count
    "job.started",  # queue, worker, job_id, attempt, wait_ms (enqueue to start)
    "job.succeeded",  # queue, worker, job_id, attempt, duration_ms
    "job.failed",  # queue, worker, job_id, attempt, duration_ms, error
    "job.retried",  # queue, worker, job_id, attempt, delay_ms
    "job.dead",  # queue, worker, job_id, attempt, reason
    "job.throttled",  # queue, worker, job_id (downstream said "too fast": back to wait, no retry spent)
    "batch.flushed",  # queue, size, trigger ("count" | "time" | "complete")
    "throttle.granted",  # key, tokens, wait_ms, rate
    "throttle.waited",  # key, wait_ms, rate
    "throttle.penalized",  # key, rate, refused (the downstream refused calls; an adaptive rate is re-aimed)
    "throttle.rate_changed",  # key, rate, previous, cause ("refused" | "refused_elsewhere" | "probe")
    "throttle.lapsed",  # key, tokens (granted, expired unused), rate
    "throttle.late",  # key, tokens, rate (a released job would have begun after its hold: back for a new token)
    "backpressure.engaged",  # queue, in_flight
    "backpressure.released",  # queue, held_ms
    "consumer.joined",  # consumer, queues
    "consumer.heartbeat",  # consumer
    "consumer.recovered",  # queue, consumer (the dead one), jobs
    "consumer.left",  # consumer, returned
)


@dataclass(frozen=True, slots=True)
class Event:
    """One telemetry event: a dotted name, the unix time it happened, and its fields."""

    name: str
    time: float
    fields: Mapping[str, Any]


Handler = Callable[[Event], None]


class Telemetry:
    """The event bus of one process."""

    def __init__(self) -> None:
        self._subject: Subject[Event] = Subject()
        self._handlers: dict[str, list[Handler]] = {}
        self._lock = threading.Lock()

    @property
    def events(self) -> Observable[Event]:
        """Every event, as a hot reactivex Observable."""
        return self._subject

    @property
    def active(self) -> bool:
        return bool(self._handlers) or bool(self._subject.observers)

    def attach(self, names: Iterable[str] | str, handler: Handler) -> Callable[[], None]:
        """Call ``handler(event)`` for each event whose name is in ``names`` (``"*"`` for all).

        Returns a function that detaches the handler.
        """
        wanted = [names] if isinstance(names, str) else list(names)
        for name in wanted:
            if name != "*" and name not in EVENT_NAMES:
                raise ValueError(f"unknown telemetry event {name!r}; known: {', '.join(EVENT_NAMES)}")
        with self._lock:
            for name in wanted:
                self._handlers.setdefault(name, []).append(handler)

        def detach() -> None:
            with self._lock:
                for name in wanted:
                    handlers = self._handlers.get(name, [])
                    if handler in handlers:
                        handlers.remove(handler)
                    if not handlers:
                        self._handlers.pop(name, None)

        return detach

    def emit_job(self, name: str, job: Job, **fields: Any) -> None:
        """Emit a ``job.*`` event: the job's ``queue``, ``worker`` and ``job_id``, then ``fields``. The one
        place those three are spelled, for the processor's ``job.started`` and the settler's outcomes."""
        self.emit(name, queue=job.queue, worker=job.worker, job_id=job.id, **fields)

    def emit(self, name: str, **fields: Any) -> None:
        if not self._handlers and not self._subject.observers:
            return
        event = Event(name, time.time(), fields)
        for handler in (*self._handlers.get(name, ()), *self._handlers.get("*", ())):
            try:
                handler(event)
            except Exception:
                # A broken handler must never break the pipeline that reports to it.
                logger.exception("telemetry handler %r failed on %s", handler, name)
        if self._subject.observers:
            self._subject.on_next(event)
