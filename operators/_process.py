"""process: run a call per item with bounded concurrency, one Outcome per item, failures included.

(Longer than the ~600 lines flume_rx keeps its modules to, on purpose: it is one operator, the hot path every job
passes twice, whose state lives in one subscribe closure so that a round of starts and outcomes costs one lock;
docs/operators.md, "One drain style", measures why it keeps that drain.)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import threading
import time
import types
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable, Disposable
from reactivex.scheduler import TimeoutScheduler, VirtualTimeScheduler

from ._flow import Demand, Flowable, ManyObserver, is_prompt, subscribe_upstream

_T = TypeVar("_T")
_U = TypeVar("_U")


@dataclass(slots=True)
class Outcome(Generic[_T, _U]):
    """What became of one item: its value or its error, and when the call ran (scheduler clock, seconds).

    Read-only once emitted. It is not frozen because one is made per item, and a frozen dataclass sets each
    field through ``object.__setattr__`` (~1,000 instructions a field, five times what a slot store costs).

    Attributes:
        item: the item the call was made for.
        value: the call's first value (None on failure, or when it completed without a value).
        error: the exception the call failed with (a ``TimeoutError`` when it took longer than allowed).
        started_at: when the call was made.
        finished_at: when its value, error or timeout came.
    """

    item: _T
    value: _U | None
    error: BaseException | None
    started_at: float
    finished_at: float

    @property
    def ok(self) -> bool:
        """Whether the call succeeded."""
        return self.error is None


def _clock_of(scheduler: abc.SchedulerBase) -> Callable[[], float]:
    if isinstance(scheduler, VirtualTimeScheduler):
        return lambda: scheduler.to_seconds(scheduler.clock)
    # Real-time schedulers read the wall clock; building a datetime per call costs more than the call.
    return time.time


def _result_of(future: asyncio.Future[_U]) -> tuple[_U | None, BaseException | None]:
    if future.cancelled():
        return None, asyncio.CancelledError()
    error = future.exception()
    return (None, error) if error is not None else (future.result(), None)


class Queued(Generic[_U]):
    """What ``fn`` returns for a call that waits in a queue of its own (a thread pool's) before it begins.

    :func:`process` hands such calls over ahead of a free stage (see its ``ahead``), so a thread that finishes
    finds its next call waiting instead of waiting for the loop. The call's clock (``Outcome.started_at``)
    and its timeout start when the queue calls :meth:`begin`, on the loop, once a thread has taken it: time
    spent waiting in the queue is not the call's.

    Its outcome comes one of two ways: through ``future``, when the queue sets one before ``fn`` returns,
    or through :func:`report_queued`, which the queue calls on the loop with the outcomes of many calls at
    once, so that a process takes a whole batch of them in one round (no future, no callback per call).
    A stopped call is cancelled (:meth:`cancelled`): the queue then neither runs it nor reports it.
    """

    __slots__ = ("_begin_many", "_cancelled", "_entry", "_finish_many", "future")

    def __init__(self) -> None:
        self.future: asyncio.Future[_U] | None = None
        self._cancelled = False
        # Set by the process that started the call: what its outcome finishes, and how its begin and its
        # outcome are taken in a batch.
        self._entry: _Running[Any] | None = None
        self._begin_many: _BeginMany | None = None
        self._finish_many: _FinishMany | None = None

    def begin(self, at: float | None = None) -> None:
        """The call has begun, at ``at`` on process's clock (now when None); called on the loop, before its
        outcome, and possibly a little after the call began (``at`` keeps its clock exact). Several at once:
        :func:`begin_queued`."""
        if self._begin_many is not None and self._entry is not None:
            self._begin_many([(self._entry, at)])

    def cancel(self) -> None:
        """Stop the call if it has not begun: the queue skips it, and an outcome that comes is dropped."""
        self._cancelled = True
        if self.future is not None:
            self.future.cancel()

    def cancelled(self) -> bool:
        """Whether the call was stopped (see :meth:`cancel`)."""
        return self._cancelled

    def dispose(self) -> None:
        """The same as :meth:`cancel`: what a process does to a call it stops."""
        self.cancel()


_FinishMany = Callable[[list[tuple["Queued[Any]", Any, BaseException | None]]], None]
"""A process's way of finishing many of its queued calls in one round."""

_BeginMany = Callable[[list[tuple["_Running[Any]", float | None]]], None]
"""A process's way of noting that many of its queued calls began, with one look at its state."""


def begin_queued(begins: list[tuple[Queued[Any], float | None]]) -> None:
    """:meth:`Queued.begin` for many calls ``(call, at)``, on the loop of the processes that started them:
    each process notes the run of its own calls with one lock, as :func:`report_queued` does for outcomes.
    Calls never started by a process are passed over."""
    run: list[tuple[_Running[Any], float | None]] = []
    owner: _BeginMany | None = None
    for call, at in begins:
        begin_many, entry = call._begin_many, call._entry
        if begin_many is None or entry is None:
            continue
        if begin_many is not owner:
            if owner is not None:
                owner(run)
                run = []
            owner = begin_many
        run.append((entry, at))
    if owner is not None:
        owner(run)


def report_queued(outcomes: list[tuple[Queued[Any], Any, BaseException | None]]) -> None:
    """The outcomes of queued calls ``(call, value, error)``, on the loop of the processes that started them.

    Each process takes the run of its own calls in one round (one lock, one drain), so a thread pool that
    hands outcomes back in batches costs the loop little per call. Calls that were cancelled, or never
    started by a process, are passed over. An error that is no ``Exception`` (a ``KeyboardInterrupt`` or
    ``SystemExit`` raised in a pool's thread) becomes a ``RuntimeError`` caused by it: it is the call's
    outcome, not the loop's.
    """
    run: list[tuple[Queued[Any], Any, BaseException | None]] = []
    owner: _FinishMany | None = None
    for outcome in outcomes:
        finish_many = outcome[0]._finish_many
        if finish_many is None:
            continue
        if finish_many is not owner:
            if owner is not None:
                owner(run)
                run = []
            owner = finish_many
        call, value, error = outcome
        run.append((call, value, error if error is None else _as_exception(error)))
    if owner is not None:
        owner(run)


def process(
    fn: Callable[[_T], _Call[_U]],
    stages: int,
    *,
    max_demand: int | None = None,
    min_demand: int | None = None,
    scheduler: abc.SchedulerBase | None = None,
    timeout_s: float | None = None,
    ahead: int = 0,
    queues: Callable[[_T], bool] | None = None,
    fn_all: Callable[[list[_T]], list[_Call[_U]]] | None = None,
) -> Callable[[Observable[_T]], Flowable[Outcome[_T, _U]]]:
    """Call ``fn(item)`` for each item, at most ``stages`` at once, and emit an :class:`Outcome` for each.

    A call starts as soon as its item arrives; its first value (or its error, or an exception ``fn`` raised)
    becomes the item's Outcome, emitted when the call finishes, so outcomes come in finishing order. A
    failing item never fails the stream. The stream completes when the source has and every call has
    finished; an error of the source is passed on after the running calls' outcomes.

    Demand in batches, as GenStage does it: the processor holds at most ``max_demand`` items (waiting,
    running, and requested but not yet arrived). It requests up to ``max_demand`` from a Flowable source at
    subscribe (fewer if downstream asked for fewer outcomes) and asks again only when what it holds falls to
    ``min_demand``, then for enough to hold ``max_demand`` again. So a fetching source answers in batches of
    about ``max_demand - min_demand`` however many stages there are and however long a call takes, and the
    next batch is on its way while the stages still have work. A *prompt* source (a throttle, whose tokens
    lapse; see :class:`Flowable`) is never read ahead: the processor then asks for one item per free stage.
    A plain source that pushes more is queued, and still at most ``stages`` calls run.

    Calls that wait in a queue of their own (``queues(item)`` is true and ``fn`` returns a :class:`Queued`,
    as sync workers on a pool of at most ``stages`` threads do) may be handed over up to ``ahead`` beyond
    ``stages`` while every running call is such a call: the pool runs at most ``stages`` of them, and a
    thread that finishes takes the next at once. Other calls start only below ``stages``, so never more
    than ``stages`` calls run at once, whatever the mix.

    Args:
        fn: makes the call for an item: an Observable whose first value is the result, an asyncio
            Future, or a coroutine, run as a task on the running loop; see :func:`from_async` and
            :func:`in_thread` for the usual shapes.
        stages: the most calls running at once (>= 1).
        max_demand: the most items held at once, waiting or running or requested (>= 1); ``stages`` when
            None.
        min_demand: ask upstream again once the items held fall to this many (``0 <= min_demand <
            max_demand``); half of ``max_demand`` when None.
        scheduler: the clock of ``started_at``/``finished_at`` and of timeouts, and the scheduler the calls
            are subscribed on (else the subscriber's; TimeoutScheduler for the clock and timeouts).
        timeout_s: the longest a call may take, in seconds; a call past it gets a ``TimeoutError`` Outcome
            and is disposed. None waits forever. A :class:`Queued` call's time counts from its begin.
        ahead: how many calls beyond ``stages`` may wait in their queue (0: none).
        queues: whether the call for an item waits in such a queue (decided when the item is taken to
            start, so it may note the answer on the item for ``fn``).
        fn_all: makes the calls of several items at once, one per item in order, as ``fn`` would; called
            instead of ``fn`` when a round starts more than one item (a fetch's batch arriving at once), so a
            pool can take them in one hand-over. An exception it raises is every item's outcome.

    Returns:
        An operator from an Observable of items to a Flowable of Outcomes.

    ::

        source:   -a-b-c----|            (stages=2; each call takes 3 ticks)
        calls:     a---
                     b---
                        c--- (c starts when a's stage frees)
        result:   ----A-B---C|

    >>> import reactivex
    >>> from reactivex import operators as ops
    >>> outcomes = reactivex.of(1, 2, 0).pipe(
    ...     process(lambda x: reactivex.just(10 // x), 2), ops.to_list()).run()
    >>> sorted((o.item, o.value, type(o.error).__name__) for o in outcomes)
    [(0, None, 'ZeroDivisionError'), (1, 10, 'NoneType'), (2, 5, 'NoneType')]
    """
    if stages < 1:
        raise ValueError(f"stages must be >= 1 (got {stages}); it is the number of calls running at once")
    if ahead < 0:
        raise ValueError(f"ahead must be >= 0 (got {ahead}); it is how many calls may wait beyond the stages")
    if timeout_s is not None and not timeout_s > 0:
        raise ValueError(f"timeout_s must be a positive number of seconds or None (got {timeout_s})")
    high = stages if max_demand is None else max_demand
    if high < 1:
        raise ValueError(f"max_demand must be >= 1 (got {high}); it is the most items the processor holds")
    low = high // 2 if min_demand is None else min_demand
    if not 0 <= low < high:
        raise ValueError(
            f"min_demand must be >= 0 and below max_demand={high} (got {low}); it is how few items the "
            "processor holds before it asks for more"
        )

    def operator(source: Observable[_T]) -> Flowable[Outcome[_T, _U]]:
        def subscribe(
            observer: abc.ObserverBase[Outcome[_T, _U]], demand: Demand, scheduler_: abc.SchedulerBase | None
        ) -> abc.DisposableBase:
            clock = scheduler or scheduler_ or TimeoutScheduler.singleton()
            call_scheduler = scheduler or scheduler_
            now = _clock_of(clock)
            # Items a prompt source emits must start at once: hold no more than the stages can start.
            most, least = (min(high, stages), min(high, stages) - 1) if is_prompt(source) else (high, low)
            lock = threading.Lock()
            # A subscriber that takes several outcomes in one call gets a round's so (see ManyObserver).
            all_at_once: Callable[[list[Outcome[_T, _U]]], None] | None = getattr(
                observer, "on_next_all", None
            )
            upstream = Demand()
            waiting: deque[_T] = deque()
            running: set[_Running[_T]] = set()  # from the moment an item is taken to start, until it finishes
            plain = 0  # entries of `running` whose calls do not queue: while any runs, nothing goes ahead
            outcomes: deque[Outcome[_T, _U]] = deque()
            upstream_done = False
            requested = 0  # items asked of upstream and not yet received
            failure: list[Exception] = []
            stopped = False
            unbounded = demand.unbounded

            draining = False  # a drain is running; others only leave word in `missed`
            missed = False

            def pick() -> _Round[_T, _U]:
                # Called with the lock held: every outcome the demand allows, every item a stage is free for,
                # what to request upstream, and the end when nothing is left.
                nonlocal stopped, requested, plain
                emit: list[Outcome[_T, _U]] = []
                begin: list[_Running[_T]] = []
                end: Callable[[], None] | None = None
                if stopped:
                    return emit, begin, 0, end
                if outcomes:
                    ready = len(outcomes)
                    allowed = ready if unbounded else demand.take(ready)
                    if allowed == ready:
                        emit = list(outcomes)
                        outcomes.clear()
                    else:
                        emit = [outcomes.popleft() for _ in range(allowed)]
                if waiting and not failure:
                    free = stages - len(running)
                    if queues is not None:
                        while waiting:
                            item = waiting[0]
                            if free > 0:
                                queued = queues(item)
                            elif ahead and not plain and len(running) < stages + ahead and queues(item):
                                queued = True
                            else:
                                break
                            waiting.popleft()
                            entry = _Running(item, now(), queued)
                            running.add(entry)
                            begin.append(entry)
                            free -= 1
                            if not queued:
                                plain += 1
                    elif free > 0:
                        if free == 1 or len(waiting) == 1:
                            begin = [_Running(waiting.popleft(), now())]
                        else:
                            begin = [
                                _Running(waiting.popleft(), now()) for _ in range(min(free, len(waiting)))
                            ]
                        running.update(begin)
                if upstream_done or failure:
                    if not emit and not begin and not outcomes and not running:
                        stopped = True
                        end = (
                            functools.partial(observer.on_error, failure[0])
                            if failure
                            else observer.on_completed
                        )
                    return emit, begin, 0, end
                # Counts what it asked for itself: the upstream Demand's pending drops before the item reaches
                # on_next, and a request racing in between would overshoot.
                outstanding = len(running) + len(waiting) + requested
                if outstanding > least:
                    return emit, begin, 0, end  # refill only at the low mark
                wanted = most - outstanding
                if not unbounded:
                    wanted = min(wanted, demand.pending - outstanding - len(outcomes))
                if wanted > 0:
                    requested += wanted
                return emit, begin, wanted, end

            def claim() -> _Round[_T, _U] | None:
                # Called with the lock held, right after a change of state. Rounds are picked under the lock
                # and sent without it, one drain at a time: a change while a drain sends (from another thread,
                # or from inside a signal) makes that drain pick once more instead.
                nonlocal draining, missed
                if draining:
                    missed = True
                    return None
                draining = True
                return pick()

            def drain() -> None:
                with lock:
                    picked = claim()
                if picked is not None:
                    send(picked)

            def send(picked: _Round[_T, _U]) -> None:
                nonlocal draining, missed
                emit, begin, wanted, end = picked
                while True:
                    if wanted > 0:
                        upstream.request(wanted)
                    if all_at_once is not None and len(emit) > 1:
                        if stopped:
                            return
                        all_at_once(emit)
                    else:
                        for outcome in emit:
                            if stopped:
                                return
                            observer.on_next(outcome)
                    if fn_all is not None and len(begin) > 1:
                        start_all(fn_all, begin)
                    else:
                        for entry in begin:
                            start(entry)
                    if end is not None:
                        end()
                        return
                    with lock:
                        # Whatever else changes the state calls drain; only the end needs another look unasked.
                        if not missed and not ((emit or begin) and (upstream_done or failure)):
                            draining = False
                            return
                        missed = False
                        emit, begin, wanted, end = pick()

            def start(entry: _Running[_T]) -> None:
                if stopped:
                    return
                try:
                    call = fn(entry.item)
                except Exception as error:
                    finish(entry, None, error)
                    return
                start_call(entry, call)

            def start_all(make: Callable[[list[_T]], list[_Call[_U]]], entries: list[_Running[_T]]) -> None:
                if stopped:
                    return
                try:
                    calls = make([entry.item for entry in entries])
                except Exception as error:
                    for entry in entries:
                        finish(entry, None, error)
                    return
                for entry, call in zip(entries, calls, strict=True):
                    start_call(entry, call)

            def start_call(entry: _Running[_T], call: _Call[_U]) -> None:
                if isinstance(call, Queued):
                    # Its clock and timeout start when a thread takes it, not while it waits in the queue.
                    entry.handle = call
                    call._entry = entry
                    call._begin_many = begin_queued_all
                    if call.future is not None:
                        call.future.add_done_callback(functools.partial(finish_future, entry))
                    else:
                        call._finish_many = finish_queued
                    if stopped:
                        entry.cancel()
                    return
                if timeout_s is not None:
                    arm(entry)
                if isinstance(call, types.CoroutineType):
                    # The hot path of async job workers: a task that reports as its last act, so an outcome
                    # costs no done callback and no extra turn of the loop.
                    run_coroutine(entry, call)
                elif isinstance(call, asyncio.Future):
                    # A future needs no subscription machinery.
                    entry.handle = call
                    call.add_done_callback(functools.partial(finish_future, entry))
                elif isinstance(call, Coroutine):
                    run_coroutine(entry, call)
                else:
                    entry.handle = call.subscribe(
                        functools.partial(finish_value, entry),
                        functools.partial(finish, entry, None),
                        functools.partial(finish, entry, None, None),
                        scheduler=call_scheduler,
                    )
                if stopped:
                    entry.cancel()  # stop() may have run before the handle was set

            def arm(entry: _Running[_T], elapsed: float = 0.0) -> None:
                assert timeout_s is not None  # armed only with a timeout

                def expire(_scheduler: abc.SchedulerBase, _state: object) -> None:
                    finish(entry, None, TimeoutError(f"the call took longer than timeout_s={timeout_s} s"))

                entry.timer = clock.schedule_relative(max(0.0, timeout_s - elapsed), expire)

            def begin_queued_all(begins: list[tuple[_Running[_T], float | None]]) -> None:
                arming: list[tuple[_Running[_T], float]] = []
                with lock:
                    current = now()
                    for entry, at in begins:
                        if entry not in running:
                            continue  # finished or stopped before the news of its begin came
                        entry.started_at = current if at is None else min(at, current)
                        if timeout_s is not None:
                            arming.append((entry, current - entry.started_at))
                for entry, elapsed in arming:
                    arm(entry, elapsed)

            def run_coroutine(entry: _Running[_T], call: Coroutine[Any, Any, _U]) -> None:
                loop = _running_loop()
                if loop is None:
                    call.close()
                    finish(entry, None, RuntimeError("a coroutine call needs a running asyncio loop"))
                    return
                entry.handle = loop.create_task(_report(call, finish, entry, contextvars.copy_context()))

            def finish_future(entry: _Running[_T], done: asyncio.Future[_U]) -> None:
                finish(entry, *_result_of(done))

            def finish_value(entry: _Running[_T], value: _U) -> None:
                finish(entry, value, None)

            def record(
                entry: _Running[_T], value: Any, error: BaseException | None, finished_at: float
            ) -> bool:
                # Called with the lock held: the call's outcome, unless it finished already (a value after a
                # timeout, or the reverse, or a call stopped meanwhile).
                nonlocal plain
                try:
                    running.remove(entry)
                except KeyError:
                    return False
                handle = entry.handle
                if isinstance(handle, Queued):
                    # The call and its entry point at each other: without this, every finished call (and its
                    # item) would wait in a cycle for the garbage collector. A later begin or outcome of this
                    # call finds no entry and is passed over, as it would be for a call no longer running.
                    handle._entry = None
                if queues is not None and not entry.queued:
                    plain -= 1
                outcomes.append(Outcome(entry.item, value, error, entry.started_at, finished_at))
                return True

            def finish(entry: _Running[_T], value: _U | None, error: BaseException | None) -> None:
                with lock:
                    if not record(entry, value, error, now()):
                        return
                    picked = claim()
                entry.cancel()
                if picked is not None:
                    send(picked)

            def finish_queued(reports: list[tuple[Queued[Any], Any, BaseException | None]]) -> None:
                # finish() for a batch of queued calls: one lock and one drain for them all.
                timers: list[abc.DisposableBase] = []
                with lock:
                    finished_at = now()
                    for call, value, error in reports:
                        entry = call._entry
                        if entry is None or not record(entry, value, error, finished_at):
                            continue
                        if entry.timer is not None:
                            timers.append(entry.timer)
                    picked = claim()
                for timer in timers:
                    timer.dispose()
                if picked is not None:
                    send(picked)

            def on_next(item: _T) -> None:
                nonlocal requested
                with lock:
                    waiting.append(item)
                    if requested > 0:
                        requested -= 1
                    picked = claim()
                if picked is not None:
                    send(picked)

            def on_next_all(items: list[_T]) -> None:
                # on_next of each, in one round: a fetch's batch starts with one lock and one drain.
                nonlocal requested
                with lock:
                    waiting.extend(items)
                    requested = max(0, requested - len(items))
                    picked = claim()
                if picked is not None:
                    send(picked)

            def on_error(error: Exception) -> None:
                with lock:
                    failure.append(error)
                    waiting.clear()
                drain()

            def on_completed() -> None:
                nonlocal upstream_done
                with lock:
                    upstream_done = True
                drain()

            def stop() -> None:
                nonlocal stopped, plain
                with lock:
                    stopped = True
                    calls = list(running)
                    running.clear()
                    plain = 0
                for entry in calls:
                    entry.cancel()

            subscription = CompositeDisposable(Disposable(stop))
            subscription.add(demand.on_request(drain))
            subscription.add(
                subscribe_upstream(
                    source, ManyObserver(on_next, on_error, on_completed, on_next_all), upstream, scheduler_
                )
            )
            drain()
            return subscription

        return Flowable(subscribe)

    return operator


async def _report(
    coro: Coroutine[Any, Any, _U],
    finish: Callable[[_Running[_T], _U | None, BaseException | None], None],
    entry: _Running[_T],
    outer: contextvars.Context,
) -> None:
    # The outcome is reported in the caller's context, not the task's: what a call set in its context
    # variables must not reach the calls that start from this report.
    try:
        value = await coro
    except (Exception, asyncio.CancelledError) as error:
        entry.handle = None  # the call is over: finishing must not cancel the task that reports
        outer.run(finish, entry, None, error)
        if isinstance(error, asyncio.CancelledError):
            raise
        return
    except BaseException as error:  # KeyboardInterrupt, SystemExit: reported, then on to the loop
        entry.handle = None
        outer.run(finish, entry, None, error)
        raise
    entry.handle = None
    outer.run(finish, entry, value, None)


_Call = Observable[_U] | asyncio.Future[_U] | Coroutine[Any, Any, _U] | Queued[_U]
"""What ``fn`` of :func:`process` makes for an item: the call whose first value is its outcome."""

_Round = tuple[list[Outcome[_T, _U]], list["_Running[_T]"], int, Callable[[], None] | None]
"""What one round of a drain sends: outcomes, calls to start, items to request upstream, and the end."""


class _Running(Generic[_T]):
    """One running call: its item, when it started, and what stops it (its future or subscription, its timer)."""

    __slots__ = ("handle", "item", "queued", "started_at", "timer")

    def __init__(self, item: _T, started_at: float, queued: bool = False) -> None:
        self.item = item
        self.started_at = started_at
        self.queued = queued
        self.handle: asyncio.Future[Any] | abc.DisposableBase | Queued[Any] | None = None
        self.timer: abc.DisposableBase | None = None

    def cancel(self) -> None:
        """Stop the call and its timer; a no-op for what has finished already."""
        handle, timer = self.handle, self.timer
        if timer is not None:
            timer.dispose()
        if isinstance(handle, asyncio.Future):
            handle.cancel()
        elif handle is not None:
            handle.dispose()


def from_async(
    fn: Callable[[_T], Awaitable[_U]], *, loop: asyncio.AbstractEventLoop | None = None
) -> Callable[[_T], Observable[_U]]:
    """Turn a coroutine function into the call shape :func:`process` takes.

    Each subscription runs ``fn(item)`` as a task on ``loop`` (the running loop when None, so subscribe
    from the loop, as an AsyncIOScheduler does) and emits its result; disposing cancels the task.

    Args:
        fn: a coroutine function of one item.
        loop: the event loop to run on; when it is not the running loop the coroutine is handed to it
            thread-safely.

    Returns:
        A function from an item to a cold Observable of one value.

    ::

        fn(item):  ----v|

    >>> async def double(x):
    ...     return 2 * x
    >>> async def main():
    ...     result = asyncio.get_running_loop().create_future()
    ...     from_async(double)(21).subscribe(result.set_result)
    ...     return await result
    >>> asyncio.run(main())
    42
    """

    def call(item: _T) -> Observable[_U]:
        def subscribe(
            observer: abc.ObserverBase[_U], _scheduler: abc.SchedulerBase | None = None
        ) -> Disposable:
            running = _running_loop()
            target = loop or running
            if target is None:
                raise RuntimeError(
                    "from_async needs a running asyncio loop; subscribe from the loop or pass loop="
                )
            disposed = False

            def deliver(outcome: tuple[bool, Any]) -> None:
                succeeded, result = outcome
                if disposed:
                    return
                if not succeeded:
                    observer.on_error(result)
                    return
                observer.on_next(result)
                observer.on_completed()

            pending: asyncio.Future[tuple[bool, Any]] | concurrent.futures.Future[tuple[bool, Any]]
            if target is running:
                task = target.create_task(_run(fn, item))
                task.add_done_callback(lambda done: deliver(_settled(done)))
                pending = task
            else:
                future = asyncio.run_coroutine_threadsafe(_run(fn, item), target)
                future.add_done_callback(lambda done: target.call_soon_threadsafe(deliver, _settled(done)))
                pending = future

            def cancel() -> None:
                nonlocal disposed
                disposed = True
                pending.cancel()

            return Disposable(cancel)

        return Observable(subscribe)

    return call


async def _run(fn: Callable[[_T], Awaitable[_U]], item: _T) -> tuple[bool, Any]:
    # Failures travel as values so a done callback never has to call a raising result().
    try:
        return True, await fn(item)
    except Exception as error:
        return False, error


def _settled(
    done: asyncio.Future[tuple[bool, Any]] | concurrent.futures.Future[tuple[bool, Any]],
) -> tuple[bool, Any]:
    if done.cancelled():
        return False, _as_exception(asyncio.CancelledError())
    return done.result()


def _as_exception(error: BaseException) -> Exception:
    if isinstance(error, Exception):
        return error
    wrapped = RuntimeError(f"the call ended with {type(error).__name__}")
    wrapped.__cause__ = error
    return wrapped


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def in_thread(
    fn: Callable[[_T], _U],
    executor: concurrent.futures.Executor,
    *,
    loop: asyncio.AbstractEventLoop | None = None,
) -> Callable[[_T], Observable[_U]]:
    """Turn a blocking function into the call shape :func:`process` takes, run in ``executor``.

    The result is handed back to ``loop`` (the running loop at subscribe when None) with
    ``call_soon_threadsafe``, so the pipeline stays on its loop's thread; with no loop at all it is emitted
    on the executor's thread. Disposing cancels the call if it has not started.

    Args:
        fn: a function of one item (blocking I/O, or CPU work in a process pool).
        executor: where it runs, e.g. a ``ThreadPoolExecutor``.
        loop: the loop to deliver results on.

    Returns:
        A function from an item to a cold Observable of one value.

    ::

        fn(item):  ----v|     (v computed on a worker thread, emitted on the loop)

    >>> with concurrent.futures.ThreadPoolExecutor(1) as pool:
    ...     in_thread(len, pool)("abc").run()
    3
    """

    def call(item: _T) -> Observable[_U]:
        def subscribe(
            observer: abc.ObserverBase[_U], _scheduler: abc.SchedulerBase | None = None
        ) -> Disposable:
            target = loop or _running_loop()
            disposed = False

            def deliver(done: concurrent.futures.Future[_U]) -> None:
                if disposed or done.cancelled():
                    return
                error = done.exception()
                if error is not None:
                    observer.on_error(_as_exception(error))
                    return
                observer.on_next(done.result())
                observer.on_completed()

            def on_done(done: concurrent.futures.Future[_U]) -> None:
                if target is None:
                    deliver(done)
                elif not target.is_closed():
                    target.call_soon_threadsafe(deliver, done)

            future = executor.submit(fn, item)
            future.add_done_callback(on_done)

            def cancel() -> None:
                nonlocal disposed
                disposed = True
                future.cancel()

            return Disposable(cancel)

        return Observable(subscribe)

    return call
