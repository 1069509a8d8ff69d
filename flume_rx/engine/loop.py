"""The event loop of a worker process: one that wakes when its next timer is due, not up to 1 ms later.

asyncio's loop sleeps in ``epoll_wait``, whose timeout is whole milliseconds: Python rounds the time to the
next timer up, so a timer due 0.3 ms after the loop went to sleep fires 1 ms after, unless some socket wakes
the loop first. A pipeline's sockets do (fetch and settle replies come at their own times), so each one moves
the millisecond grid, and an async job awaiting 1 ms took 1.59 to 1.93 ms (median) in a drain instead of the
~1.06 ms the same await takes in a bare loop whose only events are its timers; with this selector, 1.26 to
1.44 ms at the same load. Ten stages had run ~6,000 such jobs a second where ten stages allow ~9,400
(``benchmarks/async_ceiling.py``).

:class:`TimelySelector` waits on the epoll descriptor itself with ``select()``, whose timeout has microsecond
resolution (the epoll descriptor turns readable when any socket it watches does), then collects the events
with a non-blocking ``epoll_wait``. Only waits shorter than :data:`PRECISE_BELOW_S` take that path (one more
system call each); longer ones, where a millisecond does not matter, stay with ``epoll_wait``.
"""

from __future__ import annotations

import asyncio
import select
import selectors

PRECISE_BELOW_S = 0.1
"""Waits shorter than this wake on time to the microsecond; longer ones to the millisecond, as asyncio's do."""

_FD_SETSIZE = 1024
"""``select()`` takes descriptors below this only; an epoll descriptor above it keeps plain ``epoll_wait``."""


if hasattr(selectors, "EpollSelector"):

    class TimelySelector(selectors.EpollSelector):
        """An epoll selector whose short waits end when they are due to the microsecond (see the module)."""

        def __init__(self) -> None:
            super().__init__()
            epoll_fd = self.fileno()
            self._watch = [epoll_fd] if epoll_fd < _FD_SETSIZE else None

        def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
            if self._watch is not None and timeout is not None and 0 < timeout < PRECISE_BELOW_S:
                # Readable as soon as any registered descriptor is: nothing is read here, so the events are
                # all still there for the non-blocking collection below.
                select.select(self._watch, (), (), timeout)
                timeout = 0
            return super().select(timeout)

    def new_event_loop() -> asyncio.AbstractEventLoop:
        """A selector event loop on :class:`TimelySelector`: pass it as ``asyncio.Runner(loop_factory=...)``."""
        return asyncio.SelectorEventLoop(TimelySelector())

else:  # pragma: no cover - other systems' selectors (kqueue) already take sub-millisecond timeouts

    def new_event_loop() -> asyncio.AbstractEventLoop:
        """The default event loop: this system's selector already wakes on time."""
        return asyncio.new_event_loop()
