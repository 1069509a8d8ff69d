"""buffer_with_time_or_count: exact virtual-time behaviour, request-n, properties and a two-thread race."""

from __future__ import annotations

import sys
import threading
import time

import pytest
import reactivex
from _flowkit import Probe, TimedSource
from hypothesis import given, settings
from hypothesis import strategies as st
from reactivex import operators as ops
from reactivex.scheduler import TimeoutScheduler
from reactivex.subject import Subject
from reactivex.testing import ReactiveTest, TestScheduler

from flume_rx.operators import Demand, buffer_with_time_or_count

on_next, on_completed, on_error = ReactiveTest.on_next, ReactiveTest.on_completed, ReactiveTest.on_error
subscribe = ReactiveTest.subscribe


def test_batches_close_on_count_on_age_and_on_completion() -> None:
    scheduler = TestScheduler()
    xs = scheduler.create_hot_observable(
        on_next(210, 1),
        on_next(220, 2),
        on_next(230, 3),
        on_next(300, 4),
        on_next(500, 5),
        on_next(520, 6),
        on_completed(540),
    )
    flushes: list[tuple[int, str]] = []

    results = scheduler.start(
        lambda: xs.pipe(
            buffer_with_time_or_count(50.0, 3, scheduler=scheduler, on_flush=lambda *f: flushes.append(f))
        )
    )

    assert results.messages == [
        on_next(230, [1, 2, 3]),
        on_next(350, [4]),
        on_next(540, [5, 6]),
        on_completed(540),
    ]
    assert flushes == [(3, "count"), (1, "time"), (2, "complete")]
    assert xs.subscriptions == [subscribe(200, 540)]


def test_the_age_timer_starts_at_each_batch_first_item_and_idle_time_emits_nothing() -> None:
    scheduler = TestScheduler()
    xs = scheduler.create_hot_observable(on_next(210, "a"), on_next(255, "b"), on_next(400, "c"))

    results = scheduler.start(lambda: xs.pipe(buffer_with_time_or_count(50.0, 10, scheduler=scheduler)))

    assert results.messages == [on_next(260, ["a", "b"]), on_next(450, ["c"])]


def test_errors_pass_downstream() -> None:
    scheduler = TestScheduler()
    failure = ValueError("boom")
    xs = scheduler.create_hot_observable(on_next(210, 1), on_error(220, failure))

    results = scheduler.start(lambda: xs.pipe(buffer_with_time_or_count(50.0, 3, scheduler=scheduler)))

    assert results.messages == [on_error(220, failure)]


def test_plain_subscription_works_as_an_ordinary_operator() -> None:
    batches = reactivex.from_iterable(range(10)).pipe(buffer_with_time_or_count(1.0, 3), ops.to_list()).run()
    assert batches == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


def test_requests_count_items_per_requested_batch() -> None:
    scheduler = TestScheduler()
    source = TimedSource(scheduler, [0.0] * 10)
    demand = Demand()
    batches: list[list[int]] = []
    source.pipe(buffer_with_time_or_count(5.0, 3, scheduler=scheduler)).subscribe_with_demand(
        reactivex.Observer(batches.append), demand, scheduler
    )
    scheduler.advance_to(100.0)
    assert source.emitted == []

    demand.request(1)
    scheduler.advance_to(200.0)
    assert batches == [[0, 1, 2]]
    assert len(source.emitted) == 3

    demand.request(5)
    scheduler.advance_to(300.0)
    assert batches == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


def test_a_batch_closed_by_time_waits_for_demand() -> None:
    scheduler = TestScheduler()
    xs = scheduler.create_hot_observable(on_next(10, "a"))
    demand = Demand()
    seen: list[tuple[float, list[str]]] = []
    operator = buffer_with_time_or_count(5.0, 3, scheduler=scheduler)
    operator(xs).subscribe_with_demand(
        reactivex.Observer(lambda b: seen.append((float(scheduler.clock), b))), demand, scheduler
    )
    scheduler.advance_to(50.0)
    assert seen == []
    demand.request(1)
    assert seen == [(50.0, ["a"])]


def test_a_batch_closed_by_time_withdraws_the_rest_of_its_requests() -> None:
    # One batch of 3 is asked for; its one item arrives at 0 and the timer sends it alone at 5. The two
    # items still requested for it must not come in later and sit in a batch nobody asked for: a worker
    # freeing its stage at 50 would start them 40 ticks after they left a throttle above.
    scheduler = TestScheduler()
    source = TimedSource(scheduler, [0.0, 10.0, 10.0, 500.0])
    demand = Demand()
    seen: list[tuple[float, list[int]]] = []
    source.pipe(buffer_with_time_or_count(5.0, 3, scheduler=scheduler)).subscribe_with_demand(
        reactivex.Observer(lambda b: seen.append((float(scheduler.clock), b))), demand, scheduler
    )
    demand.request(1)
    scheduler.advance_to(49.0)
    assert seen == [(5.0, [0])]
    assert source.emitted == [(0.0, 0)]  # 1 and 2 stay with the source, unrequested
    scheduler.schedule_absolute(50.0, lambda _s, _st: demand.request(1))
    scheduler.advance_to(100.0)
    assert seen == [(5.0, [0]), (55.0, [1, 2])]
    assert source.emitted[1:] == [(50.0, 1), (50.0, 2)]


