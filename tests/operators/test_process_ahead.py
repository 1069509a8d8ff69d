"""process: calls that wait in a queue of their own (Queued) go ahead of a free stage, never past the bounds."""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest
import reactivex
from hypothesis import given, settings
from hypothesis import strategies as st
from reactivex import Observable
from reactivex.testing import TestScheduler

from flume_rx.operators import (
    Demand,
    ManyObserver,
    Outcome,
    PullSource,
    Queued,
    begin_queued,
    from_iterable,
    process,
    report_queued,
    subscribe_upstream,
)


@dataclass
class Pool:
    """A fake thread pool on the loop: ``threads`` workers take Queued calls in order, each for some turns.

    Counts what runs at once (Queued calls a worker took, and the async calls) and what was handed over and
    has no outcome yet, at every step.
    """

    threads: int
    reported: bool = False  # outcomes go to report_queued in batches, not through each call's future
    calls: asyncio.Queue[tuple[Queued[int], asyncio.Future[int] | None, int, int]] = field(
        default_factory=asyncio.Queue
    )
    finished: list[tuple[Queued[Any], Any, BaseException | None]] = field(default_factory=list)
    running: int = 0
    most_running: int = 0
    handed: int = 0
    most_handed: int = 0
    began_at: dict[int, float] = field(default_factory=dict)

    def run(self, delta: int) -> None:
        self.running += delta
        self.most_running = max(self.most_running, self.running)

    async def worker(self) -> None:
        while True:
            queued, future, index, turns = await self.calls.get()
            if queued.cancelled():
                continue
            self.run(+1)
            self.began_at[index] = time.time()
            queued.begin()  # the real pool notes a take on the loop before the call's outcome, as here
            for _ in range(turns):
                await asyncio.sleep(0)
            self.run(-1)
            if future is None:
                self.finished.append((queued, index, None))
            else:
                future.set_result(index)

    async def reporter(self) -> None:
        """Hands the finished calls' outcomes over in batches, as the stage threads do."""
        while True:
            await asyncio.sleep(0)
            if self.finished:
                batch, self.finished = self.finished, []
                report_queued(batch)


@settings(max_examples=80, deadline=None)
@given(
    items=st.lists(st.tuples(st.booleans(), st.integers(0, 4)), max_size=40),
    stages=st.integers(1, 4),
    ahead=st.integers(0, 5),
    max_demand=st.integers(1, 12),
    reported=st.booleans(),
    several=st.booleans(),
)
def test_never_more_than_stages_run_nor_more_than_stages_plus_ahead_are_handed(
    items: list[tuple[bool, int]], stages: int, ahead: int, max_demand: int, reported: bool, several: bool
) -> None:
    """Mixed calls: the queueing ones (a pool of ``stages`` workers) and async ones running on the loop; the
    pool hands outcomes back through each call's future, or in batches through report_queued. With
    ``several``, items come a fetch's batch per call (a request_n source), the calls of a round are made at
    once (``fn_all``), and outcomes leave several per call (a ManyObserver)."""

    async def main() -> tuple[Pool, list[Outcome[int, int]]]:
        loop = asyncio.get_running_loop()
        pool = Pool(stages, reported)
        workers = [loop.create_task(pool.worker()) for _ in range(stages)]
        workers.append(loop.create_task(pool.reporter()))
        done = loop.create_future()
        outcomes: list[Outcome[int, int]] = []

        def fn(index: int) -> Queued[int] | Coroutine[Any, Any, int]:
            queues, turns = items[index]
            pool.handed += 1
            pool.most_handed = max(pool.most_handed, pool.handed)
            if queues:
                queued: Queued[int] = Queued()
                if not reported:
                    queued.future = loop.create_future()
                pool.calls.put_nowait((queued, queued.future, index, turns))
                return queued

            async def plain() -> int:
                pool.run(+1)
                for _ in range(turns):
                    await asyncio.sleep(0)
                pool.run(-1)
                return index

            return plain()

        rounds: list[int] = []  # items per fn_all call

        def fn_all(indices: list[int]) -> list[Queued[int] | Coroutine[Any, Any, int]]:
            rounds.append(len(indices))
            return [fn(index) for index in indices]

        if not several:
            source: Observable[int] = reactivex.from_iterable(range(len(items)))
        else:
            source = from_iterable(range(len(items)), max_in_flight=max_demand)

        def seen(outcome: Outcome[int, int]) -> None:
            pool.handed -= 1
            outcomes.append(outcome)
            if isinstance(source, PullSource):
                source.release()

        def seen_all(many: list[Outcome[int, int]]) -> None:
            for outcome in many:
                seen(outcome)

        queues: Callable[[int], bool] = lambda i: items[i][0]  # noqa: E731
        graph = source.pipe(
            process(
                fn,
                stages,
                max_demand=max_demand,
                ahead=ahead,
                queues=queues,
                fn_all=fn_all if several else None,
            )
        )
        observer = ManyObserver(seen, done.set_exception, lambda: done.set_result(None), seen_all)
        subscribe_upstream(graph, observer, Demand.unlimited(), None)
        await done
        if several and len(items) >= 2 and min(stages, max_demand) >= 2:
            assert max(rounds) > 1  # a round started several items with one fn_all call
        for worker in workers:
            worker.cancel()
        return pool, outcomes

    pool, outcomes = asyncio.run(main())
    assert sorted(o.value for o in outcomes if o.value is not None) == list(range(len(items)))
    assert all(o.ok for o in outcomes)
    assert pool.most_running <= stages
    assert pool.most_handed <= stages + ahead
    if not any(queues for queues, _ in items):
        assert pool.most_handed <= stages  # nothing queues: nothing goes ahead
    elif all(queues for queues, _ in items) and min(len(items), max_demand) >= stages + ahead:
        assert pool.most_handed == stages + ahead  # and when all do, the stages fill and ahead is used
    for outcome in outcomes:
        if items[outcome.item][0]:  # a queued call's clock starts when a worker takes it
            assert outcome.started_at >= pool.began_at[outcome.item]


