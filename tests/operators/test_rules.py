"""The Reactive Streams rules, checked for every operator of flume_rx.operators alike.

Each test names the rules it checks; docs/operators.md maps every rule onto Demand and dispose and points
here. Every operator is tried over a demand-aware upstream (a Flowable) and over a plain reactivex one,
which pushes whatever it has.
"""

from __future__ import annotations

import ast
import asyncio
import gc
import re
import sys
import threading
import weakref
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import reactivex
from hypothesis import given, settings
from hypothesis import strategies as st
from reactivex import Observable, abc
from reactivex import operators as ops
from reactivex.disposable import CompositeDisposable, Disposable
from reactivex.testing import TestScheduler

from flume_rx.operators import (
    UNBOUNDED,
    Demand,
    Flowable,
    InProcessKeyedWindow,
    InProcessWindow,
    buffer_with_time_or_count,
    from_iterable,
    process,
    retry_with_backoff,
    throttle,
    throttle_by_key,
)


class ListSource(Flowable[int]):
    """Emits its items as they are requested, then completes (or fails with ``error``); counts cancels."""

    def __init__(self, items: list[int], error: Exception | None = None) -> None:
        self.items = items
        self.error = error
        self.cancels = 0
        super().__init__(self._run)

    def _run(
        self, observer: abc.ObserverBase[int], demand: Demand, _scheduler: abc.SchedulerBase | None
    ) -> abc.DisposableBase:
        position = 0
        done = False

        def drain() -> None:
            nonlocal position, done
            while not done and position < len(self.items) and demand.take(1):
                position += 1
                observer.on_next(self.items[position - 1])
            if not done and position == len(self.items):
                done = True
                if self.error is not None:
                    observer.on_error(self.error)
                else:
                    observer.on_completed()

        def cancel() -> None:
            self.cancels += 1

        subscription = CompositeDisposable(demand.on_request(drain), Disposable(cancel))
        drain()
        return subscription


def _plain(items: list[int], error: Exception | None = None) -> Observable[int]:
    source = reactivex.from_iterable(items)
    return source if error is None else reactivex.concat(source, reactivex.throw(error))


Build = Callable[[Observable[int], TestScheduler], Observable[Any]]

OPERATORS: dict[str, Build] = {
    "lifted map": lambda source, _s: source.pipe(ops.map(lambda x: x)),
    "throttle": lambda source, s: source.pipe(
        throttle(InProcessWindow(10_000, 1.0, 0.0, clock=s), scheduler=s)
    ),
    "buffer_with_time_or_count": lambda source, s: buffer_with_time_or_count(1000.0, 1, scheduler=s)(
        source
    ).pipe(ops.map(lambda batch: batch[0])),
    "process": lambda source, s: process(reactivex.just, 2, scheduler=s)(source).pipe(
        ops.map(lambda outcome: outcome.item)
    ),
    "retry_with_backoff": lambda source, s: retry_with_backoff(2, 1.0, 1.0, retry_on=(OSError,), scheduler=s)(
        source
    ),
    # Runs on the asyncio loop it is subscribed from; one key, so the order of all items is kept.
    "throttle_by_key": lambda source, _s: throttle_by_key(
        InProcessKeyedWindow(10_000, 1.0, 60.0), key=lambda _x: "k"
    )(source),
}
# A lifted map over a plain upstream is plain reactivex: demand never reaches that upstream. Retry passes the
# test's RuntimeError on (a retried cold source starts over; test_retry.py checks demand across retries).
DEMAND_AWARE_OVER_PLAIN = [name for name in OPERATORS if name != "lifted map"]


