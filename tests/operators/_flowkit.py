"""Test helpers for the operator tests: a demand-honouring timed source and a probe that checks request-n."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable
from reactivex.observer import Observer
from reactivex.testing import TestScheduler

from flume_rx.operators import Demand, Flowable, subscribe_upstream

_T = TypeVar("_T")


class TimedSource(Flowable[int]):
    """Item ``i`` becomes available at virtual time ``arrivals[i]``; it is emitted once requested.

    Records how many items were requested of it in total and every violation of request-n.
    """

    def __init__(self, scheduler: TestScheduler, arrivals: Sequence[float]) -> None:
        self.scheduler = scheduler
        self.arrivals = sorted(arrivals)
        self.emitted: list[tuple[float, int]] = []
        self.requested_total = 0
        self.violations: list[str] = []
        super().__init__(self._subscribe_timed)

    def _subscribe_timed(
        self, observer: abc.ObserverBase[int], demand: Demand, scheduler: abc.SchedulerBase | None
    ) -> abc.DisposableBase:
        available: list[int] = []
        next_item = 0
        done = False

        def drain() -> None:
            nonlocal next_item, done
            while not done and next_item < len(available) and demand.take(1):
                item = available[next_item]
                next_item += 1
                self.emitted.append((float(self.scheduler.clock), item))
                observer.on_next(item)
            if not done and next_item == len(self.arrivals):
                done = True
                observer.on_completed()

        def arrive(_s: abc.SchedulerBase, index: int | None) -> None:
            assert index is not None
            available.append(index)
            drain()

        subscription = CompositeDisposable()
        for index, at in enumerate(self.arrivals):
            subscription.add(self.scheduler.schedule_absolute(float(at), arrive, index))
        subscription.add(demand.on_request(drain))
        drain()
        return subscription


class Probe:
    """An identity Flowable operator that checks the stage above it emits no more than the stage below asked.

    Items pass one for one; the probe forwards downstream demand upstream and records any item that arrives
    beyond what was requested of the stage above, or beyond what the stage below requested of the probe.
    """

    def __init__(self, name: str, on_item: Callable[[Any], None] | None = None) -> None:
        self.name = name
        self.violations: list[str] = []
        self.received = 0
        self.requested = 0
        self._on_item = on_item

    def __call__(self, source: Observable[_T]) -> Flowable[_T]:
        def subscribe(
            observer: abc.ObserverBase[_T], demand: Demand, scheduler: abc.SchedulerBase | None
        ) -> abc.DisposableBase:
            upstream = Demand.unlimited() if demand.unbounded else Demand()

            def forward() -> None:
                if upstream.unbounded:
                    return
                missing = demand.pending - (self.requested - self.received)
                if missing > 0:
                    self.requested += missing
                    upstream.request(missing)
                elif missing < 0:
                    # The stage below withdrew requests; pass that on, as a pass-through stage must.
                    self.requested -= upstream.withdraw(-missing)

            def on_next(item: _T) -> None:
                self.received += 1
                if not upstream.unbounded and self.received > self.requested:
                    self.violations.append(f"{self.name}: item {self.received} > {self.requested} requested")
                if demand.take(1) != 1:
                    self.violations.append(f"{self.name}: item {self.received} was not requested downstream")
                if self._on_item is not None:
                    self._on_item(item)
                observer.on_next(item)

            subscription = CompositeDisposable(demand.on_request(forward))
            subscription.add(
                subscribe_upstream(
                    source, Observer(on_next, observer.on_error, observer.on_completed), upstream, scheduler
                )
            )
            forward()
            return subscription

        return Flowable(subscribe)


def max_in_window(times_and_weights: Sequence[tuple[float, int]], period: float) -> int:
    """The largest total weight in any half-open window ``[t, t + period)`` (1e-9 slack for float noise)."""
    events = sorted(times_and_weights)
    best = 0
    total = 0
    left = 0
    for at, weight in events:
        total += weight
        while events[left][0] <= at - period + 1e-9:
            total -= events[left][1]
            left += 1
        best = max(best, total)
    return best
