"""request_n sources, and request-n held end to end: source → throttle → batches → process."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
import reactivex
from _flowkit import Probe
from hypothesis import given, settings
from hypothesis import strategies as st
from reactivex import Observable, abc
from reactivex import operators as ops
from reactivex.subject import Subject
from reactivex.testing import TestScheduler

from flume_rx.operators import (
    Credits,
    Demand,
    InProcessWindow,
    ManyObserver,
    Outcome,
    buffer_with_time_or_count,
    from_iterable,
    last_batch,
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


def test_cancelling_mid_fetch_gives_the_fetch_credits_back() -> None:
    # Rules 3.5 and 3.13: before, the two credits of the cancelled fetch stayed in flight, and the next
    # subscription that asked for two got none and hung.
    answers: list[Subject[Sequence[int]]] = []
    calls: list[int] = []

    def fetch(n: int) -> Observable[Sequence[int]]:
        calls.append(n)
        answers.append(Subject())
        return answers[-1]

    source = request_n(fetch, max_in_flight=2)
    first = source.subscribe_with_demand(reactivex.Observer(), Demand(2))
    assert calls == [2] and source.credits.in_flight == 2
    first.dispose()
    first.dispose()  # idempotent: the credits go back once
    assert source.credits.in_flight == 0
    assert not answers[0].observers  # the fetch itself is cancelled
    seen: list[int] = []
    source.subscribe_with_demand(reactivex.Observer(seen.append), Demand(2))
    assert calls == [2, 2]
    answers[1].on_next([7, 8])
    assert seen == [7, 8]


@settings(max_examples=100, deadline=None)
@given(batch_size=st.integers(1, 8), cancel_after=st.integers(1, 8), max_in_flight=st.integers(8, 12))
def test_cancelling_hands_back_the_fetched_items_nobody_received(
    batch_size: int, cancel_after: int, max_in_flight: int
) -> None:
    # The subscriber cancels from inside on_next, part way through a batch: every fetched item is either
    # delivered (and keeps its credit until released) or handed back (and its credit returns).
    handed_back: list[int] = []
    source = request_n(
        lambda n: reactivex.of(list(range(min(n, batch_size)))),
        max_in_flight,
        hand_back=handed_back.extend,
    )
    seen: list[int] = []
    subscription: list[abc.DisposableBase] = []

    def on_next(item: int) -> None:
        seen.append(item)
        if len(seen) == cancel_after:
            subscription[0].dispose()

    demand = Demand()
    subscription.append(source.subscribe_with_demand(reactivex.Observer(on_next), demand))
    demand.request(batch_size)
    delivered = min(cancel_after, batch_size)
    assert seen == list(range(delivered))
    assert handed_back == list(range(delivered, batch_size))
    assert source.credits.in_flight == delivered


def test_a_withdraw_during_a_fetch_is_honoured() -> None:
    # Requested 3, withdrew 2 while fetch(3) was under way: only 1 arrives; the other 2 wait, credits held,
    # for the next request, which they serve without another fetch.
    answers: list[Subject[Sequence[int]]] = []
    calls: list[int] = []

    def fetch(n: int) -> Observable[Sequence[int]]:
        calls.append(n)
        answers.append(Subject())
        return answers[-1]

    source = request_n(fetch, max_in_flight=10)
    demand = Demand()
    seen: list[int] = []
    source.subscribe_with_demand(reactivex.Observer(seen.append), demand)
    demand.request(3)
    assert demand.withdraw(2) == 2
    answers[0].on_next([0, 1, 2])
    answers[0].on_completed()
    assert seen == [0]
    assert source.credits.in_flight == 3
    demand.request(2)
    assert seen == [0, 1, 2]
    assert calls == [3]


def _observer(seen: list[int], many: bool, calls: list[int] | None = None) -> abc.ObserverBase[int]:
    """A subscriber recording what it is given: one item per on_next, or several per call when ``many``."""
    if not many:
        return reactivex.Observer(seen.append)

    def on_next_all(items: list[int]) -> None:
        if calls is not None:
            calls.append(len(items))
        seen.extend(items)

    return ManyObserver(seen.append, lambda _: None, lambda: None, on_next_all)


@settings(max_examples=100, deadline=None)
@given(
    n_items=st.integers(0, 30),
    batch=st.integers(1, 6),
    actions=st.lists(st.tuples(st.sampled_from(["request", "withdraw", "answer"]), st.integers(1, 5))),
)
@pytest.mark.parametrize("many", [False, True], ids=["one by one", "several per call"])
def test_never_more_delivered_than_requested_and_not_withdrawn(
    n_items: int, batch: int, actions: list[tuple[str, int]], many: bool
) -> None:
    # Rule 1.1 with asynchronous fetches and withdraws in any order.
    items = iter(range(n_items))
    answers: list[tuple[Subject[Sequence[int]], int]] = []

    def fetch(n: int) -> Observable[Sequence[int]]:
        answers.append((Subject(), n))
        return answers[-1][0]

    source = request_n(fetch, max_in_flight=100)
    demand = Demand()
    seen: list[int] = []
    source.subscribe_with_demand(_observer(seen, many), demand)
    net = 0
    for action, n in actions:
        if action == "request":
            demand.request(n)
            net += n
        elif action == "withdraw":
            net -= demand.withdraw(n)
        elif answers:
            subject, size = answers.pop(0)
            got = [item for _, item in zip(range(min(size, batch)), items, strict=False)]
            if got:
                subject.on_next(got)
            subject.on_completed()
        assert len(seen) <= net
        assert seen == list(range(len(seen)))


@settings(max_examples=100, deadline=None)
@given(
    n_items=st.integers(0, 20),
    max_in_flight=st.integers(1, 8),
    chunks=st.lists(st.integers(1, 4), max_size=20),
)
def test_completes_once_the_last_batch_is_delivered_with_demand_exactly_equal(
    n_items: int, max_in_flight: int, chunks: list[int]
) -> None:
    # Decided: a source completes when its fetch function says it is exhausted (last_batch), without
    # waiting for a request beyond the items it had.
    source = from_iterable(range(n_items), max_in_flight)
    demand = Demand()
    seen: list[int] = []
    completed: list[bool] = []

    def on_next(item: int) -> None:
        seen.append(item)
        source.release()

    source.subscribe_with_demand(
        reactivex.Observer(on_next, on_completed=lambda: completed.append(True)), demand
    )
    asked = 0
    for n in chunks:
        n = min(n, n_items - asked)
        if n <= 0:
            break
        demand.request(n)
        asked += n
    assert seen == list(range(asked))
    assert completed == ([True] if asked == n_items and asked > 0 else [])


def test_a_fetch_marked_last_completes_the_source_without_another_fetch() -> None:
    calls: list[int] = []

    def fetch(n: int) -> Observable[Sequence[int]]:
        calls.append(n)
        return reactivex.of(last_batch([1, 2, 3]))

    completed: list[bool] = []
    source = request_n(fetch, max_in_flight=5)
    source.subscribe_with_demand(reactivex.Observer(on_completed=lambda: completed.append(True)), Demand(3))
    assert calls == [3]
    assert completed == [True]


def test_a_subscriber_that_raises_mid_batch_gets_the_rest_handed_back() -> None:
    # Rule 2.13: the raise cancels the subscription; the items of the batch after it were never delivered.
    handed_back: list[int] = []
    source = request_n(lambda n: reactivex.of([0, 1, 2][:n]), 5, hand_back=handed_back.extend)

    def on_next(item: int) -> None:
        raise RuntimeError(f"subscriber bug at {item}")

    demand = Demand()
    source.subscribe_with_demand(reactivex.Observer(on_next), demand)
    with pytest.raises(RuntimeError, match="at 0"):
        demand.request(3)
    assert handed_back == [1, 2]
    assert source.credits.in_flight == 1


def test_a_subscriber_taking_several_items_per_call_gets_each_batch_in_one() -> None:
    calls: list[int] = []
    seen: list[int] = []
    source = request_n(lambda n: reactivex.of([0, 1, 2, 3][:n]), 10)
    demand = Demand()
    source.subscribe_with_demand(_observer(seen, True, calls), demand)
    demand.request(3)
    assert (seen, calls) == ([0, 1, 2], [3])  # the batch in one call, within the demand
    demand.request(1)
    assert seen == [0, 1, 2, 0]  # a single item goes by on_next


def test_a_subscriber_that_raises_taking_several_items_has_them_all() -> None:
    # Rule 2.13 for a call with several items: the subscription is cancelled, and the items were delivered
    # (the subscriber holds them; nothing is handed back to be fetched twice).
    handed_back: list[int] = []
    source = request_n(lambda n: reactivex.of([0, 1, 2][:n]), 5, hand_back=handed_back.extend)

    def on_next_all(items: list[int]) -> None:
        raise RuntimeError(f"subscriber bug at {items}")

    demand = Demand()
    observer = ManyObserver(lambda _: None, lambda _: None, lambda: None, on_next_all)
    source.subscribe_with_demand(observer, demand)
    with pytest.raises(RuntimeError, match=r"at \[0, 1, 2\]"):
        demand.request(3)
    assert handed_back == []
    assert source.credits.in_flight == 3
    demand.request(2)  # cancelled: nothing more comes
    assert source.credits.in_flight == 3


def test_cancelling_from_inside_a_call_of_several_items_hands_nothing_back() -> None:
    handed_back: list[int] = []
    source = request_n(lambda n: reactivex.of(list(range(n))), 8, hand_back=handed_back.extend)
    seen: list[int] = []
    subscription: list[abc.DisposableBase] = []

    def on_next_all(items: list[int]) -> None:
        seen.extend(items)
        subscription[0].dispose()

    demand = Demand()
    observer = ManyObserver(seen.append, lambda _: None, lambda: None, on_next_all)
    subscription.append(source.subscribe_with_demand(observer, demand))
    demand.request(4)
    assert (seen, handed_back, source.credits.in_flight) == ([0, 1, 2, 3], [], 4)


def test_min_fetch_gathers_released_credits_into_one_fetch() -> None:
    calls: list[int] = []
    source = request_n(counting_fetch(iter(range(100)), calls), max_in_flight=10, min_fetch=5)
    demand = Demand()
    seen: list[int] = []
    source.subscribe_with_demand(reactivex.Observer(seen.append), demand)
    demand.request(10)
    assert calls == [10]
    demand.request(5)
    source.release(2)  # 2 of the 5 wanted are free: wait for more rather than fetch 2
    source.release(2)
    assert calls == [10] and len(seen) == 10
    source.release(1)
    assert calls == [10, 5] and len(seen) == 15
    demand.request(1)
    source.release(1)  # wanting 1, one free credit is a whole fetch
    assert calls == [10, 5, 1]


def test_min_fetch_must_fit_the_cap() -> None:
    with pytest.raises(ValueError, match="min_fetch must be from 1 to max_in_flight=4"):
        request_n(counting_fetch(iter(()), []), max_in_flight=4, min_fetch=5)
    with pytest.raises(ValueError, match="min_fetch"):
        request_n(counting_fetch(iter(()), []), max_in_flight=4, min_fetch=0)


@settings(max_examples=200, deadline=None)
@given(
    n_items=st.integers(0, 60),
    max_in_flight=st.integers(1, 12),
    min_fetch_share=st.floats(0.0, 1.0),
    actions=st.lists(st.tuples(st.sampled_from(["request", "release"]), st.integers(1, 6)), max_size=40),
)
def test_min_fetch_keeps_the_cap_fetches_whole_batches_and_never_stalls(
    n_items: int, max_in_flight: int, min_fetch_share: float, actions: list[tuple[str, int]]
) -> None:
    # Every fetch is at least min(min_fetch, what is wanted), never more than is wanted or free, in flight
    # never exceeds the cap, and once everything delivered is released, all that was wanted has come.
    min_fetch = max(1, round(min_fetch_share * max_in_flight))
    items = iter(range(n_items))
    requested = 0
    seen: list[int] = []
    released = 0
    fetches: list[tuple[int, int]] = []  # (n, wanted when asked)
    demand = Demand()

    def fetch(n: int) -> Observable[Sequence[int]]:
        fetches.append((n, demand.pending))  # nothing is held between fetches here: what is wanted
        batch = [item for _, item in zip(range(n), items, strict=False)]
        return reactivex.of(batch) if batch else reactivex.empty()

    source = request_n(fetch, max_in_flight=max_in_flight, min_fetch=min_fetch)
    source.subscribe_with_demand(reactivex.Observer(seen.append), demand)

    def check() -> None:
        assert source.credits.in_flight == len(seen) - released <= max_in_flight
        for n, wanted in fetches:
            assert min(min_fetch, wanted) <= n <= wanted

    for action, n in actions:
        if action == "request":
            requested += n
            demand.request(n)
        else:
            n = min(n, len(seen) - released)
            released += n
            source.release(n)
        check()
    while len(seen) > released:  # the consumer lets go of everything it holds: nothing may be left waiting
        released += 1
        source.release(1)
        check()
    assert len(seen) == min(requested, n_items)
    assert seen == list(range(len(seen)))