@pytest.mark.parametrize(
    ("timespan", "count", "message"), [(0.0, 1, "timespan"), (-1.0, 1, "timespan"), (1.0, 0, "count")]
)
def test_validates_eagerly(timespan: float, count: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        buffer_with_time_or_count(timespan, count)


@settings(max_examples=150, deadline=None)
@given(
    arrivals=st.lists(st.integers(0, 400).map(lambda quarter: quarter / 4), min_size=0, max_size=40),
    count=st.integers(1, 6),
    timespan=st.integers(1, 20).map(float),
)
def test_batches_are_bounded_complete_ordered_and_timely(
    arrivals: list[float], count: int, timespan: float
) -> None:
    scheduler = TestScheduler()
    source = TimedSource(scheduler, arrivals)
    flushed: list[tuple[float, list[int]]] = []
    completed: list[float] = []
    source.pipe(buffer_with_time_or_count(timespan, count, scheduler=scheduler)).subscribe(
        lambda batch: flushed.append((float(scheduler.clock), batch)),
        lambda error: pytest.fail(f"unexpected error {error!r}"),
        lambda: completed.append(float(scheduler.clock)),
        scheduler=scheduler,
    )
    scheduler.advance_to(10_000.0)

    arrived = {item: at for at, item in source.emitted}
    assert [item for _, batch in flushed for item in batch] == list(range(len(arrivals)))
    for at, batch in flushed:
        assert 1 <= len(batch) <= count
        assert all(at - arrived[item] <= timespan + 1e-9 for item in batch)
    assert completed == [max(arrivals, default=0.0)]


@settings(max_examples=150, deadline=None)
@given(
    arrivals=st.lists(st.integers(0, 60).map(float), min_size=1, max_size=30),
    count=st.integers(1, 5),
    timespan=st.integers(1, 10).map(float),
    requests=st.lists(st.tuples(st.integers(0, 80), st.integers(1, 4)), max_size=8),
)
def test_never_requests_more_than_the_requested_batches_can_hold(
    arrivals: list[float], count: int, timespan: float, requests: list[tuple[int, int]]
) -> None:
    scheduler = TestScheduler()
    source = TimedSource(scheduler, arrivals)
    above, below = Probe("source"), Probe("batches")
    demand = Demand()
    flushed: list[tuple[float, list[int]]] = []
    source.pipe(
        above, buffer_with_time_or_count(timespan, count, scheduler=scheduler), below
    ).subscribe_with_demand(
        reactivex.Observer(lambda b: flushed.append((float(scheduler.clock), b))), demand, scheduler
    )
    for at, n in requests:
        scheduler.schedule_absolute(float(at), lambda _s, _st, n=n: demand.request(n))
    scheduler.advance_to(10_000.0)
    batches = [batch for _, batch in flushed]

    requested_batches = sum(n for _, n in requests)
    assert above.violations == below.violations == []
    assert above.requested <= requested_batches * count
    assert len(batches) <= requested_batches
    # An item arrives only while a requested batch has room for it, so none waits past the timespan.
    arrived = {item: at for at, item in source.emitted}
    assert all(at - arrived[item] <= timespan + 1e-9 for at, batch in flushed for item in batch)
    assert all(1 <= len(batch) <= count for batch in batches)
    assert [item for batch in batches for item in batch] == list(range(sum(len(b) for b in batches)))


def test_timer_and_on_next_racing_on_two_threads_lose_and_repeat_nothing() -> None:
    # The timer fires on TimeoutScheduler threads while a producer thread pushes: the race of RxPY #694.
    total = 4000
    subject: Subject[int] = Subject()
    batches: list[list[int]] = []
    done = threading.Event()
    sizes: dict[str, int] = {}

    def on_flush(size: int, trigger: str) -> None:
        sizes[trigger] = sizes.get(trigger, 0) + size

    subject.pipe(
        buffer_with_time_or_count(0.0002, 9, scheduler=TimeoutScheduler.singleton(), on_flush=on_flush)
    ).subscribe(batches.append, lambda e: done.set(), done.set)

    def produce() -> None:
        for item in range(total):
            subject.on_next(item)
            if item % 7 == 0:
                time.sleep(0.0001)  # let timers fire between items, in the middle of batches
        subject.on_completed()

    producer = threading.Thread(target=produce)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often so the two paths interleave inside the operator
    try:
        producer.start()
        producer.join(timeout=60)
        assert done.wait(timeout=60)
    finally:
        sys.setswitchinterval(interval)

    assert [item for batch in batches for item in batch] == list(range(total))
    assert all(1 <= len(batch) <= 9 for batch in batches)
    assert sum(sizes.values()) == total
    assert sizes.get("time", 0) > 0, "the timer never won a race; the test did not exercise the time path"
