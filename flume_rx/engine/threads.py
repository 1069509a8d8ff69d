"""Stage threads: where sync workers run, each thread looping over a shared local queue of calls.

``loop.run_in_executor`` costs a sync job two crossings of the event loop's self-pipe: the pool's thread
hands its result over with ``call_soon_threadsafe`` (a write to the pipe and a wake-up of the loop) for every
job. Here a thread that finishes a call leaves the outcome for the loop and wakes it only when no wake-up is
already on its way, so the loop collects every outcome that finished meanwhile in one turn, however many
threads finished. While calls handed ahead are out (see below), the loop looks for notes every
``NOTE_AFTER_S`` anyway, and that look takes the outcomes too: a thread then wakes the loop only when no call
is left for the threads to take (the loop must hand over more, or a caller waits on this one alone), so a
backlog of short jobs costs one wake-up of the loop a millisecond, not one a job. Each wake-up made the thread
that finished hand the interpreter lock over mid-backlog, and a job that waits on I/O (one redis-py ``INCR``)
then waited for the lock again to read its reply (docs/performance.md, "Sixth round"). The threads take their
next call from a ``SimpleQueue`` the loop fills, never through the loop. The rest of the ``Executor``
interface (``submit``, ``shutdown``) is that of a plain thread pool, so batches and ``run_in_executor`` use
the same threads.

A call may be handed over before a thread is free for it (the processor gives each thread its next job, so a
thread that finishes one takes the next without waiting for the loop). What must happen when the job really
begins is done by ``on_take``, in the thread that takes it: it may refuse the call (its exception becomes
the outcome and the call never runs), and it returns what the loop must do about the start. That note wakes
nobody: it rides to the loop with the next batch of outcomes, ahead of the call's own, or at the latest
``NOTE_AFTER_S`` later, when the loop looks for notes itself. A wake-up at every take would cost the job's
first line a crossing of the self-pipe (the thread lets go of the interpreter, the loop takes it).

Not every thread takes calls: for short calls that hold the interpreter lock, fewer threads drain faster, and
how many is found by estimate and trial (thread_count.py says why and how). Each thread times its calls for
the estimate; threads beyond the count park, unless every active thread has been in its call for
``BLOCKED_AFTER_S``: such calls wait on something else, and a backlog never waits behind them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from flume_rx import operators as fo
from flume_rx.engine.thread_count import ThreadCount, threads_needed

_T = TypeVar("_T")

_STOP = object()

STAGE_THREAD_PREFIX = "flume-stage"
"""The default start of stage threads' names; a stopping worker process looks for hung jobs by it."""

NOTE_AFTER_S = 0.001
"""The longest a taken call's note waits for a batch of outcomes before the loop collects it itself."""

logger = logging.getLogger("flume_rx.pipeline")

SAMPLE_CALLS = 64
"""How many of its calls a thread times before it estimates again how many threads should take calls."""

COUNT_EVERY_S = 0.005
"""How often a thread that finished a call moves the trials of the thread count on (thread_count.py)."""

BLOCKED_AFTER_S = 0.005
"""A call running this long waits on something other than the interpreter: while every active thread is in
such a call, a parked thread takes calls too, so a few slow calls never hold a backlog back."""

PARKED_LOOK_S = 0.02
"""How often a parked thread looks whether every active thread is in a long call."""

WAKE_SWITCH_INTERVAL_S = 0.00002
"""The interpreter's switch interval while a call wakes an idle stage thread, until a thread takes a call.

The loop that hands a call to an idle thread goes on running Python (the rest of its turn, the next fetch)
for a few hundred microseconds before it waits on anything; the woken thread, wanting the interpreter lock,
would wait for that wait, or for the switch interval (5 ms by default) to force a switch. With sync jobs
arriving one at a time, that was most of enqueue-to-start after the fetch reply (docs/performance.md). This
short an interval only while a thread of an idle pool wakes lets it take the lock within about 20 us of its
wake-up (0.1 ms gave enqueue-to-start p50 0.64 ms, 20 us 0.57 ms, 5 us no less: docs/performance.md); busy
threads (handed their next call ahead) never wait for it, so their switching stays as it was. 0 leaves the
interval alone."""


