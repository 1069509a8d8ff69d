"""The request-n protocol: Demand, Flowable, lifting plain operators, subscribe_upstream."""

from __future__ import annotations

import doctest
import importlib
import threading

import pytest
import reactivex
from _flowkit import TimedSource
from hypothesis import given, settings
from hypothesis import strategies as st
from reactivex import abc
from reactivex import operators as ops
from reactivex.testing import TestScheduler

from flume_rx.operators import UNBOUNDED, Demand, Flowable, subscribe_upstream


def test_demand_counts_requests_and_takes() -> None:
    demand = Demand(2)
    calls: list[int] = []
    listener = demand.on_request(lambda: calls.append(demand.pending))
    demand.request(3)
    assert demand.take(4) == 4
    assert demand.take(4) == 1
    assert demand.pending == 0
    listener.dispose()
    demand.request(1)
    assert calls == [5]


def test_withdraw_takes_back_only_unserved_requests_and_tells_listeners() -> None:
    demand = Demand(5)
    calls: list[int] = []
    demand.on_request(lambda: calls.append(demand.pending))
    assert demand.take(2) == 2
    assert demand.withdraw(10) == 3  # the two taken are the producer's to deliver
    assert demand.withdraw(1) == 0
    assert calls == [0]  # told once: nothing changed the second time
    assert Demand.unlimited().withdraw(3) == 0


def test_unlimited_demand_grants_everything() -> None:
    demand = Demand.unlimited()
    assert demand.unbounded
    assert demand.pending == UNBOUNDED
    assert demand.take(10**9) == 10**9
    demand.request(1)
    assert demand.pending == UNBOUNDED


@settings(max_examples=50, deadline=None)
@given(n=st.integers(max_value=0), delivered=st.integers(0, 3))
def test_request_of_less_than_one_returns_and_reaches_the_subscriber_as_on_error(
    n: int, delivered: int
) -> None:
    # Rules 3.9 and 3.16: request returns normally, the subscriber hears on_error naming n, the source stops.
    scheduler = TestScheduler()
    source = TimedSource(scheduler, [0.0] * 5)
    lifted = source.pipe(ops.map(lambda x: x * 10))
    demand = Demand(delivered)
    seen: list[int] = []
    errors: list[Exception] = []
    completions: list[bool] = []
    subscription = lifted.subscribe_with_demand(
        reactivex.Observer(seen.append, errors.append, lambda: completions.append(True)), demand, scheduler
    )
    scheduler.advance_to(1.0)
    demand.request(n)
    assert len(errors) == 1 and f"got {n}" in str(errors[0])
    demand.request(5)
    scheduler.advance_to(2.0)
    assert seen == [x * 10 for x in range(delivered)]
    assert len(source.emitted) == delivered
    assert completions == []
    subscription.dispose()


def test_an_invalid_request_made_before_subscribing_fails_the_subscription_at_once() -> None:
    scheduler = TestScheduler()
    source = TimedSource(scheduler, [0.0] * 3)
    demand = Demand(2)
    demand.request(0)
    errors: list[Exception] = []
    source.subscribe_with_demand(reactivex.Observer(on_error=errors.append), demand, scheduler)
    scheduler.advance_to(1.0)
    assert [str(e) for e in errors] == [str(demand.invalid)]
    assert source.emitted == []


def test_an_invalid_request_from_another_thread_waits_for_the_on_next_under_way() -> None:
    # Rule 1.3: on_error must not overlap an on_next. The subscriber holds its on_next open until the other
    # thread's request(0) has returned; the error must come after that on_next, on the emitting thread.
    scheduler = TestScheduler()
    source = TimedSource(scheduler, [0.0] * 3)
    demand = Demand(3)
    events: list[str] = []
    in_on_next = threading.Event()
    rejected = threading.Event()

    def on_next(item: int) -> None:
        events.append(f"next {item} starts")
        if item == 0:
            in_on_next.set()
            assert rejected.wait(10)
        events.append(f"next {item} ends")

    def reject() -> None:
        assert in_on_next.wait(10)
        demand.request(-3)
        events.append("request returned")
        rejected.set()

    other = threading.Thread(target=reject)
    other.start()
    source.subscribe_with_demand(
        reactivex.Observer(on_next, lambda e: events.append(f"error: {e}")), demand, scheduler
    )
    scheduler.advance_to(1.0)
    other.join()
    assert events[:3] == ["next 0 starts", "request returned", "next 0 ends"]
    assert events[3:] == [f"error: {demand.invalid}"]


