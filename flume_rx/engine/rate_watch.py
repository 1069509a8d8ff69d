"""One process's view of a shared token window's effective rate: it reports the downstream's refusals to the
window and tells telemetry of every change of the rate, whether a refusal lowered it or the probe raised it.

The rate lives in Redis and every process reads it with each grant, so each process reports the changes it
sees: ``throttle.rate_changed`` with ``cause`` "refused" (this process's refusals lowered it),
"refused_elsewhere" (a grant showed it lower by at least ``step`` tokens per period after another process's
refusals cut it) or "probe" (a grant showed it moved by at least ``step``, or reached ``allowed``, since this
process last said, with no such cut in between, or higher despite one).
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
        self._cuts_elsewhere = _cuts_elsewhere(window)  # as of the last rate this process told

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
        cuts_elsewhere = _cuts_elsewhere(self.window)
        cut = False
        with self._lock:
            previous = self._reported
            moved = abs(rate - previous) >= self.step or (rate != previous and rate >= self.window.allowed)
            if moved:
                self._reported = rate
                # Without a cut the rate falls only where the probe's headroom caps it: a fall is another
                # process's doing only when one of its cuts came in between.
                cut = rate < previous and cuts_elsewhere != self._cuts_elsewhere
                self._cuts_elsewhere = cuts_elsewhere
        if moved:
            self.telemetry.emit(
                "throttle.rate_changed",
                key=self.key,
                rate=rate,
                previous=previous,
                cause="refused_elsewhere" if cut else "probe",
            )
        return rate

    def _changed(self, rate: float, cause: str, *, refused: int) -> None:
        cuts_elsewhere = _cuts_elsewhere(self.window)
        with self._lock:
            previous, self._reported = self._reported, rate
            self._cuts_elsewhere = cuts_elsewhere  # the cut this reply gave is aimed from every cut before it
        self.telemetry.emit("throttle.penalized", key=self.key, rate=rate, refused=refused)
        if rate != previous:
            self.telemetry.emit(
                "throttle.rate_changed", key=self.key, rate=rate, previous=previous, cause=cause
            )


def _cuts_elsewhere(window: fo.TokenWindow) -> int:
    """How many cuts of ``window``'s rate by other processes' refusals it has learnt of; 0 for a window no
    other process shares (an in-process one)."""
    return int(getattr(window, "cuts_elsewhere", 0))
