"""request_n: a pull source that emits only what downstream requested, within a cap on items in flight."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from typing import Any, TypeVar

import reactivex
from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable, Disposable

from ._flow import Demand, Flowable, serialize

_T = TypeVar("_T")

Fetch = Callable[[int], Observable[Sequence[_T]]]
"""Asked for up to ``n`` items; emits one sequence of at most ``n`` (maybe empty, after waiting a while)
and completes, or completes without emitting when the source is exhausted. A sequence made with
:func:`last_batch` says it is the last. Disposing the fetch's subscription cancels it: a fetch that has
taken items from where it reads them by then and cannot emit them any more must put them back itself."""

HandBack = Callable[[Sequence[_T]], None]
"""Given fetched items that never went downstream (the subscriber cancelled, or the source failed, while
they waited for demand), to return them where the fetch took them from. Their credits are already back."""

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

    def __init__(self, max_in_flight: int) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1 (got {max_in_flight})")
        self.max_in_flight = max_in_flight
        self._in_flight = 0
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def available(self) -> int:
        return self.max_in_flight - self._in_flight

    def acquire(self, n: int) -> int:
        with self._lock:
            granted = max(0, min(n, self.max_in_flight - self._in_flight))
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


class _LastBatch(list[Any]):
    """A batch after which the fetch function has no more items (see :func:`last_batch`)."""


def last_batch(items: Iterable[_T]) -> Sequence[_T]:
    """Mark a fetch's batch as the last: the source completes once its items are delivered.

    Without the mark a source learns it is exhausted only from a fetch that completes without a batch, which
    it asks for only when downstream wants more: a subscriber that requested exactly what there was would
    never see the completion.

    >>> from reactivex import operators as ops
    >>> source = request_n(lambda n: reactivex.of(last_batch([1, 2])), max_in_flight=2)
    >>> source.pipe(ops.to_list()).run()
    [1, 2]
    """
    return _LastBatch(items)


class PullSource(Flowable[_T]):
    """A Flowable over a fetch function; :attr:`credits` must be released as items leave the pipeline."""

    def __init__(
        self,
        fetch: Fetch[_T],
        credits: Credits,
        on_pressure: PressureHook | None = None,
        hand_back: HandBack[_T] | None = None,
        min_fetch: int = 1,
    ) -> None:
        if not 1 <= min_fetch <= credits.max_in_flight:
            raise ValueError(
                f"min_fetch must be from 1 to max_in_flight={credits.max_in_flight} (got {min_fetch}); it is the "
                "fewest items a fetch waits to have credits for"
            )
        self.credits = credits
        self.min_fetch = min_fetch
        self._fetch = fetch
        self._on_pressure = on_pressure
        self._hand_back = hand_back
        super().__init__(self._subscribe_pull)

    def release(self, n: int = 1) -> None:
        self.credits.release(n)

    def _subscribe_pull(
        self, observer: abc.ObserverBase[_T], demand: Demand, scheduler: abc.SchedulerBase | None
    ) -> abc.DisposableBase:
        credits = self.credits
        lock = threading.Lock()
        # A subscriber that takes several items in one call gets a batch so (see ManyObserver).
        all_at_once: Callable[[list[_T]], None] | None = getattr(observer, "on_next_all", None)
        # Fetched, not yet requested: a batch bigger than the demand left once it arrives (a withdraw came
        # while it was fetched). They keep their credits until they go downstream or are handed back.
        held: deque[_T] = deque()
        fetching = False
        granted = 0  # credits of the fetch under way until its batch arrives
        fetches = 0  # numbers the fetches, so a late signal of an older one is recognised
        exhausted = False  # the fetch function said there is no more
        stopped = False  # a terminal signal was sent, or the subscriber cancelled
        failure: list[Exception] = []
        held_since: float | None = None
        fetch_subscription: abc.DisposableBase | None = None

        def give_back(items: list[_T], credits_held: int) -> None:
            # Items that never went downstream: the credits they held return and the source takes them back.
            credits.release(credits_held)
            if items and self._hand_back is not None:
                self._hand_back(items)

        def next_signal() -> Callable[[], None] | None:
            # Called with the lock held.
            nonlocal stopped
            if stopped:
                return None
            if failure:
                stopped = True
                error, undelivered = failure[0], list(held)
                held.clear()

                def fail() -> None:
                    give_back(undelivered, len(undelivered))
                    observer.on_error(error)

                return fail
            if held:
                # Everything the demand allows goes in one signal: one lock round per batch, not per item.
                allowed = demand.take(len(held))
                if allowed:
                    batch = [held.popleft() for _ in range(allowed)]
                    return lambda: emit(batch)
            if exhausted and not held and not fetching:
                stopped = True
                return observer.on_completed
            return None

        def emit(batch: list[_T]) -> None:
            if all_at_once is not None and len(batch) > 1:
                if stopped:
                    give_back(batch, len(batch))
                    return
                all_at_once(batch)  # a subscriber that raises has them all (see ManyObserver)
                return
            for index, item in enumerate(batch):
                if stopped:
                    # Cancelled during an earlier on_next of this batch: the rest was never delivered.
                    give_back(batch[index:], len(batch) - index)
                    return
                try:
                    observer.on_next(item)
                except BaseException:
                    if stopped:  # a subscriber that raises is cancelled (rule 2.13); the rest goes back
                        give_back(batch[index + 1 :], len(batch) - index - 1)
                    raise

        def plan_fetch() -> tuple[int, int, float | None]:
            # Called with the lock held: (size, fetch number, pressure) where size 0 means no fetch now, and
            # pressure is -1.0 when the cap starts holding the source back, the seconds held when it lets go.
            nonlocal fetching, granted, fetches, held_since
            if stopped or fetching or exhausted or failure:
                return 0, fetches, None
            wanted = demand.pending - len(held)
            if wanted <= 0:
                return 0, fetches, None
            if 0 < credits.available < min(wanted, self.min_fetch):
                # Gathering credits, not held back: fewer are free than a fetch worth a round trip, and
                # items in flight will return theirs (a release pumps again). Fetching what is free now
                # would shrink every fetch to the size of the releases that trickle in.
                return 0, fetches, None
            size = credits.acquire(wanted)
            if size == 0:
                if held_since is None:
                    held_since = time.monotonic()
                    return 0, fetches, -1.0
                return 0, fetches, None
            pressure = None
            if held_since is not None:
                pressure, held_since = time.monotonic() - held_since, None
            fetching, granted = True, size
            fetches += 1
            return size, fetches, pressure

        def start_fetch(size: int, number: int) -> None:
            nonlocal fetch_subscription
            got_batch = False

            def on_batch(batch: Sequence[_T]) -> None:
                nonlocal got_batch, granted, exhausted
                items = list(batch)
                unused = 0
                with lock:
                    if stopped or number != fetches:
                        late = items  # arrived after a cancel, which returned the credits: hand them back
                    else:
                        late = []
                        if got_batch or len(items) > size:
                            # Stop before anything else: a failed source must not fetch (move jobs) again.
                            problem = "more than one batch" if got_batch else f"{len(items)} items"
                            failure.append(ValueError(f"fetch({size}) returned {problem}"))
                            late, unused = items, 0 if got_batch else size
                        else:
                            unused = size - len(items)
                            held.extend(items)
                            exhausted = exhausted or isinstance(batch, _LastBatch)
                        granted = 0
                    got_batch = True
                give_back(late, unused)
                pump()

            def on_fetch_error(error: Exception) -> None:
                nonlocal fetching, granted
                with lock:
                    if stopped or number != fetches:
                        return
                    fetching, unused, granted = False, granted, 0
                    failure.append(error)
                credits.release(unused)
                pump()

            def on_fetch_completed() -> None:
                nonlocal fetching, granted, exhausted
                with lock:
                    if stopped or number != fetches:
                        return
                    fetching, unused, granted = False, granted, 0
                    if not got_batch:
                        exhausted = True  # completed without a batch: there will be no more
                credits.release(unused)
                pump()

            subscription = self._fetch(size).subscribe(
                on_batch, on_fetch_error, on_fetch_completed, scheduler=scheduler
            )
            with lock:
                if number == fetches and fetching and not stopped:
                    fetch_subscription, subscription = subscription, fetch_subscription
            if subscription is not None:
                subscription.dispose()  # the finished fetch before this one, or this one after a cancel

        def step() -> None:
            while True:
                with lock:
                    signal = next_signal()
                    size, number, pressure = plan_fetch()
                if pressure is not None and self._on_pressure is not None:
                    self._on_pressure(pressure < 0, max(0.0, pressure))
                if size:
                    start_fetch(size, number)
                if signal is None:
                    if size:
                        continue  # the fetch may have answered at once
                    return
                signal()

        pump = serialize(step)

        def cancel() -> None:
            # Rules 3.5 and 3.13: idempotent, and everything this subscription holds goes back: the credits of
            # a fetch under way (which is disposed), and the fetched items nobody received.
            nonlocal stopped, fetching, granted, fetch_subscription
            with lock:
                stopped = True
                undelivered = list(held)
                held.clear()
                unused, granted, fetching = granted, 0, False
                subscription, fetch_subscription = fetch_subscription, None
            if subscription is not None:
                subscription.dispose()
            give_back(undelivered, unused + len(undelivered))

        subscription = CompositeDisposable(
            demand.on_request(pump), credits.on_release(pump), Disposable(cancel)
        )
        pump()
        return subscription


def request_n(
    fetch: Fetch[_T],
    max_in_flight: int,
    *,
    on_pressure: PressureHook | None = None,
    hand_back: HandBack[_T] | None = None,
    min_fetch: int = 1,
) -> PullSource[_T]:
    """Create a source that emits only what downstream requested, never more than ``max_in_flight`` at once.

    Each time downstream demand and free credits allow, ``fetch(n)`` is asked for up to ``n`` items. An item
    holds its credit until :meth:`PullSource.release` returns it, so however slow the consumer, no more than
    ``max_in_flight`` items are ever out of the source: the rest stay where ``fetch`` reads them from.

    Items a fetch brings beyond the demand left when they arrive (downstream withdrew requests meanwhile)
    wait, with their credits, for the next request. Cancelling disposes the fetch under way and returns its
    credits; fetched items that never went downstream are given to ``hand_back`` and their credits return.
    The source completes after a batch marked with :func:`last_batch`, or when a fetch completes without one.

    Args:
        fetch: called with ``n >= 1``; its Observable emits one sequence of at most ``n`` items and
            completes, or completes without emitting when there will be no more items (see :data:`Fetch`).
        max_in_flight: the cap on emitted, unreleased items.
        on_pressure: optional hook told when the cap holds the source back and when it lets go.
        hand_back: optional; takes back fetched items that were never delivered (see :data:`HandBack`).
            Without it they are dropped.
        min_fetch: the fewest credits a fetch waits for (1 to ``max_in_flight``): while downstream wants
            more than is free and fewer than ``min(wanted, min_fetch)`` credits are free, the source waits
            for releases rather than fetch a few items at a time. It waits only while items are in flight,
            so the items in flight must come back without more arriving first: keep the default of 1 when a
            consumer may hold every item in flight until it receives more than those credits cover.

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
    return PullSource(fetch, Credits(max_in_flight), on_pressure, hand_back, min_fetch)


def from_iterable(items: Iterable[_T], max_in_flight: int) -> PullSource[_T]:
    """A :func:`request_n` source over an in-memory iterable (for tests, notebooks and examples).

    It looks one item ahead, so the batch that empties the iterable is the :func:`last_batch`.
    """
    iterator = iter(items)
    lookahead: list[_T] = []

    def fetch(n: int) -> Observable[Sequence[_T]]:
        batch = lookahead[:n]
        del lookahead[:n]
        batch.extend(islice(iterator, n - len(batch)))
        lookahead.extend(islice(iterator, 1))
        return reactivex.of(batch if lookahead else last_batch(batch))

    return request_n(fetch, max_in_flight)
