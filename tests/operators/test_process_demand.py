"""process: demand in batches (max_demand / min_demand, as GenStage does it) and prompt sources."""

from __future__ import annotations

import pytest
import reactivex
from _flowkit import TimedSource
from hypothesis import given, settings
from hypothesis import strategies as st
from reactivex import Observable, abc
from reactivex import operators as ops
from reactivex.disposable import CompositeDisposable
from reactivex.observer import Observer
from reactivex.testing import TestScheduler

from flume_rx.operators import Demand, Flowable, Outcome, process, subscribe_upstream


class Ledger:
    """Sits between a source and ``process``; records what the processor holds at every request it makes.

    ``held`` is what the processor has asked for and not seen finish: requested and not yet arrived, plus
    arrived and not finished. ``finished`` is counted by the call itself, before ``process`` hears of it.
    """

    def __init__(self) -> None:
        self.requested = 0
        self.received = 0
        self.finished = 0
        self.requests: list[tuple[int, int]] = []  # (held before the request, n)
        self.most_held = 0

    @property
    def held(self) -> int:
        return self.requested - self.finished

    def __call__(self, source: Observable[int]) -> Flowable[int]:
        def subscribe(
            observer: abc.ObserverBase[int], demand: Demand, scheduler: abc.SchedulerBase | None
        ) -> abc.DisposableBase:
            upstream = Demand()

            def forward() -> None:
                missing = demand.pending - (self.requested - self.received)
                if missing > 0:
                    self.requests.append((self.held, missing))
                    self.requested += missing
                    self.most_held = max(self.most_held, self.held)
                    upstream.request(missing)

            def on_next(item: int) -> None:
                self.received += 1
                demand.take(1)
                observer.on_next(item)

            subscription = CompositeDisposable(demand.on_request(forward))
            subscription.add(
                subscribe_upstream(
                    source, Observer(on_next, observer.on_error, observer.on_completed), upstream, scheduler
                )
            )
            forward()
            return subscription

        return Flowable(subscribe, prompt=getattr(source, "prompt", False))

    def call(self, scheduler: TestScheduler, duration: float) -> Observable[int]:
        def done(_: int) -> int:
            self.finished += 1
            return 0

        return reactivex.timer(duration, scheduler=scheduler).pipe(ops.map(done))


def test_a_slow_single_stage_still_fetches_in_batches() -> None:
    scheduler = TestScheduler()
    source = TimedSource(scheduler, [0.0] * 30)
    ledger = Ledger()
    outcomes: list[Outcome[int, int]] = []
    source.pipe(
        ledger,
        process(lambda _i: ledger.call(scheduler, 10.0), 1, max_demand=10, min_demand=4, scheduler=scheduler),
    ).subscribe(outcomes.append, scheduler=scheduler)
    scheduler.advance_to(1000.0)

    assert len(outcomes) == 30
    # 10 at subscribe, then 6 each time the ten held fall to four.
    assert [n for _, n in ledger.requests][:4] == [10, 6, 6, 6]
    assert all(held <= 4 for held, _ in ledger.requests[1:])


def test_min_demand_defaults_to_half_of_max_demand() -> None:
    scheduler = TestScheduler()
    source = TimedSource(scheduler, [0.0] * 12)
    ledger = Ledger()
    source.pipe(
        ledger, process(lambda _i: ledger.call(scheduler, 1.0), 2, max_demand=8, scheduler=scheduler)
    ).subscribe(scheduler=scheduler)
    scheduler.advance_to(100.0)

    assert ledger.requests[:2] == [(0, 8), (4, 4)]


def test_a_prompt_source_is_never_read_ahead() -> None:
    # A throttle's items must start on arrival (their tokens lapse): ask for one item per free stage only.
    scheduler = TestScheduler()
    source = TimedSource(scheduler, [0.0] * 9)
    source.prompt = True
    ledger = Ledger()
    outcomes: list[Outcome[int, int]] = []
    source.pipe(
        ledger, process(lambda _i: ledger.call(scheduler, 5.0), 3, max_demand=50, scheduler=scheduler)
    ).subscribe(outcomes.append, scheduler=scheduler)
    scheduler.advance_to(100.0)

    assert len(outcomes) == 9
    assert ledger.most_held == 3
    assert ledger.requests[0] == (0, 3)


def test_a_lifted_plain_operator_keeps_its_source_prompt() -> None:
    source = TimedSource(TestScheduler(), [])
    source.prompt = True
    assert source.pipe(ops.map(lambda x: x)).prompt
    assert not TimedSource(TestScheduler(), []).pipe(ops.map(lambda x: x)).prompt


@pytest.mark.parametrize(
    ("max_demand", "min_demand", "message"),
    [(0, None, "max_demand must be >= 1"), (4, 4, "min_demand must be"), (4, -1, "min_demand must be")],
)
def test_demand_bounds_are_validated_eagerly(max_demand: int, min_demand: int | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        process(lambda x: reactivex.just(x), 2, max_demand=max_demand, min_demand=min_demand)


@settings(max_examples=150, deadline=None)
@given(
    arrivals=st.lists(st.integers(0, 40).map(float), min_size=0, max_size=40),
    durations=st.lists(st.integers(0, 12), min_size=40, max_size=40),
    stages=st.integers(1, 6),
    max_demand=st.integers(1, 12),
    low_share=st.floats(0.0, 0.99),
    downstream=st.none() | st.lists(st.tuples(st.integers(0, 80), st.integers(1, 6)), max_size=6),
    prompt=st.booleans(),
)
def test_held_never_above_max_demand_and_refills_only_at_the_low_mark(
    arrivals: list[float],
    durations: list[int],
    stages: int,
    max_demand: int,
    low_share: float,
    downstream: list[tuple[int, int]] | None,
    prompt: bool,
) -> None:
    min_demand = int(low_share * max_demand)
    scheduler = TestScheduler()
    source = TimedSource(scheduler, arrivals)
    source.prompt = prompt
    ledger = Ledger()
    running = peak = 0

    def call(i: int) -> Observable[int]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)

        def finished(value: int) -> int:
            nonlocal running
            running -= 1
            return value

        return ledger.call(scheduler, float(durations[i])).pipe(ops.map(finished))

    outcomes: list[Outcome[int, int]] = []
    pipeline = source.pipe(
        ledger,
        process(call, stages, max_demand=max_demand, min_demand=min_demand, scheduler=scheduler),
    )
    if downstream is None:
        pipeline.subscribe(outcomes.append, scheduler=scheduler)
        wanted = len(arrivals)
    else:
        demand = Demand()
        pipeline.subscribe_with_demand(Observer(outcomes.append), demand, scheduler)
        for at, n in downstream:
            scheduler.schedule_absolute(float(at), lambda _s, _st, n=n: demand.request(n))
        wanted = min(len(arrivals), sum(n for _, n in downstream))
    scheduler.advance_to(10_000.0)

    most, least = (
        (min(max_demand, stages), min(max_demand, stages) - 1) if prompt else (max_demand, min_demand)
    )
    assert ledger.most_held <= most
    assert all(held <= least for held, _ in ledger.requests)
    assert peak <= stages
    assert sorted(o.item for o in outcomes) == list(range(wanted))