def test_a_queued_calls_timeout_counts_from_its_begin_not_from_when_it_was_handed() -> None:
    async def main() -> tuple[list[Outcome[str, str]], list[str]]:
        loop = asyncio.get_running_loop()
        scheduler = TestScheduler()
        handed: list[tuple[str, Queued[str]]] = []
        outcomes: list[Outcome[str, str]] = []

        def fn(item: str) -> Queued[str]:
            queued: Queued[str] = Queued()
            queued.future = loop.create_future()
            handed.append((item, queued))
            return queued

        reactivex.from_iterable(["a", "b", "c"]).pipe(
            process(fn, 1, ahead=1, queues=lambda _item: True, timeout_s=10.0, scheduler=scheduler)
        ).subscribe(outcomes.append)
        first = [item for item, _ in handed]  # one stage, one ahead: a and b handed over, c waits
        (_, a), (_, b) = handed
        a.begin()
        scheduler.advance_by(8.0)
        assert a.future is not None
        a.future.set_result("A")
        await asyncio.sleep(0)  # a's outcome frees its stage: c is handed over
        b.begin()  # b waited 8 s in the queue; only its 8 s of running count
        scheduler.advance_by(8.0)
        assert b.future is not None
        b.future.set_result("B")
        await asyncio.sleep(0)
        _, c = handed[2]
        c.begin()
        scheduler.advance_by(11.0)  # c runs past the timeout
        return outcomes, first

    outcomes, first = asyncio.run(main())
    assert first == ["a", "b"]
    by_item = {o.item: o for o in outcomes}
    assert by_item["a"].value == "A" and by_item["b"].value == "B"
    assert by_item["b"].started_at == pytest.approx(8.0)
    assert isinstance(by_item["c"].error, TimeoutError)


def test_ahead_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="ahead must be >= 0"):
        process(lambda x: reactivex.just(x), 1, ahead=-1)


def test_reported_outcomes_reach_each_process_and_skip_the_calls_it_stopped_or_timed_out() -> None:
    """report_queued takes the outcomes of two processes' calls, interleaved, in one list: each process
    emits its own; a call that timed out meanwhile keeps its timeout, and a stopped process emits nothing."""

    async def main() -> tuple[list[Outcome[str, str]], list[Outcome[str, str]], list[Queued[str]]]:
        scheduler = TestScheduler()
        handed: list[Queued[str]] = []
        fn = _handing_to(handed)
        first: list[Outcome[str, str]] = []
        second: list[Outcome[str, str]] = []
        reactivex.from_iterable(["a", "b"]).pipe(
            process(fn, 2, queues=lambda _item: True, timeout_s=5.0, scheduler=scheduler)
        ).subscribe(first.append)
        stopped = (
            reactivex.from_iterable(["x"])
            .pipe(process(fn, 1, queues=lambda _item: True, scheduler=scheduler))
            .subscribe(second.append)
        )
        a, b, x = handed
        a.begin()
        scheduler.advance_by(3.0)
        b.begin()
        scheduler.advance_by(3.0)  # a has run 6 s and timed out; b has run 3 s
        stopped.dispose()
        report_queued([(a, "A", None), (x, "X", None), (b, "B", None)])
        return first, second, handed

    first, second, handed = asyncio.run(main())
    assert [o.item for o in first] == ["a", "b"]
    a, b = first
    assert isinstance(a.error, TimeoutError) and a.value is None  # its late value is dropped
    assert b.ok and b.value == "B" and b.started_at == pytest.approx(3.0)
    assert second == []
    assert handed[2].cancelled()  # stopping the process cancelled its call: a pool does not run it


