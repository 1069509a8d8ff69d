"""StageThreads: each call's outcome reaches its own future on the loop, however the threads interleave."""

from __future__ import annotations

import asyncio
import functools
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import pytest
import reactivex
from hypothesis import given, settings
from hypothesis import strategies as st

from flume_rx.engine import threads
from flume_rx.engine.threads import Handed, StageThreads
from flume_rx.operators import Outcome, Queued, from_iterable, process


def _fails(n: int) -> int:
    if n % 3 == 0:
        raise ValueError(f"no {n}")
    return n * n


@settings(max_examples=30, deadline=None)
@given(calls=st.integers(0, 200), threads=st.integers(1, 6))
def test_every_call_gets_its_own_outcome_on_the_loop(calls: int, threads: int) -> None:
    async def main() -> tuple[list[object], set[int]]:
        pool = StageThreads(threads, "test-stage")
        delivered_on: set[int] = set()
        futures = [pool.run_soon(_fails, n) for n in range(calls)]
        for future in futures:
            future.add_done_callback(lambda _f: delivered_on.add(threading.get_ident()))
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        pool.shutdown()
        return outcomes, delivered_on

    outcomes, delivered_on = asyncio.run(main())
    for n, outcome in enumerate(outcomes):
        if n % 3 == 0:
            assert isinstance(outcome, ValueError) and str(outcome) == f"no {n}"
        else:
            assert outcome == n * n
    assert delivered_on <= {threading.get_ident()}  # futures complete on the loop's thread only


def test_no_more_threads_than_asked_and_named_for_the_stages() -> None:
    started = threading.Barrier(3, timeout=30)

    async def main() -> list[str]:
        pool = StageThreads(3, "flume-stage")
        names = await asyncio.gather(
            *(pool.run_soon(lambda: (started.wait(), threading.current_thread().name)[1]) for _ in range(3))
        )
        more = await asyncio.gather(
            *(pool.run_soon(lambda: threading.current_thread().name) for _ in range(9))
        )
        pool.shutdown()
        return [*names, *more]

    names = asyncio.run(main())
    assert set(names) == {"flume-stage_0", "flume-stage_1", "flume-stage_2"}


def test_a_base_exception_of_a_call_reaches_the_loop_wrapped() -> None:
    def interrupt() -> None:
        raise KeyboardInterrupt

    async def main() -> BaseException:
        pool = StageThreads(1)
        try:
            await pool.run_soon(interrupt)
        except RuntimeError as error:
            return error
        finally:
            pool.shutdown()
        raise AssertionError("no error")

    error = asyncio.run(main())
    assert isinstance(error.__cause__, KeyboardInterrupt)


def test_submit_and_shutdown_behave_as_an_executor() -> None:
    pool = StageThreads(1)
    running, release = threading.Event(), threading.Event()

    def block() -> bool:
        running.set()
        return release.wait(30)

    blocker = pool.submit(block)
    assert running.wait(30)  # the one thread is busy: the next call waits in the queue
    queued = pool.submit(pow, 2, 5)
    pool.shutdown(wait=False, cancel_futures=True)
    release.set()
    assert blocker.result(30) is True
    assert queued.cancelled()
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(pow, 2, 2)


def test_threads_must_be_positive() -> None:
    with pytest.raises(ValueError, match="threads must be >= 1"):
        StageThreads(0)


@settings(max_examples=30, deadline=None)
@given(calls=st.integers(1, 60), threads=st.integers(1, 4))
def test_a_take_is_noted_on_the_loop_before_its_outcome(calls: int, threads: int) -> None:
    """on_take runs in the thread that takes the call; what it returns runs on the loop, before the result."""

    async def main() -> tuple[list[str], set[int]]:
        pool = StageThreads(threads)
        events: list[str] = []
        noted_on: set[int] = set()
        taken_in: set[int] = set()

        def on_take(n: int) -> Callable[[], None]:
            taken_in.add(threading.get_ident())

            def noted() -> None:
                noted_on.add(threading.get_ident())
                events.append(f"began {n}")

            return noted

        futures = [pool.run_soon(pow, n, 2, on_take=functools.partial(on_take, n)) for n in range(calls)]
        for n, future in enumerate(futures):
            future.add_done_callback(functools.partial(lambda n, _f: events.append(f"done {n}"), n))
        assert await asyncio.gather(*futures) == [n * n for n in range(calls)]
        pool.shutdown()
        assert threading.get_ident() not in taken_in
        return events, noted_on

    events, noted_on = asyncio.run(main())
    assert noted_on == {threading.get_ident()}
    for n in range(calls):
        assert events.index(f"began {n}") < events.index(f"done {n}")