class Recorder:
    """A subscriber that records every signal in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_next(self, item: Any) -> None:
        self.events.append(("next", item))

    def on_error(self, error: Exception) -> None:
        self.events.append(("error", error))

    def on_completed(self) -> None:
        self.events.append(("completed", None))

    @property
    def items(self) -> list[Any]:
        return [value for kind, value in self.events if kind == "next"]

    def terminals(self) -> list[str]:
        return [kind for kind, _ in self.events if kind != "next"]


async def _advance(scheduler: TestScheduler, seconds: float) -> None:
    """Move virtual time, then let the asyncio loop run what became ready (throttle_by_key lives there)."""
    scheduler.advance_by(seconds)
    for _ in range(50):
        await asyncio.sleep(0)


def _in_loop(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(body())


def _subscribe(
    name: str, upstream: Observable[int], scheduler: TestScheduler, demand: Demand, recorder: Recorder
) -> abc.DisposableBase:
    built = OPERATORS[name](upstream, scheduler)
    assert isinstance(built, Flowable)
    return built.subscribe_with_demand(
        reactivex.Observer(recorder.on_next, recorder.on_error, recorder.on_completed), demand, scheduler
    )


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(sorted(OPERATORS)),
    plain=st.booleans(),
    n_items=st.integers(0, 12),
    requests=st.lists(st.integers(1, 4), max_size=8),
    fails=st.booleans(),
)
def test_rules_1_1_and_1_7_never_more_than_requested_and_nothing_after_the_end(
    name: str, plain: bool, n_items: int, requests: list[int], fails: bool
) -> None:
    if plain and name not in DEMAND_AWARE_OVER_PLAIN:
        return

    async def check() -> None:
        scheduler = TestScheduler()
        items = list(range(n_items))
        error = RuntimeError("upstream failed") if fails else None
        upstream = _plain(items, error) if plain else ListSource(items, error)
        demand = Demand()
        recorder = Recorder()
        _subscribe(name, upstream, scheduler, demand, recorder)
        await _advance(scheduler, 1.0)
        total = 0
        for n in requests:
            demand.request(n)
            total += n
            await _advance(scheduler, 1.0)
            assert len(recorder.items) <= total
            if not (fails and name == "throttle_by_key"):  # it sends an upstream error ahead of held items
                assert recorder.items == items[: len(recorder.items)]
        terminals = recorder.terminals()
        assert len(terminals) <= 1
        if terminals:
            assert recorder.events[-1][0] == terminals[0]  # rule 1.7: nothing after it
        if not fails and total >= n_items:
            assert recorder.items == items
            assert terminals == ["completed"]

    _in_loop(check)


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_rules_3_5_to_3_7_cancel_is_idempotent_thread_safe_and_later_requests_do_nothing(name: str) -> None:
    async def check() -> None:
        scheduler = TestScheduler()
        upstream = ListSource(list(range(100)))
        demand = Demand(3)
        recorder = Recorder()
        subscription = _subscribe(name, upstream, scheduler, demand, recorder)
        await _advance(scheduler, 1.0)
        assert recorder.items == [0, 1, 2]
        threads = [threading.Thread(target=subscription.dispose) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        subscription.dispose()
        assert upstream.cancels == 1  # rule 3.13 too: the cancel reaches the upstream once
        demand.request(5)  # rule 3.6: a no-op now, and it returns normally (3.16)
        demand.request(0)  # rule 3.6 over 3.9: no error to a cancelled subscriber
        await _advance(scheduler, 10.0)
        assert recorder.events == [("next", 0), ("next", 1), ("next", 2)]

    _in_loop(check)


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_rule_3_9_a_request_below_one_reaches_the_subscriber_as_on_error(name: str) -> None:
    async def check() -> None:
        scheduler = TestScheduler()
        upstream = ListSource(list(range(10)))
        demand = Demand(2)
        recorder = Recorder()
        _subscribe(name, upstream, scheduler, demand, recorder)
        await _advance(scheduler, 1.0)
        demand.request(-1)  # rule 3.16: returns normally
        demand.request(4)
        await _advance(scheduler, 10.0)
        assert recorder.items == [0, 1]
        assert recorder.terminals() == ["error"]
        assert "got -1" in str(recorder.events[-1][1])
        assert upstream.cancels == 1

    _in_loop(check)


@pytest.mark.parametrize("name", [*sorted(OPERATORS), "request_n"])
def test_rule_3_13_a_cancelled_subscription_lets_go_of_its_subscriber(name: str) -> None:
    async def check() -> weakref.ref[Recorder]:
        scheduler = TestScheduler()
        demand = Demand(2)
        recorder = Recorder()
        watch = weakref.ref(recorder)
        observer = reactivex.Observer(recorder.on_next, recorder.on_error, recorder.on_completed)
        if name == "request_n":
            source: Flowable[Any] = from_iterable(range(10), max_in_flight=5)
            subscription = source.subscribe_with_demand(observer, demand, scheduler)
        else:
            subscription = _subscribe(name, ListSource(list(range(10))), scheduler, demand, recorder)
        await _advance(scheduler, 1.0)
        assert recorder.items == [0, 1]
        subscription.dispose()
        await _advance(scheduler, 5000.0)  # let disposed timers leave the scheduler's queue
        return watch

    watch = asyncio.run(check())
    gc.collect()
    assert watch() is None  # `demand` lived on, and held nothing of the subscriber


def test_rule_3_17_demand_adds_up_to_the_unbounded_cap() -> None:
    demand = Demand()
    demand.request(UNBOUNDED)
    demand.request(UNBOUNDED)
    assert demand.pending == UNBOUNDED == sys.maxsize
    assert demand.take(10) == 10
    source = from_iterable(range(5), max_in_flight=5)
    recorder = Recorder()
    source.subscribe_with_demand(
        reactivex.Observer(recorder.on_next, recorder.on_error, recorder.on_completed), Demand(UNBOUNDED)
    )
    assert recorder.items == [0, 1, 2, 3, 4]
    assert recorder.terminals() == ["completed"]


def test_the_rules_table_covers_every_rule_and_names_only_tests_that_exist() -> None:
    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "operators.md").read_text()
    table_rules = set(re.findall(r"^\| (\d+\.\d+) \|", doc, flags=re.MULTILINE))
    assert table_rules >= {
        "1.1",
        "1.3",
        "1.7",
        "2.13",
        "3.5",
        "3.6",
        "3.7",
        "3.8",
        "3.9",
        "3.13",
        "3.16",
        "3.17",
    }
    references = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", doc)
    assert references
    for path, name in references:
        tree = ast.parse((root / path).read_text())
        defined = {
            node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        assert name in defined, f"docs/operators.md names {path}::{name}, which does not exist"
