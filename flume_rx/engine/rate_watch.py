"""One process's view of a shared token window's effective rate: it reports the downstream's refusals to the
window and tells telemetry of every change of the rate, whether a refusal lowered it or the probe raised it.

The rate lives in Redis and every process reads it with each grant, so each process reports the changes it
sees: ``throttle.rate_changed`` with ``cause`` "refused" (this process's refusals lowered it) or "probe" (a grant
showed it moved by at least ``step`` tokens per period, or reached ``allowed``, since this process last said).
"""

from __future__ import annotations

import logging
import threading

from flume_rx import operators as fo
from flume_rx.model.telemetry import Telemetry

logger = logging.getLogger("flume_rx.rate_watch")


class RateWatch:
    """Reports refusals to ``window`` and emits ``throttle.penalized`` and ``throttle.rate_changed``.

    Args:
        window: the shared token window of a pipeline.
        key: its name in telemetry (the rate limiter's key).
        telemetry: the process's event bus.
        step: the smallest change of the rate, in tokens per period, reported as a probe (default 1% of
            ``allowed``, at least one token): the probe moves the rate a little with every grant.
    """

    def __init__(
        self, window: fo.TokenWindow, key: str, telemetry: Telemetry, *, step: float | None = None
    ) -> None:
        self.window = window
        self.key = key
        self.telemetry = telemetry
        self.step = max(1.0, window.allowed / 100) if step is None else step
        self._lock = threading.Lock()
        self._reported = float(window.allowed)

    def refused(self, count: int, age_s: float = 0.0) -> None:
        """The downstream refused ``count`` calls, the first of them started ``age_s`` ago (one report per loop
        iteration, not one per job)."""
        if count < 1:
            return
        fo.from_result(lambda: self.window.penalize(count, max(0.0, age_s))).subscribe(
            lambda rate: self._changed(rate, "refused", refused=count),
            lambda exc: logger.warning(
                "could not report %d refusal(s) to rate limiter %s: %s", count, self.key, exc
            ),
        )

    def seen(self) -> float:
        """Check the window's current rate after a grant; returns it."""
        rate = self.window.current_rate()
        with self._lock:
            previous = self._reported
            moved = abs(rate - previous) >= self.step or (rate != previous and rate >= self.window.allowed)
            if moved:
                self._reported = rate
        if moved:
            self.telemetry.emit(
                "throttle.rate_changed", key=self.key, rate=rate, previous=previous, cause="probe"
            )
        return rate

    def _changed(self, rate: float, cause: str, *, refused: int) -> None:
        with self._lock:
            previous, self._reported = self._reported, rate
        self.telemetry.emit("throttle.penalized", key=self.key, rate=rate, refused=refused)
        if rate != previous:
            self.telemetry.emit(
                "throttle.rate_changed", key=self.key, rate=rate, previous=previous, cause=cause
            )