@settings(max_examples=30, deadline=None)
@given(kinds=st.lists(st.sampled_from(["first", "second", "plain", "none"]), min_size=1, max_size=60))
def test_notes_of_one_note_all_reach_the_loop_together_and_in_order(kinds: list[str]) -> None:
    """A take's note may be ``(note_all, value)``: the loop passes the values of consecutive notes of one
    ``note_all`` in one call, keeps every note in the order the calls were taken (one thread takes them in
    the order handed), and notes each before its call's outcome."""

    async def main() -> tuple[list[str], list[list[str]]]:
        pool = StageThreads(1)
        events: list[str] = []
        calls: list[list[str]] = []

        def note_all(name: str, values: list[str]) -> None:
            calls.append(values)
            events.extend(f"began {value}" for value in values)

        first = functools.partial(note_all, "first")
        second = functools.partial(note_all, "second")

        def on_take(n: int, kind: str) -> Any:
            if kind == "plain":
                return functools.partial(events.append, f"began {n}")
            if kind == "none":
                return lambda: None
            return (first if kind == "first" else second), str(n)

        futures = [
            pool.run_soon(str, n, on_take=functools.partial(on_take, n, kind)) for n, kind in enumerate(kinds)
        ]
        for n, future in enumerate(futures):
            future.add_done_callback(functools.partial(lambda n, _f: events.append(f"done {n}"), n))
        await asyncio.gather(*futures)
        pool.shutdown()
        return events, calls

    events, calls = asyncio.run(main())
    noted = [n for n, kind in enumerate(kinds) if kind != "none"]
    assert [e for e in events if e.startswith("began")] == [f"began {n}" for n in noted]
    for n in noted:
        assert events.index(f"began {n}") < events.index(f"done {n}")
    # A call of note_all never spans another kind's note: its values were taken one after another.
    for values in calls:
        ns = [int(v) for v in values]
        assert ns == sorted(ns)
        kind = kinds[ns[0]]
        assert all(k == kind for k in kinds[ns[0] : ns[-1] + 1])


def test_a_refused_take_is_the_outcome_and_the_call_never_runs() -> None:
    ran: list[int] = []

    def refuse() -> Callable[[], None]:
        raise LookupError("stopping")

    async def main() -> BaseException:
        pool = StageThreads(1)
        try:
            await pool.run_soon(ran.append, 1, on_take=refuse)
        except LookupError as error:
            return error
        finally:
            pool.shutdown()
        raise AssertionError("no error")

    assert asyncio.run(main()).args == ("stopping",)
    assert ran == []


def _broken(*_values: Any) -> None:
    raise ValueError("bookkeeping")


@pytest.mark.parametrize(
    "on_take",
    [lambda: _broken, lambda: (_broken, 0)],
    ids=["a note the loop calls", "a note of a note_all"],
)
def test_a_failing_note_of_a_start_loses_no_outcome(
    on_take: threads.OnTake, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> list[int]:
        pool = StageThreads(2)
        futures = [pool.run_soon(abs, -n, on_take=on_take) for n in range(5)]
        try:
            return list(await asyncio.gather(*futures))
        finally:
            pool.shutdown()

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]
    assert "noting the start of a call failed" in caplog.text


def test_a_call_waking_an_idle_pool_lowers_the_switch_interval_until_a_thread_takes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = sys.getswitchinterval()
    set_to: list[float] = []
    real_set = sys.setswitchinterval

    def record(interval: float) -> None:
        set_to.append(interval)
        real_set(interval)

    monkeypatch.setattr(threads.sys, "setswitchinterval", record)
    monkeypatch.setattr(threads, "IDLE_BEFORE_WAKE_S", 0.0)

    async def main() -> list[float]:
        pool = StageThreads(1, "test-stage")
        await pool.run_soon(lambda: None)  # starts the thread, which then waits for calls
        while len(pool._idle) < 1:
            await asyncio.sleep(0.001)
        seen = await asyncio.gather(*(pool.run_soon(sys.getswitchinterval) for _ in range(5)))
        pool.shutdown()
        return list(seen)

    seen = asyncio.run(main())
    # Lowered for the wake-up of the idle thread, and put back before any call ran.
    assert set_to[:2] == [threads.WAKE_SWITCH_INTERVAL_S, original]
    assert seen == [original] * 5
    assert sys.getswitchinterval() == original