def test_begins_of_two_processes_noted_in_one_list_each_start_their_calls_clock_at_their_moment() -> None:
    """begin_queued takes the begins of two processes' calls, interleaved, in one list: each call's clock and
    timeout start at its own moment (never later than now), a call that finished or a stopped process is
    passed over, and a call no process started is skipped."""

    async def main() -> tuple[list[Outcome[str, str]], list[Outcome[str, str]]]:
        scheduler = TestScheduler()
        handed: list[Queued[str]] = []
        fn = _handing_to(handed)
        first: list[Outcome[str, str]] = []
        second: list[Outcome[str, str]] = []
        reactivex.from_iterable(["a", "b", "c"]).pipe(
            process(fn, 3, queues=lambda _item: True, timeout_s=5.0, scheduler=scheduler)
        ).subscribe(first.append)
        reactivex.from_iterable(["x"]).pipe(
            process(fn, 1, queues=lambda _item: True, scheduler=scheduler)
        ).subscribe(second.append)
        a, b, c, x = handed
        scheduler.advance_by(4.0)
        report_queued([(c, "C", None)])  # c finished before the news of its begin came
        begin_queued([(a, 1.0), (x, 2.0), (b, 9.0), (Queued(), 3.0), (c, 3.5)])
        scheduler.advance_by(2.5)  # a has run 5.5 s since its begin at 1.0: past its timeout; b only 2.5 s
        report_queued([(b, "B", None), (x, "X", None)])
        return first, second

    first, second = asyncio.run(main())
    by_item = {o.item: o for o in first}
    assert isinstance(by_item["a"].error, TimeoutError) and by_item["a"].started_at == pytest.approx(1.0)
    assert by_item["b"].ok and by_item["b"].started_at == pytest.approx(4.0), "a moment ahead of now is now"
    assert by_item["c"].value == "C" and by_item["c"].started_at == pytest.approx(0.0)
    assert [(o.item, o.value, o.started_at) for o in second] == [("x", "X", pytest.approx(2.0))]


def test_reported_outcomes_are_emitted_in_the_order_they_finished() -> None:
    async def main() -> list[Outcome[int, int]]:
        handed: list[Queued[int]] = []
        outcomes: list[Outcome[int, int]] = []
        reactivex.from_iterable(range(5)).pipe(
            process(_handing_to(handed), 5, queues=lambda _item: True)
        ).subscribe(outcomes.append)
        for queued in handed:
            queued.begin()
        failure = ValueError("three")
        report_queued([(handed[2], 20, None), (handed[0], 0, None), (handed[3], None, failure)])
        report_queued([(handed[1], 10, None), (handed[1], 11, None)])  # a second outcome is dropped
        report_queued([(handed[4], None, KeyboardInterrupt())])  # raised in a pool's thread
        return outcomes

    outcomes = asyncio.run(main())
    assert [(o.item, o.value) for o in outcomes] == [(2, 20), (0, 0), (3, None), (1, 10), (4, None)]
    assert isinstance(outcomes[2].error, ValueError)
    interrupted = outcomes[4].error
    assert isinstance(interrupted, RuntimeError) and isinstance(interrupted.__cause__, KeyboardInterrupt)


def _handing_to(handed: list[Queued[Any]]) -> Callable[[Any], Queued[Any]]:
    """A process's ``fn`` whose calls wait in a queue: each call's Queued is kept in ``handed``, for the test
    to begin and report."""

    def fn(_item: Any) -> Queued[Any]:
        queued: Queued[Any] = Queued()
        handed.append(queued)
        return queued

    return fn


class _Item:
    """An item a weak reference can watch."""

    def __init__(self, index: int) -> None:
        self.index = index


@pytest.mark.parametrize("reported", [True, False], ids=["reported", "through-future"])
def test_a_finished_queued_call_is_freed_at_once_not_by_the_garbage_collector(
    reported: bool, collector_off: None
) -> None:
    """A running call and its Queued point at each other while it runs; once it finishes nothing may hold the
    pair in a cycle, or every job of a worker lives on until a collection (a worker draining a backlog of sync
    jobs collected about five objects per job that way, and a collection took up to 25 ms of its loop)."""

    async def main() -> list[weakref.ref[_Item]]:
        handed: list[Queued[int]] = []

        def fn(_item: _Item) -> Queued[int]:
            queued: Queued[int] = Queued()
            if not reported:
                queued.future = asyncio.get_running_loop().create_future()
            handed.append(queued)
            return queued

        items = [_Item(index) for index in range(3)]
        watched = [weakref.ref(item) for item in items]
        values: list[int | None] = []
        reactivex.from_iterable(items).pipe(process(fn, 3, queues=lambda _item: True)).subscribe(
            lambda outcome: values.append(outcome.value)
        )
        del items
        begin_queued([(queued, None) for queued in handed])
        if reported:
            report_queued([(queued, index, None) for index, queued in enumerate(handed)])
        else:
            for index, queued in enumerate(handed):
                assert queued.future is not None
                queued.future.set_result(index)
            await asyncio.sleep(0)  # the futures' done callbacks
        assert values == [0, 1, 2]
        return watched

    watched = asyncio.run(main())
    assert [ref() for ref in watched] == [None, None, None]
