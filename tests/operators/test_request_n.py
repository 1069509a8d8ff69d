"""request_n sources, and request-n held end to end: source → throttle → batches → process."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
import reactivex
from _flowkit import Probe
from hypothesis import given, settings
from hypothesis import strategies as st
from reactivex import Observable
from reactivex import operators as ops
from reactivex.testing import TestScheduler

from flume_rx.operators import (
    Credits,
    Demand,
    InProcessWindow,
    Outcome,
    buffer_with_time_or_count,
    from_iterable,
    process,
    request_n,
    throttle,
)


def counting_fetch(
    items: Iterator[int], calls: list[int]
) -> reactivex.typing.Mapper[int, Observable[Sequence[int]]]:
    def fetch(n: int) -> Observable[Sequence[int]]:
        calls.append(n)
        batch = [item for _, item in zip(range(n), items, strict=False)]
        return reactivex.of(batch) if batch else reactivex.empty()

    return fetch


def test_credits_cap_what_is_in_flight() -> None:
    credits = Credits(3)
    assert credits.acquire(5) == 3
    assert credits.acquire(1) == 0
    credits.release(2)
    assert credits.available == 2
    with pytest.raises(ValueError, match="only 1 are in flight"):
        credits.release(2)
    with pytest.raises(ValueError, match="max_in_flight"):
        Credits(0)


def test_fetches_only_what_downstream_requested_within_the_cap() -> None:
    calls: list[int] = []
    source = request_n(counting_fetch(iter(range(100)), calls), max_in_flight=4)
    demand = Demand()
    seen: list[int] = []
    source.subscribe_with_demand(reactivex.Observer(seen.append), demand)
    assert calls == []
    demand.request(2)
    assert seen == [0, 1] and calls == [2]
    demand.request(10)
    assert seen == [0, 1, 2, 3]  # the cap of 4 holds the rest back
    source.release(3)
    assert seen == [0, 1, 2, 3, 4, 5, 6]
    assert source.credits.in_flight == 4


def test_the_pressure_hook_hears_when_the_cap_holds_and_lets_go() -> None:
    events: list[bool] = []
    source = request_n(
        counting_fetch(iter(range(10)), []), max_in_flight=1, on_pressure=lambda held, _s: events.append(held)
    )
    source.subscribe(lambda _: None)
    assert events == [True]
    source.release()
    assert events == [True, False, True]


def test_completes_when_the_source_is_exhausted() -> None:
    source = from_iterable(range(3), max_in_flight=10)
    assert source.pipe(ops.to_list()).run() == [0, 1, 2]
    assert source.credits.in_flight == 3


def test_a_fetch_that_returns_too_many_fails_once_and_returns_its_credits() -> None:
    # Before the fix a failed source kept fetching (each fetch moves jobs in Redis) and leaked its credits.
    calls: list[int] = []

    def greedy(n: int) -> Observable[Sequence[int]]:
        calls.append(n)
        return reactivex.of(list(range(n + 1)))

    source = request_n(greedy, max_in_flight=30)
    errors: list[Exception] = []
    source.subscribe_with_demand(reactivex.Observer(on_error=errors.append), Demand(5))
    assert calls == [5]
    assert [str(e) for e in errors] == ["fetch(5) returned 6 items"]
    assert source.credits.in_flight == 0


def test_a_failed_fetch_stops_the_source_and_returns_its_credits() -> None:
    calls: list[int] = []

    def failing(n: int) -> Observable[Sequence[int]]:
        calls.append(n)
        return reactivex.throw(ConnectionError("redis is down"))

    source = request_n(failing, max_in_flight=30)
    errors: list[Exception] = []
    source.subscribe_with_demand(reactivex.Observer(on_error=errors.append), Demand(5))
    source.credits.release(0)
    assert calls == [5]
    assert len(errors) == 1
    assert source.credits.in_flight == 0


@settings(max_examples=100, deadline=None)
@given(
    n_items=st.integers(0, 40),
    max_in_flight=st.integers(1, 12),
    allowed=st.integers(1, 8),
    period=st.integers(1, 10).map(float),
    hold=st.sampled_from([0.0, 0.5]),
    count=st.integers(1, 5),
    timespan=st.integers(1, 8).map(float),
    stages=st.integers(1, 4),
    durations=st.lists(st.integers(0, 6), min_size=45, max_size=45),
    requests=st.lists(st.tuples(st.integers(0, 200), st.integers(1, 4)), max_size=8),
    finish=st.booleans(),
)
def test_request_n_holds_through_throttle_batches_and_process(
    n_items: int,
    max_in_flight: int,
    allowed: int,
    period: float,
    hold: float,
    count: int,
    timespan: float,
    stages: int,
    durations: list[int],
    requests: list[tuple[int, int]],
    finish: bool,
) -> None:
    scheduler = TestScheduler()
    items = iter(range(n_items))
    in_flight_peak = [0]

    def fetch(n: int) -> Observable[Sequence[int]]:
        batch = [item for _, item in zip(range(n), items, strict=False)]
        if not batch:
            return reactivex.empty()
        return reactivex.timer(0.5, scheduler=scheduler).pipe(ops.map(lambda _: batch))

    source = request_n(fetch, max_in_flight)

    def watch(_: object) -> None:
        in_flight_peak[0] = max(in_flight_peak[0], source.credits.in_flight)

    probes = [Probe(name, on_item=watch) for name in ("source", "throttle", "batches", "process")]
    window = InProcessWindow(allowed, period, hold, clock=scheduler)

    def work(batch: list[int]) -> Observable[int]:
        return reactivex.timer(float(durations[batch[0]]), scheduler=scheduler).pipe(
            ops.map(lambda _: len(batch))
        )

    outcomes: list[Outcome[list[int], int]] = []
    completed: list[bool] = []

    def on_outcome(outcome: Outcome[list[int], int]) -> None:
        outcomes.append(outcome)
        source.release(len(outcome.item))  # the pipeline's ack: the items leave, their credits return

    pipeline = source.pipe(
        probes[0],
        throttle(window, scheduler=scheduler),
        probes[1],
        buffer_with_time_or_count(timespan, count, scheduler=scheduler),
        probes[2],
        process(work, stages, scheduler=scheduler),
        probes[3],
    )
    demand = Demand()
    pipeline.subscribe_with_demand(
        reactivex.Observer(
            on_outcome, lambda e: pytest.fail(f"unexpected {e!r}"), lambda: completed.append(True)
        ),
        demand,
        scheduler,
    )
    for at, n in requests:
        scheduler.schedule_absolute(float(at), lambda _s, _st, n=n: demand.request(n))
    if finish:
        scheduler.schedule_absolute(300.0, lambda _s, _st: demand.request(10_000))
    scheduler.advance_to(100_000.0)

    assert [v for probe in probes for v in probe.violations] == []
    assert in_flight_peak[0] <= max_in_flight
    assert len(outcomes) <= sum(n for _, n in requests) + (10_000 if finish else 0)
    processed = sorted(item for outcome in outcomes for item in outcome.item)
    assert processed == list(range(len(processed)))
    assert all(1 <= len(outcome.item) <= count and outcome.ok for outcome in outcomes)
    if finish:
        assert processed == list(range(n_items))
        assert completed == [True]
        assert source.credits.in_flight == 0