def test_a_subscriber_that_raises_cancels_its_subscription() -> None:
    # Rule 2.13: a subscriber that breaks the rule by raising is treated as one that cancelled; the error goes
    # on to whoever made the producer emit, here the caller of request.
    scheduler = TestScheduler()
    source = TimedSource(scheduler, [0.0] * 3)
    seen: list[int] = []

    def on_next(item: int) -> None:
        seen.append(item)
        raise RuntimeError("subscriber bug")

    demand = Demand()
    source.subscribe_with_demand(reactivex.Observer(on_next), demand, scheduler)
    scheduler.advance_to(1.0)
    with pytest.raises(RuntimeError, match="subscriber bug"):
        demand.request(3)
    demand.request(1)
    assert seen == [0]
    assert [item for _, item in source.emitted] == [0]


def test_initial_demand_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="-2"):
        Demand(-2)


def test_concurrent_takes_never_overdraw() -> None:
    demand = Demand(10_000)
    taken: list[int] = []

    def worker() -> None:
        got = 0
        for _ in range(5_000):
            got += demand.take(1)
        taken.append(got)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(taken) == 10_000
    assert demand.pending == 0


def test_a_flowable_emits_only_what_was_requested() -> None:
    scheduler = TestScheduler()
    source = TimedSource(scheduler, [0.0] * 5)
    demand = Demand()
    seen: list[int] = []
    source.subscribe_with_demand(reactivex.Observer(seen.append), demand, scheduler)
    scheduler.advance_to(1.0)
    assert seen == []
    demand.request(2)
    assert seen == [0, 1]


def test_a_plain_subscriber_sees_an_unbounded_demand() -> None:
    scheduler = TestScheduler()
    source = TimedSource(scheduler, [0.0, 1.0, 2.0])
    seen: list[int] = []
    source.subscribe(seen.append, scheduler=scheduler)
    scheduler.advance_to(5.0)
    assert seen == [0, 1, 2]


def test_plain_operators_in_a_flowable_pipe_pass_demand_through() -> None:
    scheduler = TestScheduler()
    source = TimedSource(scheduler, [0.0] * 6)
    lifted = source.pipe(ops.map(lambda x: x * 10), ops.do_action(lambda _: None))
    assert isinstance(lifted, Flowable)
    demand = Demand()
    seen: list[int] = []
    lifted.subscribe_with_demand(reactivex.Observer(seen.append), demand, scheduler)
    demand.request(3)
    scheduler.advance_to(1.0)
    assert seen == [0, 10, 20]
    assert len(source.emitted) == 3


def test_subscribe_upstream_subscribes_plain_observables_plainly() -> None:
    seen: list[int] = []
    subscribe_upstream(reactivex.of(1, 2, 3), reactivex.Observer(seen.append), Demand(1), None)
    assert seen == [1, 2, 3]


def test_an_exception_while_subscribing_becomes_on_error() -> None:
    def broken(
        _observer: abc.ObserverBase[int], _demand: Demand, _scheduler: abc.SchedulerBase | None
    ) -> abc.DisposableBase:
        raise RuntimeError("cannot subscribe")

    errors: list[Exception] = []
    Flowable(broken).subscribe_with_demand(reactivex.Observer(on_error=errors.append), Demand(1))
    assert [str(e) for e in errors] == ["cannot subscribe"]


@pytest.mark.parametrize("module", ["_flow", "_request_n", "_throttle", "_batch", "_retry", "_process"])
def test_docstring_examples_run(module: str) -> None:
    result = doctest.testmod(
        importlib.import_module(f"flume_rx.operators.{module}"), optionflags=doctest.ELLIPSIS
    )
    assert result.attempted > 0
    assert result.failed == 0
