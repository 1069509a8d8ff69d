"""request_n: a pull source that emits only what downstream requested, within a cap on items in flight."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import reactivex
from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable, Disposable, SerialDisposable

from ._flow import Demand, Flowable, serialize

_T = TypeVar("_T")

Fetch = Callable[[int], Observable[Sequence[_T]]]
"""Asked for up to ``n`` items; emits one sequence of at most ``n`` (maybe empty, after waiting a while)
and completes, or completes without emitting when the source is exhausted."""

PressureHook = Callable[[bool, float], None]
"""Told ``(True, 0.0)`` when downstream wants more but the in-flight cap holds the source back, and
``(False, held_seconds)`` when released."""


class Credits:
    """The in-flight ledger of a :func:`request_n` source: items emitted and not yet released.

    >>> credits = Credits(2)
    >>> credits.acquire(5)
    2
    >>> credits.release(1); credits.in_flight
    1
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"max_in_flight must be >= 1 (got {limit})")
        self.limit = limit
        self._in_flight = 0
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def available(self) -> int:
        return self.limit - self._in_flight

    def acquire(self, n: int) -> int:
        with self._lock:
            granted = max(0, min(n, self.limit - self._in_flight))
            self._in_flight += granted
            return granted

    def release(self, n: int = 1) -> None:
        """Return ``n`` credits: items that left the pipeline (acknowledged, retried or dead)."""
        if n <= 0:
            return
        with self._lock:
            if n > self._in_flight:
                raise ValueError(f"released {n} credits but only {self._in_flight} are in flight")
            self._in_flight -= n
        for listener in list(self._listeners):
            listener()

    def on_release(self, listener: Callable[[], None]) -> abc.DisposableBase:
        self._listeners.append(listener)
        return Disposable(lambda: self._listeners.remove(listener) if listener in self._listeners else None)


class PullSource(Flowable[_T]):
    """A Flowable over a fetch function; :attr:`credits` must be released as items leave the pipeline."""

    def __init__(self, fetch: Fetch[_T], credits: Credits, on_pressure: PressureHook | None = None) -> None:
        self.credits = credits
        self._fetch = fetch
        self._on_pressure = on_pressure
        super().__init__(self._subscribe_pull)

    def release(self, n: int = 1) -> None:
        self.credits.release(n)

    def _subscribe_pull(
        self, observer: abc.ObserverBase[_T], demand: Demand, scheduler: abc.SchedulerBase | None
    ) -> abc.DisposableBase:
        fetching = False
        done = False
        held_since: float | None = None
        current_fetch = SerialDisposable()

        def step() -> None:
            nonlocal fetching, held_since
            if fetching or done:
                return
            wanted = demand.pending
            if wanted <= 0:
                return
            granted = self.credits.acquire(wanted)
            if granted == 0:
                if held_since is None:
                    held_since = time.monotonic()
                    if self._on_pressure:
                        self._on_pressure(True, 0.0)
                return
            if held_since is not None:
                held = time.monotonic() - held_since
                held_since = None
                if self._on_pressure:
                    self._on_pressure(False, held)
            fetching = True
            got_batch = False

            def on_batch(items: Sequence[_T]) -> None:
                nonlocal got_batch, done
                got_batch = True
                items = list(items)
                if len(items) > granted:
                    # Stop before anything else: a failed source must not fetch (move jobs) again, and the
                    # credits of a batch never emitted go back.
                    done = True
                    self.credits.release(granted)
                    observer.on_error(ValueError(f"fetch({granted}) returned {len(items)} items"))
                    return
                self.credits.release(granted - len(items)) if len(items) < granted else None
                demand.take(len(items))
                for item in items:
                    observer.on_next(item)

            def on_fetch_error(error: Exception) -> None:
                nonlocal done
                done = True
                self.credits.release(granted) if not got_batch else None
                observer.on_error(error)

            def on_fetch_completed() -> None:
                nonlocal fetching, done
                fetching = False
                if not got_batch:
                    # done first: releasing wakes pump(), which must not fetch (and strand items) again.
                    done = True
                    self.credits.release(granted)
                    observer.on_completed()
                    return
                pump()

            current_fetch.disposable = self._fetch(granted).subscribe(
                on_batch, on_fetch_error, on_fetch_completed, scheduler=scheduler
            )

        pump = serialize(step)

        def on_request() -> None:
            # Downstream asks once per item it finishes with. While a fetch is under way the request waits in
            # `demand`, and the fetch's end pumps after clearing `fetching`, so it is read then.
            if not fetching and not done:
                pump()

        def stop() -> None:
            nonlocal done
            done = True

        subscription = CompositeDisposable(
            demand.on_request(on_request), self.credits.on_release(pump), current_fetch, Disposable(stop)
        )
        pump()
        return subscription


def request_n(
    fetch: Fetch[_T], max_in_flight: int, *, on_pressure: PressureHook | None = None
) -> PullSource[_T]:
    """Create a source that emits only what downstream requested, never more than ``max_in_flight`` at once.

    Each time downstream demand and free credits allow, ``fetch(n)`` is asked for up to ``n`` items. An item
    holds its credit until :meth:`PullSource.release` returns it, so however slow the consumer, no more than
    ``max_in_flight`` items are ever out of the source: the rest stay where ``fetch`` reads them from.

    Args:
        fetch: called with ``n >= 1``; its Observable emits one sequence of at most ``n`` items and
            completes, or completes without emitting when there will be no more items.
        max_in_flight: the cap on emitted, unreleased items.
        on_pressure: optional hook told when the cap holds the source back and when it lets go.

    Returns:
        A :class:`PullSource` (a Flowable).

    ::

        demand:   request(2)        release(1)      release(1)
        source:   --a--b-----------------c-------------d--|

    >>> items = iter(range(5))
    >>> def fetch(n):
    ...     batch = [x for _, x in zip(range(n), items)]
    ...     return reactivex.of(batch) if batch else reactivex.empty()
    >>> source = request_n(fetch, max_in_flight=2)
    >>> seen = []
    >>> _ = source.subscribe(lambda x: (seen.append(x), source.release()))
    >>> seen
    [0, 1, 2, 3, 4]
    """
    return PullSource(fetch, Credits(max_in_flight), on_pressure)


def from_iterable(items: Iterable[_T], max_in_flight: int) -> PullSource[_T]:
    """A :func:`request_n` source over an in-memory iterable (for tests, notebooks and examples)."""
    iterator = iter(items)

    def fetch(n: int) -> Observable[Sequence[_T]]:
        batch = [item for _, item in zip(range(n), iterator, strict=False)]
        return reactivex.of(batch) if batch else reactivex.empty()

    return request_n(fetch, max_in_flight)
