"""backoff_delay bounds and retry_with_backoff: budget per subscriber, delays, filters, request-n."""

from __future__ import annotations

import itertools
import random
import threading
from typing import Any

import pytest
import reactivex
from hypothesis import given, settings
from hypothesis import strategies as st
from reactivex import abc
from reactivex.disposable import CompositeDisposable, Disposable
from reactivex.scheduler import VirtualTimeScheduler
from reactivex.testing import ReactiveTest, TestScheduler

from flume_rx.operators import Demand, Flowable, backoff_delay, retry_with_backoff

on_next, on_completed, on_error = ReactiveTest.on_next, ReactiveTest.on_completed, ReactiveTest.on_error
subscribe = ReactiveTest.subscribe


@settings(max_examples=300, deadline=None)
@given(
    attempt=st.integers(0, 80),
    initial=st.floats(0.001, 10.0),
    cap_factor=st.floats(1.0, 1000.0),
    seed=st.integers(0, 2**32),
)
def test_backoff_delay_lies_within_its_bounds(
    attempt: int, initial: float, cap_factor: float, seed: int
) -> None:
    cap = initial * cap_factor
    upper = min(cap, initial * 2.0**attempt)
    delay = backoff_delay(attempt, initial, cap, random.Random(seed))
    assert upper / 2 <= delay <= upper


@settings(max_examples=100, deadline=None)
@given(initial=st.floats(0.001, 10.0), cap_factor=st.floats(1.0, 1000.0))
def test_backoff_upper_bound_doubles_until_the_cap(initial: float, cap_factor: float) -> None:
    cap = initial * cap_factor
    uppers = [backoff_delay(a, initial, cap, jitter=0.0) for a in range(40)]
    for before, after in itertools.pairwise(uppers):
        assert after == pytest.approx(min(cap, 2 * before))
        assert after >= before
    assert uppers[-1] == cap


