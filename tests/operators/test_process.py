"""process: bounded concurrency, one Outcome per item, request-n, and the asyncio/thread call helpers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections.abc import Callable

import pytest
import reactivex
from _flowkit import Probe, TimedSource
from hypothesis import given, settings
from hypothesis import strategies as st
from reactivex import Observable
from reactivex import operators as ops
from reactivex.scheduler.eventloop import AsyncIOScheduler
from reactivex.testing import ReactiveTest, TestScheduler

from flume_rx.operators import Demand, Outcome, from_async, in_thread, process

on_next, on_completed, on_error = ReactiveTest.on_next, ReactiveTest.on_completed, ReactiveTest.on_error


def after(scheduler: TestScheduler, delay: float, value: str) -> Observable[str]:
    return reactivex.timer(delay, scheduler=scheduler).pipe(ops.map(lambda _: value))


def test_at_most_stages_calls_run_and_each_item_gets_an_outcome() -> None:
    scheduler = TestScheduler()
    xs = scheduler.create_hot_observable(
        on_next(210, "a"), on_next(211, "b"), on_next(212, "c"), on_completed(215)
    )

    results = scheduler.start(
        lambda: xs.pipe(process(lambda x: after(scheduler, 10.0, x.upper()), 2, scheduler=scheduler))
    )

    assert results.messages == [
        on_next(220, Outcome("a", "A", None, 210.0, 220.0)),
        on_next(221, Outcome("b", "B", None, 211.0, 221.0)),
        on_next(230, Outcome("c", "C", None, 220.0, 230.0)),
        on_completed(230),
    ]


def test_failures_are_outcomes_not_stream_errors() -> None:
    scheduler = TestScheduler()
    boom = KeyError("missing")

    def call(x: str) -> Observable[str]:
        if x == "raises":
            raise boom
        if x == "errors":
            return reactivex.throw(ValueError("rejected"))
        if x == "empty":
            return reactivex.empty()
        if x == "hangs":
            return reactivex.never()
        return reactivex.of("first", "second")

    xs = scheduler.create_hot_observable(
        on_next(210, "raises"),
        on_next(211, "errors"),
        on_next(212, "empty"),
        on_next(213, "hangs"),
        on_next(214, "fine"),
        on_completed(220),
    )

    results = scheduler.start(lambda: xs.pipe(process(call, 10, scheduler=scheduler, timeout_s=30.0)))

    outcomes = {m.value.value.item: m.value.value for m in results.messages if m.value.kind == "N"}
    assert outcomes["raises"].error is boom and not outcomes["raises"].ok
    assert isinstance(outcomes["errors"].error, ValueError)
    assert outcomes["empty"].ok and outcomes["empty"].value is None
    assert isinstance(outcomes["hangs"].error, TimeoutError)
    assert outcomes["hangs"].finished_at == 243.0
    assert outcomes["fine"].ok and outcomes["fine"].value == "first"
    assert results.messages[-1] == on_completed(243)


def test_a_source_error_follows_the_running_calls_outcomes() -> None:
    scheduler = TestScheduler()
    failure = ConnectionError("source lost")
    xs = scheduler.create_hot_observable(on_next(210, "a"), on_error(212, failure))

    results = scheduler.start(
        lambda: xs.pipe(process(lambda x: after(scheduler, 10.0, x), 2, scheduler=scheduler))
    )

    assert results.messages == [on_next(220, Outcome("a", "a", None, 210.0, 220.0)), on_error(220, failure)]


def test_with_min_demand_one_below_stages_it_requests_one_per_finished_call() -> None:
    scheduler = TestScheduler()
    source = TimedSource(scheduler, [0.0] * 7)
    probe = Probe("source")
    outcomes: list[Outcome[int, str]] = []
    source.pipe(
        probe,
        process(lambda i: after(scheduler, 10.0 + i, str(i)), 3, min_demand=2, scheduler=scheduler),
    ).subscribe(outcomes.append, scheduler=scheduler)
    assert probe.requested == 3
    scheduler.advance_to(1000.0)

    assert [t for t, _ in source.emitted] == [0.0, 0.0, 0.0, 10.0, 11.0, 12.0, 23.0]
    assert probe.requested == 7  # the source completed with its last item, so nothing more was asked
    assert probe.violations == []


def test_downstream_demand_limits_what_is_started() -> None:
    scheduler = TestScheduler()
    source = TimedSource(scheduler, [0.0] * 10)
    demand = Demand()
    outcomes: list[Outcome[int, str]] = []
    process(lambda i: after(scheduler, 1.0, str(i)), 4, scheduler=scheduler)(source).subscribe_with_demand(
        reactivex.Observer(outcomes.append), demand, scheduler
    )
    demand.request(2)
    scheduler.advance_to(100.0)
    assert len(source.emitted) == 2
    assert [o.item for o in outcomes] == [0, 1]
    demand.request(10)
    scheduler.advance_to(200.0)
    assert sorted(o.item for o in outcomes) == list(range(10))


@pytest.mark.parametrize(("stages", "timeout_s", "message"), [(0, None, "stages"), (1, 0.0, "timeout_s")])
def test_validates_eagerly(stages: int, timeout_s: float | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        process(lambda x: reactivex.just(x), stages, timeout_s=timeout_s)


def test_plain_subscription_works_as_an_ordinary_operator() -> None:
    outcomes = (
        reactivex.from_iterable(range(5))
        .pipe(process(lambda x: reactivex.just(x * x), 2), ops.to_list())
        .run()
    )
    assert sorted(o.value for o in outcomes if o.value is not None) == [0, 1, 4, 9, 16]


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    # Half-open [start, finish): a call that finishes when another starts does not overlap it.
    events = sorted(
        [(s, 1) for s, _ in intervals] + [(f, -1) for _, f in intervals], key=lambda e: (e[0], e[1])
    )
    running = best = 0
    for _, change in events:
        running += change
        best = max(best, running)
    return best


@settings(max_examples=120, deadline=None)
@given(
    arrivals=st.lists(st.integers(0, 50).map(float), min_size=0, max_size=25),
    durations=st.lists(st.integers(0, 15), min_size=25, max_size=25),
    failing=st.sets(st.integers(0, 24)),
    stages=st.integers(1, 5),
    requests=st.none() | st.lists(st.tuples(st.integers(0, 100), st.integers(1, 5)), max_size=6),
)
def test_concurrency_is_bounded_and_every_item_has_one_outcome(
    arrivals: list[float],
    durations: list[int],
    failing: set[int],
    stages: int,
    requests: list[tuple[int, int]] | None,
) -> None:
    scheduler = TestScheduler()
    source = TimedSource(scheduler, arrivals)
    probe = Probe("source")

    def call(i: int) -> Observable[str]:
        if i in failing:
            return reactivex.timer(float(durations[i]), scheduler=scheduler).pipe(
                ops.flat_map(lambda _: reactivex.throw(RuntimeError(str(i))))
            )
        return after(scheduler, float(durations[i]), str(i))

    outcomes: list[Outcome[int, str]] = []
    completed: list[float] = []
    pipeline = source.pipe(probe, process(call, stages, scheduler=scheduler))
    observer = reactivex.Observer(
        outcomes.append, lambda e: pytest.fail(f"unexpected {e!r}"), lambda: completed.append(0.0)
    )
    if requests is None:
        pipeline.subscribe(observer, scheduler=scheduler)
        requested = len(arrivals)
    else:
        demand = Demand()
        pipeline.subscribe_with_demand(observer, demand, scheduler)
        for at, n in requests:
            scheduler.schedule_absolute(float(at), lambda _s, _st, n=n: demand.request(n))
        requested = sum(n for _, n in requests)
    scheduler.advance_to(10_000.0)

    assert probe.violations == []
    assert _max_overlap([(o.started_at, o.finished_at) for o in outcomes]) <= stages
    assert sorted(o.item for o in outcomes) == list(range(min(requested, len(arrivals))))
    assert all(o.ok == (o.item not in failing) for o in outcomes)
    assert all(o.finished_at - o.started_at == durations[o.item] for o in outcomes)
    assert len(source.emitted) <= min(requested, len(arrivals))
    assert bool(completed) == (len(outcomes) == len(arrivals))


def _run_on_loop(
    make_call: Callable[[asyncio.AbstractEventLoop], Callable[[int], Observable[int]]], stages: int
) -> tuple[list[Outcome[int, int]], set[int]]:
    async def main() -> tuple[list[Outcome[int, int]], set[int]]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[Outcome[int, int]]] = loop.create_future()
        threads: set[int] = set()

        def collect(outcomes: list[Outcome[int, int]]) -> None:
            threads.add(threading.get_ident())
            done.set_result(outcomes)

        reactivex.from_iterable(range(8)).pipe(
            process(make_call(loop), stages),
            ops.do_action(lambda _: threads.add(threading.get_ident())),
            ops.to_list(),
        ).subscribe(collect, done.set_exception, scheduler=AsyncIOScheduler(loop))
        return await asyncio.wait_for(done, 30), threads

    return asyncio.run(main())


class _CountingSquare:
    """An async call that squares (and rejects 5), counting how many of it run at once."""

    def __init__(self) -> None:
        self.running = self.peak = 0

    async def __call__(self, x: int) -> int:
        self.running += 1
        self.peak = max(self.peak, self.running)
        await asyncio.sleep(0.001 * (x % 3))
        self.running -= 1
        if x == 5:
            raise ValueError("five is rejected")
        return x * x


def test_from_async_runs_coroutines_on_the_loop_with_bounded_concurrency() -> None:
    square = _CountingSquare()

    outcomes, _ = _run_on_loop(lambda _loop: from_async(square), 3)

    assert sorted(o.item for o in outcomes) == list(range(8))
    assert {o.item: o.value for o in outcomes if o.ok} == {x: x * x for x in range(8) if x != 5}
    assert [type(o.error) for o in outcomes if not o.ok] == [ValueError]
    assert square.peak <= 3


def test_in_thread_runs_in_the_executor_and_delivers_on_the_loop() -> None:
    worker_threads: set[int] = set()
    loop_thread: list[int] = []

    def slow_double(x: int) -> int:
        worker_threads.add(threading.get_ident())
        if x == 3:
            raise OSError("disk full")
        return 2 * x

    with concurrent.futures.ThreadPoolExecutor(4) as pool:

        def make(loop: asyncio.AbstractEventLoop) -> Callable[[int], Observable[int]]:
            loop_thread.append(threading.get_ident())
            return in_thread(slow_double, pool)

        outcomes, delivery_threads = _run_on_loop(make, 2)

    assert {o.item: o.value for o in outcomes if o.ok} == {x: 2 * x for x in range(8) if x != 3}
    assert [type(o.error) for o in outcomes if not o.ok] == [OSError]
    assert loop_thread[0] not in worker_threads
    assert delivery_threads == {loop_thread[0]}


def test_from_async_without_a_loop_is_an_outcome_naming_the_fix() -> None:
    async def nothing(x: int) -> int:
        return x

    outcome = reactivex.just(1).pipe(process(from_async(nothing), 1)).run()
    assert isinstance(outcome.error, RuntimeError)
    assert "running asyncio loop" in str(outcome.error)


def test_in_thread_without_a_loop_delivers_from_the_worker() -> None:
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        outcomes = (
            reactivex.of(1, 2, 3).pipe(process(in_thread(lambda x: x + 1, pool), 2), ops.to_list()).run()
        )
    assert sorted(o.value for o in outcomes if o.value is not None) == [2, 3, 4]


def test_coroutine_calls_run_as_tasks_with_bounded_concurrency() -> None:
    square = _CountingSquare()

    outcomes, threads = _run_on_loop(lambda _loop: square, 3)

    assert {o.item: o.value for o in outcomes if o.ok} == {x: x * x for x in range(8) if x != 5}
    assert [type(o.error) for o in outcomes if not o.ok] == [ValueError]
    assert square.peak <= 3
    assert len(threads) == 1


def test_a_coroutine_call_past_its_timeout_is_cancelled() -> None:
    cancelled: list[int] = []

    async def hang(x: int) -> int:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(x)
            raise
        return x

    async def main() -> list[Outcome[int, int]]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[Outcome[int, int]]] = loop.create_future()
        reactivex.of(1, 2).pipe(process(hang, 2, timeout_s=0.01), ops.to_list()).subscribe(
            done.set_result, done.set_exception, scheduler=AsyncIOScheduler(loop)
        )
        outcomes = await asyncio.wait_for(done, 30)
        await asyncio.sleep(0)  # let the cancelled tasks run their handlers
        return outcomes

    outcomes = asyncio.run(main())
    assert sorted(o.item for o in outcomes) == [1, 2]
    assert all(isinstance(o.error, TimeoutError) for o in outcomes)
    assert sorted(cancelled) == [1, 2]


def test_what_a_coroutine_call_sets_in_its_context_stays_in_its_task() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen_downstream: list[str] = []

    async def set_var(x: int) -> int:
        var.set(f"call {x}")
        return x

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        reactivex.of(1, 2, 3).pipe(process(set_var, 1)).subscribe(
            lambda _outcome: seen_downstream.append(var.get()),
            done.set_exception,
            lambda: done.set_result(None),
            scheduler=AsyncIOScheduler(loop),
        )
        await asyncio.wait_for(done, 30)

    asyncio.run(main())
    assert seen_downstream == ["unset"] * 3


def test_a_coroutine_call_without_a_loop_is_an_outcome() -> None:
    async def nothing(x: int) -> int:
        return x

    outcome = reactivex.just(1).pipe(process(nothing, 1)).run()
    assert isinstance(outcome.error, RuntimeError)
    assert "running asyncio loop" in str(outcome.error)


def test_a_coroutine_call_that_finishes_leaves_its_task_done_not_cancelled() -> None:
    tasks: list[asyncio.Task[object]] = []

    async def note(x: int) -> int:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        if x == 2:
            raise ValueError("two")
        return x

    outcomes, _ = _run_on_loop(lambda _loop: note, 2)

    assert len(outcomes) == len(tasks) == 8
    assert not any(task.cancelled() for task in tasks)