@settings(max_examples=20, deadline=None)
@given(calls=st.lists(st.integers(0, 3), max_size=30), threads_=st.integers(1, 4))
def test_the_switch_interval_is_always_put_back(calls: list[int], threads_: int) -> None:
    original = sys.getswitchinterval()

    async def main() -> None:
        pool = StageThreads(threads_, "test-stage")
        for burst in calls:  # bursts of calls, with pauses that let every thread go idle
            await asyncio.gather(*(pool.run_soon(lambda: None) for _ in range(burst)))
            await asyncio.sleep(0)
        pool.shutdown()

    asyncio.run(main())
    assert sys.getswitchinterval() == original


def test_a_pool_idle_only_for_a_moment_keeps_the_switch_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    set_to: list[float] = []
    monkeypatch.setattr(threads.sys, "setswitchinterval", set_to.append)
    monkeypatch.setattr(threads, "IDLE_BEFORE_WAKE_S", 3600.0)  # never idle long enough: a backlog's pauses

    async def main() -> None:
        pool = StageThreads(1, "test-stage")
        for _ in range(20):
            await pool.run_soon(lambda: None)
        pool.shutdown()

    asyncio.run(main())
    assert set_to == []


def test_a_call_waking_an_idle_pool_lets_go_of_the_interpreter_once_the_call_is_queued(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queued_at_yield: list[int] = []
    pool = StageThreads(1, "test-stage")
    monkeypatch.setattr(threads.os, "sched_yield", lambda: queued_at_yield.append(pool._calls.qsize()))
    monkeypatch.setattr(threads, "IDLE_BEFORE_WAKE_S", 0.0)
    # A long interval: the woken thread cannot take the call before the yield.
    monkeypatch.setattr(threads, "WAKE_SWITCH_INTERVAL_S", 1.0)

    async def main() -> list[int]:
        await pool.run_soon(lambda: None)  # starts the thread: a start needs no yield
        outcomes = []
        for n in range(3):
            while len(pool._idle) < 1:
                await asyncio.sleep(0.001)
            outcomes.append(await pool.run_soon(lambda n=n: n))  # type: ignore[misc]
        pool.shutdown()
        return outcomes

    assert asyncio.run(main()) == [0, 1, 2]
    # One yield per wake of the idle thread, each with the call already waiting for it.
    assert queued_at_yield == [1, 1, 1]


@pytest.mark.parametrize("idle_before_wake_s, yield_on_wake", [(3600.0, True), (0.0, False)])
def test_a_pool_idle_only_for_a_moment_or_the_yield_turned_off_never_lets_go_of_the_interpreter(
    monkeypatch: pytest.MonkeyPatch, idle_before_wake_s: float, yield_on_wake: bool
) -> None:
    yields: list[None] = []
    monkeypatch.setattr(threads.os, "sched_yield", lambda: yields.append(None))
    monkeypatch.setattr(threads, "IDLE_BEFORE_WAKE_S", idle_before_wake_s)
    monkeypatch.setattr(threads, "YIELD_ON_WAKE", yield_on_wake)

    async def main() -> None:
        pool = StageThreads(2, "test-stage")
        for _ in range(20):
            await asyncio.gather(pool.run_soon(lambda: None), pool.run_soon(lambda: None))
        pool.shutdown()

    asyncio.run(main())
    assert yields == []


def _take_nothing() -> Callable[[], None]:
    return lambda: None


def _pause_then(n: int) -> int:
    time.sleep(0.0005)
    return n


def test_a_backlog_handed_ahead_wakes_the_loop_only_when_the_threads_run_out_of_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While calls with an on_take are out, the loop's own look every NOTE_AFTER_S collects the outcomes: a
    finished call wakes the loop only when no call is left for the threads (here once, at the end)."""
    monkeypatch.setattr(threads, "NOTE_AFTER_S", 3600.0)  # the look never comes: only wake-ups deliver
    wakes: list[int] = []

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        real = loop.call_soon_threadsafe

        def counted(callback: Callable[..., object], *args: object) -> asyncio.Handle:
            wakes.append(1)
            return real(callback, *args)

        monkeypatch.setattr(loop, "call_soon_threadsafe", counted)
        pool = StageThreads(1, "test-stage")
        gate = threading.Event()
        first = pool.run_soon(gate.wait, 30, on_take=_take_nothing)  # holds the thread while the rest queue
        # Each sleeps, so the loop is free to take a wake-up between any two of them.
        rest = [pool.run_soon(_pause_then, n, on_take=_take_nothing) for n in range(50)]
        gate.set()
        try:
            assert await asyncio.wait_for(first, 30) is True
            return list(await asyncio.wait_for(asyncio.gather(*rest), 30))
        finally:
            pool.shutdown()

    assert asyncio.run(main()) == list(range(50))
    assert 1 <= len(wakes) <= 2  # the call that emptied the queue, and at most the first one's, racing it


@settings(max_examples=40, deadline=None)
@given(
    calls=st.lists(st.tuples(st.booleans(), st.sampled_from([0.0, 0.0, 0.0005, 0.002])), max_size=40),
    threads_=st.integers(1, 4),
    look_after=st.sampled_from([0.0001, 0.001, 0.01]),
)
def test_no_outcome_waits_for_a_look_that_never_comes(
    calls: list[tuple[bool, float]], threads_: int, look_after: float
) -> None:
    """Calls with and without an on_take, short and long, in bursts: every outcome reaches the loop, by a
    wake-up or by the loop's look, however the threads' finishing races the look's last round."""
    original = threads.NOTE_AFTER_S
    threads.NOTE_AFTER_S = look_after
    try:

        async def main() -> None:
            pool = StageThreads(threads_, "test-stage")
            try:
                for start in range(0, len(calls), 7):
                    burst = calls[start : start + 7]
                    futures = [
                        pool.run_soon(time.sleep, pause, on_take=_take_nothing if noted else None)
                        for noted, pause in burst
                    ]
                    await asyncio.wait_for(asyncio.gather(*futures), 10)
                    await asyncio.sleep(look_after * (start % 3))  # let the look end, or not
            finally:
                pool.shutdown()

        asyncio.run(main())
    finally:
        threads.NOTE_AFTER_S = original


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _quick_or_slow(n: int) -> None:
    if n % 2 == 0:
        time.sleep(0.003)


def test_a_mix_of_quick_and_slow_calls_keeps_every_thread() -> None:
    """Half the calls sleep 3 ms: the estimate from the quick ones says one thread, and the trial, finding it
    far slower, keeps them all (one thread drained such a mix at a tenth of the rate)."""

    async def main() -> tuple[int, int]:
        pool = StageThreads(4, "test-stage")
        try:
            await asyncio.gather(*(pool.run_soon(_quick_or_slow, n) for n in range(2000)))
            return pool._count.candidate, pool._count.chosen
        finally:
            pool.shutdown()

    candidate, chosen = asyncio.run(main())
    assert candidate < 4  # the estimate alone would have parked threads
    assert chosen == 4


def test_calls_that_hold_the_interpreter_are_estimated_to_need_one_thread() -> None:
    async def main() -> int:
        pool = StageThreads(4, "test-stage")
        try:
            await asyncio.gather(*(pool.run_soon(_spin, 0.0001) for _ in range(threads.SAMPLE_CALLS * 8)))
            return pool._count.candidate
        finally:
            pool.shutdown()

    assert asyncio.run(main()) <= 2


def test_a_long_call_of_the_one_active_thread_does_not_hold_back_the_rest() -> None:
    """A parked thread takes calls while every active one has been in its call for BLOCKED_AFTER_S."""

    async def main() -> list[int]:
        pool = StageThreads(3, "test-stage")
        gate = threading.Event()
        try:
            await asyncio.gather(*(pool.run_soon(abs, -n) for n in range(3)))  # every thread started
            pool._count.active = 1
            await asyncio.gather(*(pool.run_soon(abs, -n) for n in range(40)))  # the others park
            long = pool.run_soon(gate.wait, 30)
            await asyncio.sleep(0.05)  # let the long call begin on some thread
            short = await asyncio.wait_for(asyncio.gather(*(pool.run_soon(abs, -n) for n in range(20))), 5)
            gate.set()
            assert await long is True
            return list(short)
        finally:
            gate.set()
            pool.shutdown()

    assert asyncio.run(main()) == list(range(20))


def test_shutdown_reaches_parked_threads() -> None:
    async def main() -> StageThreads:
        pool = StageThreads(4, "test-stage")
        await asyncio.gather(*(pool.run_soon(abs, -n) for n in range(4)))
        pool._count.active = 1
        await asyncio.gather(*(pool.run_soon(abs, -n) for n in range(40)))  # the others park
        return pool

    pool = asyncio.run(main())
    stopper = threading.Thread(target=pool.shutdown)
    stopper.start()
    stopper.join(10)
    assert not stopper.is_alive()


@settings(max_examples=20, deadline=None)
@given(calls=st.integers(0, 120), threads=st.integers(1, 4), at_once=st.booleans())
def test_handed_calls_reach_their_process_through_batched_reports(
    calls: int, threads: int, at_once: bool
) -> None:
    """A process's queued calls handed with ``hand`` (or, ``at_once``, a round's calls with one ``hand_all``):
    every outcome reaches it on the loop, errors as exceptions (a KeyboardInterrupt wrapped), with no future
    per call."""

    def body(n: int) -> int:
        if n % 5 == 1:
            raise KeyboardInterrupt
        return _fails(n)

    async def main() -> list[Outcome[int, int]]:
        pool = StageThreads(threads, "test-stage")
        done = asyncio.get_running_loop().create_future()

        def fn(n: int) -> Queued[int]:
            call: Queued[int] = Queued()
            pool.hand(call, body, n)
            return call

        def fn_all(ns: list[int]) -> list[Queued[int]]:
            handed: list[Handed] = [(Queued(), body, (n,), None) for n in ns]
            pool.hand_all(handed)
            return [call for call, *_ in handed]

        outcomes: list[Outcome[int, int]] = []
        source = from_iterable(range(calls), max_in_flight=2 * threads)

        def seen(outcome: Outcome[int, int]) -> None:
            outcomes.append(outcome)
            source.release()

        source.pipe(
            process(fn, threads, ahead=threads, queues=lambda _n: True, fn_all=fn_all if at_once else None)
        ).subscribe(seen, done.set_exception, lambda: done.set_result(None))
        await asyncio.wait_for(done, 30)
        pool.shutdown()
        return outcomes

    outcomes = asyncio.run(main())
    assert sorted(o.item for o in outcomes) == list(range(calls))
    for outcome in outcomes:
        n = outcome.item
        if n % 5 == 1:
            assert isinstance(outcome.error, RuntimeError) and "KeyboardInterrupt" in str(outcome.error)
        elif n % 3 == 0:
            assert isinstance(outcome.error, ValueError)
        else:
            assert outcome.value == n * n


def test_calls_handed_at_once_start_a_thread_each_up_to_the_size() -> None:
    async def main() -> tuple[list[int], int]:
        pool = StageThreads(3, "test-stage")
        gate = threading.Event()
        ran: list[int] = []
        lock = threading.Lock()

        def body(n: int) -> None:
            if n < 3:
                gate.wait(30)  # the first three hold their threads until all seven are handed
            with lock:
                ran.append(n)

        calls: list[Queued[None]] = [Queued() for _ in range(7)]
        pool.hand_all([(call, body, (n,), None) for n, call in enumerate(calls)])
        threads = len(pool._threads)
        gate.set()
        while len(ran) < 7:
            await asyncio.sleep(0.01)
        pool.shutdown()
        return ran, threads

    ran, threads = asyncio.run(main())
    assert threads == 3
    assert sorted(ran) == list(range(7))


def test_a_handed_call_cancelled_before_a_thread_takes_it_never_runs() -> None:
    async def main() -> list[str]:
        pool = StageThreads(1, "test-stage")
        ran: list[str] = []
        gate = threading.Event()
        busy = pool.run_soon(gate.wait, 30)  # the one thread is busy while the next two are handed
        stopped: Queued[None] = Queued()
        pool.hand(stopped, ran.append, "stopped")
        after = pool.run_soon(ran.append, "after")
        stopped.cancel()
        gate.set()
        await busy
        await after
        pool.shutdown()
        return ran

    assert asyncio.run(main()) == ["after"]


class _Argument:
    """A call's argument a weak reference can watch."""


def test_a_failed_calls_error_and_arguments_are_freed_at_once_not_by_the_garbage_collector(
    collector_off: None,
) -> None:
    """An error keeps the frames of its traceback, the thread's among them: if that frame held the error too,
    each failed sync job (its error, its frames, their arguments) would wait in a cycle for a collection."""

    def body(_argument: _Argument) -> None:
        raise ValueError("the job failed")

    async def main() -> tuple[list[str], list[weakref.ref[_Argument]]]:
        pool = StageThreads(2, "test-stage")
        done = asyncio.get_running_loop().create_future()
        arguments = [_Argument() for _ in range(4)]
        watched = [weakref.ref(argument) for argument in arguments]

        def fn(argument: _Argument) -> Queued[None]:
            call: Queued[None] = Queued()
            pool.hand(call, body, argument)
            return call

        errors: list[str] = []
        process_ = process(fn, 2, ahead=2, queues=lambda _argument: True)
        reactivex.from_iterable(arguments).pipe(process_).subscribe(
            lambda outcome: errors.append(type(outcome.error).__name__),
            done.set_exception,
            lambda: done.set_result(None),
        )
        del arguments
        await asyncio.wait_for(done, 30)
        pool.shutdown()
        return errors, watched

    errors, watched = asyncio.run(main())
    assert errors == ["ValueError"] * 4
    assert [ref() for ref in watched] == [None] * 4