def test_jitter_spans_from_fixed_to_full() -> None:
    rng = random.Random(1)
    assert backoff_delay(3, 1.0, 100.0, rng, jitter=0.0) == 8.0
    full = [backoff_delay(3, 1.0, 100.0, rng, jitter=1.0) for _ in range(200)]
    assert min(full) < 4.0 < max(full) <= 8.0


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((-1, 1.0, 2.0), {}, "attempt"),
        ((0, 0.0, 2.0), {}, "initial"),
        ((0, 3.0, 2.0), {}, "cap"),
        ((0, 1.0, 2.0), {"jitter": 1.5}, "jitter"),
    ],
)
def test_backoff_delay_validates(args: tuple[Any, ...], kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        backoff_delay(*args, **kwargs)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((-1, 1.0, 2.0), {}, "max_retries"),
        ((1, -1.0, 2.0), {}, "initial"),
        ((1, 1.0, 0.5), {}, "cap"),
        ((1, 1.0, 2.0), {"retry_on": (KeyError, "oops")}, "retry_on"),
        ((1, 1.0, 2.0), {"jitter": -0.1}, "jitter"),
    ],
)
def test_retry_with_backoff_validates_eagerly(
    args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        retry_with_backoff(*args, **kwargs)


def test_resubscribes_after_doubling_delays_then_gives_up() -> None:
    scheduler = TestScheduler()
    failure = OSError("connection reset")
    xs = scheduler.create_cold_observable(on_next(10, 1), on_error(20, failure))

    results = scheduler.start(
        lambda: xs.pipe(retry_with_backoff(3, 100.0, 1000.0, jitter=0.0, scheduler=scheduler)), disposed=2000
    )

    assert xs.subscriptions == [
        subscribe(200, 220),
        subscribe(320, 340),
        subscribe(540, 560),
        subscribe(960, 980),
    ]
    assert results.messages == [
        on_next(210, 1),
        on_next(330, 1),
        on_next(550, 1),
        on_next(970, 1),
        on_error(980, failure),
    ]


def test_each_subscriber_gets_its_own_budget() -> None:
    scheduler = TestScheduler()
    xs = scheduler.create_cold_observable(on_error(10, OSError("down")))
    retried = xs.pipe(retry_with_backoff(1, 5.0, 5.0, jitter=0.0, scheduler=scheduler))
    errors: list[float] = []
    for at in (0.0, 100.0):
        scheduler.schedule_absolute(
            at, lambda _s, _st: retried.subscribe(on_error=lambda _e: errors.append(float(scheduler.clock)))
        )
    scheduler.advance_to(1000.0)

    assert [s.subscribe for s in xs.subscriptions] == [0, 15, 100, 115]
    assert errors == [25.0, 125.0]


def test_errors_not_in_retry_on_pass_at_once() -> None:
    scheduler = TestScheduler()
    failure = ValueError("bad payload")
    xs = scheduler.create_cold_observable(on_error(10, failure))

    results = scheduler.start(
        lambda: xs.pipe(retry_with_backoff(5, 1.0, 10.0, retry_on=(OSError,), scheduler=scheduler))
    )

    assert results.messages == [on_error(210, failure)]
    assert xs.subscriptions == [subscribe(200, 210)]


def test_a_recovered_source_completes() -> None:
    scheduler = TestScheduler()
    attempts: list[float] = []

    def flaky(observer: abc.ObserverBase[str], _scheduler: abc.SchedulerBase | None = None) -> None:
        attempts.append(float(scheduler.clock))
        if len(attempts) < 3:
            observer.on_error(OSError("try again"))
        else:
            observer.on_next("ok")
            observer.on_completed()

    results = scheduler.start(
        lambda: reactivex.create(flaky).pipe(
            retry_with_backoff(5, 10.0, 60.0, jitter=0.0, scheduler=scheduler)
        )
    )

    assert attempts == [200.0, 210.0, 230.0]
    assert results.messages == [on_next(230, "ok"), on_completed(230)]


@settings(max_examples=80, deadline=None)
@given(
    max_retries=st.integers(0, 6),
    initial=st.floats(0.5, 20.0),
    cap_factor=st.floats(1.0, 50.0),
    seed=st.integers(0, 2**32),
)
def test_delays_follow_backoff_delay(max_retries: int, initial: float, cap_factor: float, seed: int) -> None:
    scheduler = TestScheduler()
    cap = initial * cap_factor
    xs = scheduler.create_cold_observable(on_error(1, OSError("down")))
    failures: list[Exception] = []
    xs.pipe(
        retry_with_backoff(max_retries, initial, cap, scheduler=scheduler, rng=random.Random(seed))
    ).subscribe(on_error=failures.append, scheduler=scheduler)
    scheduler.advance_to(1e6)

    expected_rng = random.Random(seed)
    expected = [0.0]
    for attempt in range(max_retries):
        expected.append(expected[-1] + 1.0 + backoff_delay(attempt, initial, cap, expected_rng))
    assert [s.subscribe for s in xs.subscriptions] == pytest.approx(expected)
    assert len(failures) == 1


class FailingTwice(Flowable[int]):
    """Emits what is requested, at most two items per subscription, and fails the first two subscriptions."""

    def __init__(self) -> None:
        self.given: list[int] = []
        self.items = iter(range(1000))
        super().__init__(self._run)

    def _run(
        self, observer: abc.ObserverBase[int], demand: Demand, _scheduler: abc.SchedulerBase | None
    ) -> abc.DisposableBase:
        attempt = len(self.given)
        self.given.append(demand.pending)
        sent = 0

        def drain() -> None:
            nonlocal sent
            while (attempt >= 2 or sent < 2) and demand.take(1):
                sent += 1
                observer.on_next(next(self.items))
            if attempt < 2:
                observer.on_error(OSError(f"attempt {attempt} failed"))

        subscription = CompositeDisposable(demand.on_request(drain))
        drain()
        return subscription


def test_resubscriptions_get_the_downstream_demand_still_pending() -> None:
    scheduler = TestScheduler()
    source = FailingTwice()
    demand = Demand(3)
    seen: list[int] = []
    source.pipe(retry_with_backoff(3, 1.0, 1.0, jitter=0.0, scheduler=scheduler)).subscribe_with_demand(
        reactivex.Observer(seen.append), demand, scheduler
    )
    scheduler.advance_to(10.0)
    assert source.given == [3, 1, 0]
    assert seen == [0, 1, 2]

    demand.request(2)
    assert seen == [0, 1, 2, 3, 4]
    assert demand.pending == 0


def test_plain_subscription_works_as_an_ordinary_operator() -> None:
    attempts: list[int] = []

    def flaky(observer: abc.ObserverBase[int], _scheduler: abc.SchedulerBase | None = None) -> None:
        attempts.append(1)
        if len(attempts) < 3:
            observer.on_error(OSError("not yet"))
        else:
            observer.on_next(len(attempts))
            observer.on_completed()

    assert reactivex.create(flaky).pipe(retry_with_backoff(5, 0.001, 0.002)).run() == 3


@settings(max_examples=100, deadline=None)
@given(
    n_items=st.integers(0, 12),
    requests=st.lists(st.integers(1, 5), max_size=6),
    failures=st.integers(0, 2),
)
def test_a_plain_upstream_is_held_to_the_downstream_demand(
    n_items: int, requests: list[int], failures: int
) -> None:
    # Rule 1.1 over a plain reactivex source, which pushes everything at once: retry holds what was not
    # requested, and completes only once all of it went downstream.
    attempts: list[int] = []

    def flaky(observer: abc.ObserverBase[int], _scheduler: abc.SchedulerBase | None = None) -> None:
        attempts.append(1)
        if len(attempts) <= failures:
            observer.on_error(OSError("not yet"))
            return
        for item in range(n_items):
            observer.on_next(item)
        observer.on_completed()

    scheduler = TestScheduler()
    demand = Demand()
    seen: list[int] = []
    completed: list[bool] = []
    reactivex.create(flaky).pipe(
        retry_with_backoff(3, 1.0, 1.0, jitter=0.0, scheduler=scheduler)
    ).subscribe_with_demand(
        reactivex.Observer(seen.append, on_completed=lambda: completed.append(True)), demand, scheduler
    )
    scheduler.advance_to(10.0)
    assert seen == []
    total = 0
    for n in requests:
        demand.request(n)
        total += n
        assert seen == list(range(min(total, n_items)))
        assert completed == ([True] if total >= n_items else [])
    if not requests:
        assert completed == ([True] if n_items == 0 else [])


class _RunsAtOnceOnAThread(VirtualTimeScheduler):
    """Runs every relative action at once on a new thread, and says when it has run."""

    def __init__(self) -> None:
        super().__init__()
        self.ran = threading.Event()
        self.threads: list[threading.Thread] = []

    def schedule_relative(
        self, duetime: Any, action: abc.ScheduledAction[Any], state: Any = None
    ) -> abc.DisposableBase:
        def run() -> None:
            action(self, state)
            self.ran.set()

        thread = threading.Thread(target=run)
        self.threads.append(thread)
        thread.start()
        return Disposable()


def test_a_retry_that_fires_before_the_failed_subscribe_returns_keeps_the_new_subscription() -> None:
    # The race: the source fails inside subscribe, the retry timer fires on its own thread and subscribes
    # again, and only then does the first subscribe return. Its late assignment must not cancel the new one.
    timer = _RunsAtOnceOnAThread()
    second: list[abc.ObserverBase[str]] = []
    second_disposed: list[bool] = []

    def source(observer: abc.ObserverBase[str], _scheduler: abc.SchedulerBase | None = None) -> Disposable:
        if not second and not timer.threads:
            observer.on_error(OSError("first attempt fails inside subscribe"))
            assert timer.ran.wait(10)  # the retry has subscribed again, on the timer's thread
            return Disposable()
        second.append(observer)
        return Disposable(lambda: second_disposed.append(True))

    seen: list[str] = []
    completed: list[bool] = []
    reactivex.create(source).pipe(retry_with_backoff(3, 1.0, 1.0, scheduler=timer)).subscribe_with_demand(
        reactivex.Observer(seen.append, on_completed=lambda: completed.append(True)), Demand(1)
    )
    for thread in timer.threads:
        thread.join()
    assert len(second) == 1
    assert second_disposed == []
    second[0].on_next("ok")
    second[0].on_completed()
    assert seen == ["ok"]
    assert completed == [True]
