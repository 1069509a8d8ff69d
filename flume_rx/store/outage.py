"""Riding out a Redis outage: one backoff per loop, one shared log line per outage, and one retry loop
(:func:`through_outage`) for every call that must land however long Redis is away."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import ResponseError

from flume_rx.model.errors import DataError, StoreError

log = logging.getLogger("flume_rx.store")

# Jitter comes from a private generator: drawing from the global one would perturb the random state of
# the application (and of Hypothesis, which checks it) from our background loops.
_jitter = random.Random()

_T = TypeVar("_T")


class _OutageLog:
    """Process-wide: one line when Redis first fails and one when it answers again, whichever loop notices.

    Fetch, settle and the heartbeat thread all meet the same outage; each keeps its own backoff
    (:class:`Outage`) but they share this log, so an outage is one warning, not one per loop or call. A
    failure that lasts is repeated as an error every :attr:`repeat_s`, so a stalled worker (Redis refusing a
    script, a key of the wrong type) does not hide behind one old line.
    """

    repeat_s = 60.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.since: float | None = None
        self._logged_at = 0.0

    def down(self, what: str, error: Exception) -> None:
        now = time.monotonic()
        with self._lock:
            first = self.since is None
            if not first and now - self._logged_at < self.repeat_s:
                return
            if first:
                self.since = now
            self._logged_at = now
            since = self.since or now
        answered = isinstance(error.__cause__, ResponseError)
        kind = "Redis answered with an error" if answered else "Redis unreachable"
        if first:
            log.warning("%s: %s (%s); retrying with backoff", what, kind, error)
        else:
            log.error("%s: %s for %.0f s now (%s); still retrying", what, kind, now - since, error)

    def up(self) -> None:
        with self._lock:
            if self.since is None:
                return
            elapsed, self.since = time.monotonic() - self.since, None
        log.warning("Redis reachable again after %.1f s", elapsed)


OUTAGE_LOG = _OutageLog()


class Outage:
    """The backoff of one loop through a Redis outage; logging goes through the shared :data:`OUTAGE_LOG`."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.since: float | None = None

    def failed(self, error: Exception) -> float:
        """Note a failed call; returns how long to wait before the next (doubling to 5 s, with jitter)."""
        if self.since is None:
            self.since = time.monotonic()
        OUTAGE_LOG.down(self.what, error)
        elapsed = time.monotonic() - self.since
        backoff_s: float = min(5.0, 0.05 * 2 ** min(10, int(elapsed * 2)))
        return backoff_s * _jitter.uniform(0.5, 1.0)

    def ok(self) -> None:
        """Note a call that worked: the end of the outage, if there was one."""
        if self.since is not None:
            self.since = None
            OUTAGE_LOG.up()


async def through_outage(
    what: str, call: Callable[[], Awaitable[_T]], *, stop: asyncio.Event | None = None
) -> _T | None:
    """``await call()`` until it works, waiting with :class:`Outage`'s backoff after each ``StoreError``.

    For calls that must land (settling, the first heartbeat, a rate limiter's grant): an outage must not end
    the loop that makes them. With ``stop``, a wait ends early when it is set, and then None is returned.
    """
    outage = Outage(what)
    while stop is None or not stop.is_set():
        try:
            result = await call()
        except DataError:
            raise  # not an outage: the same call would be refused again
        except StoreError as exc:
            wait_s = outage.failed(exc)
            if stop is None:
                await asyncio.sleep(wait_s)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait_s)
            continue
        outage.ok()
        return result
    return None