YIELD_ON_WAKE = True
"""Whether the loop, having handed a call to an idle pool, lets go of the interpreter lock for a moment
(``os.sched_yield``), so the woken thread takes it at once rather than after the switch interval.

The lowered interval alone still cost the woken thread two wake-ups: one from its queue, and one more from the
lock's wait once the loop, asked to, let go (about 0.12 ms here, against 0.015 ms with the yield; the loop busy
meanwhile, one thread woken by a queue, ``docs/performance.md``). The loop then waits until the thread's job
lets go of the lock, at its first I/O or the switch interval. Only when every taking thread has waited for work
for over ``IDLE_BEFORE_WAKE_S``: in a backlog of sync no-ops that is about one hand-off in ten (the threads ran
dry before the loop's next look), and those drains were no slower for it."""


IDLE_BEFORE_WAKE_S = 0.001
"""How long every thread of a pool must have waited for calls before a call's wake-up lowers the interval:
a pool that waits for work (jobs arriving one at a time), not one between two calls of a backlog."""


class _SwitchInterval:
    """Lowers the process's switch interval for a waking thread and puts the previous one back after."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._previous: float | None = None  # the interval to put back, while lowered

    def lower(self) -> None:
        if not WAKE_SWITCH_INTERVAL_S:
            return
        with self._lock:
            if self._previous is None:
                self._previous = sys.getswitchinterval()
                sys.setswitchinterval(WAKE_SWITCH_INTERVAL_S)

    def restore(self) -> None:
        if self._previous is None:  # the common case, read without the lock: nothing was lowered
            return
        with self._lock:
            if self._previous is not None:
                sys.setswitchinterval(self._previous)
                self._previous = None


_switch_interval = _SwitchInterval()


class StageThreads(concurrent.futures.Executor):
    """``threads`` daemon threads named ``<prefix>_<n>``, one started with each of the first calls.

    :meth:`hand` is the fast path of a process's sync jobs: their outcomes reach the process in batches
    (:func:`flume_rx.operators.report_queued`), one round of the process for every outcome that finished
    meanwhile, with no future or callback per job. :meth:`run_soon` returns an asyncio future of the loop it
    is called on, completed from the threads' outcomes in batches. :meth:`submit` returns an ordinary
    ``concurrent.futures.Future`` for everything else.

    >>> async def main():
    ...     with StageThreads(2) as threads:
    ...         return await asyncio.gather(*(threads.run_soon(pow, 2, n) for n in range(4)))
    >>> asyncio.run(main())
    [1, 2, 4, 8]
    """

    def __init__(self, threads: int, thread_name_prefix: str = STAGE_THREAD_PREFIX) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1 (got {threads})")
        self._size = threads
        self._prefix = thread_name_prefix
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._shutdown = False
        self._mail: dict[asyncio.AbstractEventLoop, _Mail] = {}  # per loop; made on the loop's own thread
        self._idle: list[None] = []  # one entry per thread waiting for a call (append and pop are atomic)
        self._idle_since = 0.0  # when the last thread to go idle began to wait (time.monotonic())
        self._count = ThreadCount(threads)  # threads of index count.active and beyond park
        self._began = [0.0] * threads  # per thread: when its call began (perf_counter), 0.0 between calls
        self._finished = [0] * threads  # per thread (each writes its own): calls it finished
        self._counting = threading.Lock()  # one thread at a time updates the count
        self._counted_at = 0.0
        self._parked = threading.Condition(threading.Lock())

    @property
    def size(self) -> int:
        """How many threads run calls: never more calls than this run at once."""
        return self._size

    def run_soon(
        self, fn: Callable[..., _T], *args: Any, on_take: OnTake | None = None
    ) -> asyncio.Future[_T]:
        """Run ``fn(*args)`` on a stage thread; the result comes back on the running loop, batched.

        ``on_take`` is called in the thread that takes the call, before ``fn``; an exception it raises is the
        call's outcome instead (``fn`` does not run), and what it returns is called on the loop, before the
        call's result is set.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        self._hand(loop, [(future, fn, args, on_take)])
        return future

    def hand(
        self,
        call: fo.Queued[_T],
        fn: Callable[..., _T],
        *args: Any,
        on_take: OnTake | None = None,
    ) -> None:
        """Run ``fn(*args)`` on a stage thread for a process's queued ``call``: as :meth:`run_soon`, but the
        outcome goes to :func:`flume_rx.operators.report_queued` with the others of its batch, which costs
        the loop no future and no callback per call. A cancelled call is not run."""
        self.hand_all([(call, fn, args, on_take)])

    def hand_all(self, calls: Sequence[Handed]) -> None:
        """:meth:`hand` for several calls at once, in order, with one look at the pool for them all."""
        self._hand(asyncio.get_running_loop(), calls)

    def _hand(
        self,
        loop: asyncio.AbstractEventLoop,
        calls: Sequence[_LoopCall],
    ) -> None:
        mail = self._mail.get(loop)
        if mail is None:
            mail = self._mail[loop] = _Mail(loop)
        self._put_all([(mail, target, fn, args, on_take) for target, fn, args, on_take in calls])
        noted = sum(1 for call in calls if call[3] is not None)
        if noted:
            mail.unnoted += noted
            if not mail.looking:
                mail.looking = True
                loop.call_later(NOTE_AFTER_S, self._look, mail)

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[_T]:
        """Run ``fn(*args, **kwargs)`` on a stage thread; an ordinary concurrent future of its result."""
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()
        self._put_all([(None, future, fn, (args, kwargs), None)])
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking calls; with ``cancel_futures`` drop the calls not yet started; with ``wait`` join."""
        with self._lock:
            self._shutdown = True
            threads = list(self._threads)
        with self._parked:
            self._parked.notify_all()  # every thread must reach its stop
        if cancel_futures:
            while True:
                try:
                    call = self._calls.get_nowait()
                except queue.Empty:
                    break
                if call is not _STOP:
                    call[1].cancel()
        for _ in threads:
            self._calls.put(_STOP)
        if wait:
            for thread in threads:
                thread.join()

    def _put_all(self, calls: list[tuple[Any, ...]]) -> None:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot run a call after shutdown of the stage threads")
            # One thread per call until all are started: a stage each, as the processor's stages fill.
            starting: list[threading.Thread] = []
            while len(self._threads) < self._size and len(starting) < len(calls):
                index = len(self._threads)
                thread = threading.Thread(
                    target=self._work, args=(index,), name=f"{self._prefix}_{index}", daemon=True
                )
                self._threads.append(thread)
                starting.append(thread)
        waking_idle = (
            self._idle
            and len(self._idle) >= min(len(self._threads), self._count.active)
            and time.monotonic() - self._idle_since > IDLE_BEFORE_WAKE_S
        )
        if waking_idle:
            # The pool is idle, waiting for work: the thread this wakes gets the interpreter soon (see the
            # constant). In a backlog, threads idle for a moment between calls keep the interval as it was.
            _switch_interval.lower()
        put = self._calls.put
        for call in calls:
            put(call)
        for thread in starting:
            thread.start()
        if waking_idle and not starting and YIELD_ON_WAKE:
            os.sched_yield()  # releases the interpreter lock: see YIELD_ON_WAKE

    def _work(self, index: int) -> None:
        calls = self._calls
        idle = self._idle
        began = self._began
        finished = self._finished
        count = self._count
        walls: list[float] = []  # of this thread's calls since its last estimate
        # This thread's CPU clock as the sample's first call began. Read once a sample, not around each call
        # (two reads a call were a sixth of a stage thread's own work on a sync no-op job, under cProfile):
        # between calls the thread waits without CPU, so what the clock adds over the sample is its calls'
        # CPU and a little bookkeeping.
        sample_thread_cpu = 0.0
        # The process's CPU and every thread's finished calls when this sample began: what a call costs the
        # interpreter lock in all, the loop's share included (threads_needed).
        sample_cpu, sample_finished = time.process_time(), 0
        while True:
            if index >= count.active:
                self._park(index)
            self._idle_since = time.monotonic()
            idle.append(None)
            call = calls.get()
            idle.pop()
            _switch_interval.restore()
            if call is _STOP:
                return
            start = time.perf_counter()
            if not walls:
                sample_thread_cpu = time.thread_time()
            began[index] = start
            ran = self._run(call)
            began[index] = 0.0
            if not ran:
                continue
            end = time.perf_counter()
            finished[index] += 1
            walls.append(end - start)
            if len(walls) == SAMPLE_CALLS:
                cpu_seen = time.thread_time() - sample_thread_cpu
                process_cpu, all_finished = time.process_time(), sum(finished)
                counted = all_finished - sample_finished
                per_call = (process_cpu - sample_cpu) / counted if counted > 0 else 0.0
                count.estimate(threads_needed(walls, cpu_seen, per_call))
                walls = []
                sample_cpu, sample_finished = process_cpu, all_finished
            if end - self._counted_at >= COUNT_EVERY_S:
                self._update_count(end)

    def _update_count(self, now: float) -> None:
        if not self._counting.acquire(blocking=False):
            return  # another thread is at it
        try:
            self._counted_at = now
            count = self._count
            before, chosen = count.active, count.chosen
            count.update(now, sum(self._finished))
            if count.chosen != chosen:
                logger.debug("stage threads %s: %d of %d take calls", self._prefix, count.chosen, count.size)
            if count.active > before:
                with self._parked:
                    self._parked.notify_all()
        finally:
            self._counting.release()

    def _park(self, index: int) -> None:
        """Wait while this thread is beyond the active ones, unless every active one is in a long call."""
        with self._parked:
            while index >= (active := self._count.active) and not self._shutdown:
                now = time.perf_counter()
                if all(0.0 < began < now - BLOCKED_AFTER_S for began in self._began[:active]):
                    return  # they all wait on something else: this thread takes the next call
                self._parked.wait(PARKED_LOOK_S)

    def _run(self, call: tuple[Any, ...]) -> bool:
        """Run one call; whether its function ran (not a cancelled call, nor one its on_take refused)."""
        mail, target, fn, args, on_take = call
        if mail is None:
            return self._run_submitted(target, fn, *args)
        if target.cancelled():  # racy but harmless: a cancelled call's outcome is dropped anyway
            if on_take is not None:
                mail.taken.append(None)
            return False
        ran = False
        try:
            if on_take is not None:
                try:
                    note = on_take()
                except BaseException:
                    mail.taken.append(None)
                    raise
                mail.taken.append(note)
            ran = True
            value = fn(*args)
        except BaseException as error:  # handed to the loop; KeyboardInterrupt/SystemExit too, as a result
            # Never kept in a local of this frame: the error's traceback holds the frame, and the pair would
            # wait in a cycle (with the job's frames and arguments) for the garbage collector.
            self._hand_over(mail, (target, None, error))
            return ran
        self._hand_over(mail, (target, value, None))
        return ran

    def _look(self, mail: _Mail) -> None:
        """On the loop, every NOTE_AFTER_S while taken calls may have notes waiting: collect them, and the
        outcomes finished meanwhile, which woke nobody."""
        self._deliver(mail)
        if mail.unnoted > 0 and not self._shutdown:
            mail.loop.call_later(NOTE_AFTER_S, self._look, mail)
            return
        # A thread appends its outcome before it reads `looking`: one that finishes after this line wakes the
        # loop, and one that finished before it is seen just below.
        mail.looking = False
        if mail.finished:
            mail.looking = True
            mail.loop.call_soon(self._look, mail)

    def _hand_over(self, mail: _Mail, outcome: tuple[asyncio.Future[Any] | fo.Queued[Any], Any, Any]) -> None:
        mail.finished.append(outcome)
        # The loop's own look takes this within NOTE_AFTER_S, unless no call is left to keep the threads
        # busy meanwhile (see the module's docstring). Two threads may both wake it: the second finds nothing.
        if not mail.waking and (not mail.looking or self._shutdown or self._calls.empty()):
            mail.waking = True
            # The one crossing of the self-pipe for every outcome that finishes before the loop runs _deliver.
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits for these futures
                mail.loop.call_soon_threadsafe(self._deliver, mail)

    def _deliver(self, mail: _Mail) -> None:
        # Cleared before the outcomes are taken: a thread that saw it set had appended its outcome already.
        mail.waking = False
        # Outcomes counted before the notes are taken: each of these had its note in before it (its thread
        # noted it before running it), so notes still come first.
        ready = len(mail.finished)
        self._collect_notes(mail)
        finished = mail.finished
        reports: list[tuple[fo.Queued[Any], Any, BaseException | None]] = []
        for _ in range(ready):
            target, value, error = finished.popleft()
            if isinstance(target, fo.Queued):
                reports.append((target, value, error))  # taken by their processes at once, after the loop
                continue
            if target.cancelled():
                continue
            if error is None:
                target.set_result(value)
            elif isinstance(error, Exception):
                target.set_exception(error)
            else:
                # asyncio futures refuse BaseExceptions other than Exception: wrap, keeping the cause.
                wrapped = RuntimeError(f"the call ended with {type(error).__name__}")
                wrapped.__cause__ = error
                target.set_exception(wrapped)
        if reports:
            fo.report_queued(reports)

    @staticmethod
    def _collect_notes(mail: _Mail) -> None:
        taken = mail.taken
        run: list[Any] = []  # the values of consecutive notes of one note_all (see OnTake)
        note_all: Callable[[list[Any]], None] | None = None
        while taken:
            note = taken.popleft()
            mail.unnoted -= 1
            if note is None:
                continue
            if type(note) is tuple:
                if note[0] is not note_all:
                    if note_all is not None:
                        _note(note_all, run)
                        run = []
                    note_all = note[0]
                run.append(note[1])
                continue
            if note_all is not None:  # notes keep their order
                _note(note_all, run)
                run, note_all = [], None
            _note(note)
        if note_all is not None:
            _note(note_all, run)

    @staticmethod
    def _run_submitted(
        future: concurrent.futures.Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> bool:
        if not future.set_running_or_notify_cancel():
            return False
        try:
            result = fn(*args, **kwargs)
        except BaseException as error:
            future.set_exception(error)
        else:
            future.set_result(result)
        return True


OnTake = Callable[[], "Callable[[], None] | tuple[Callable[[list[Any]], None], Any]"]
"""What a thread calls when it takes a call, before the call runs; it returns the start's note for the loop:
a function the loop calls, or ``(note_all, value)``, whose values the loop passes ``note_all`` in one list
with those of the notes of the same ``note_all`` taken meanwhile (one call for a batch of starts)."""


def _note(note: Callable[..., None], *args: Any) -> None:
    try:
        note(*args)
    except Exception:  # one start's bookkeeping failing must not lose the outcomes after it
        logger.exception("noting the start of a call failed")


Handed = tuple["fo.Queued[Any]", Callable[..., Any], tuple[Any, ...], OnTake | None]
"""A call :meth:`StageThreads.hand_all` takes: the process's queued call, the function, its arguments, and its
``on_take`` (see :meth:`StageThreads.run_soon`)."""

_LoopCall = tuple["asyncio.Future[Any] | fo.Queued[Any]", Callable[..., Any], tuple[Any, ...], OnTake | None]
"""A call handed from a loop: a :data:`Handed` one, or one of :meth:`StageThreads.run_soon` with its future."""


class _Mail:
    """What the threads hand one loop: notes of calls taken, outcomes finished, and whether it is told.

    The threads only append to its deques and read and set its flags; the loop alone takes from the deques.
    Appends and takes of a ``deque`` are atomic, so a call costs its thread no lock: with ten threads, a lock
    taken twice a call was held by one while others queued behind it.
    """

    __slots__ = ("finished", "looking", "loop", "taken", "unnoted", "waking")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.taken: deque[Any] = deque()  # notes (see OnTake), None for a call not begun
        self.finished: deque[tuple[asyncio.Future[Any] | fo.Queued[Any], Any, Any]] = deque()
        self.unnoted = 0  # calls with an on_take whose note is not collected (the loop's own count)
        self.looking = False  # the loop's look is scheduled
        self.waking = False  # a wake-up (a _deliver) is on its way
