"""Stage threads: where sync workers run, each thread looping over a shared local queue of calls.

``loop.run_in_executor`` costs a sync job two crossings of the event loop's self-pipe: the pool's thread
hands its result over with ``call_soon_threadsafe`` (a write to the pipe and a wake-up of the loop) for every
job. Here a thread that finishes a call leaves the outcome in a list and wakes the loop only when no wake-up
is already on its way, so the loop collects every outcome that finished meanwhile in one turn, however many
threads finished. The threads take their next call from a ``SimpleQueue`` the loop fills, never through the
loop. The rest of the ``Executor`` interface (``submit``, ``shutdown``) is that of a plain thread pool, so
batches and ``run_in_executor`` use the same threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")

_STOP = object()


class StageThreads(concurrent.futures.Executor):
    """``threads`` daemon threads named ``<prefix>_<n>``, one started with each of the first calls.

    :meth:`run_soon` is the fast path of the loop's own calls: it returns an asyncio future of the loop it is
    called on, completed from the threads' outcomes in batches. :meth:`submit` returns an ordinary
    ``concurrent.futures.Future`` for everything else.

    >>> async def main():
    ...     with StageThreads(2) as threads:
    ...         return await asyncio.gather(*(threads.run_soon(pow, 2, n) for n in range(4)))
    >>> asyncio.run(main())
    [1, 2, 4, 8]
    """

    def __init__(self, threads: int, thread_name_prefix: str = "flume-stage") -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1 (got {threads})")
        self._size = threads
        self._prefix = thread_name_prefix
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._shutdown = False
        # Per loop: outcomes finished and not yet handed over, and whether a wake-up is on its way.
        self._finished: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, Any]]] = {}

    def run_soon(self, fn: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        """Run ``fn(*args)`` on a stage thread; the result comes back on the running loop, batched."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        self._put((loop, future, fn, args))
        return future

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[_T]:
        """Run ``fn(*args, **kwargs)`` on a stage thread; an ordinary concurrent future of its result."""
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()
        self._put((None, future, fn, (args, kwargs)))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking calls; with ``cancel_futures`` drop the calls not yet started; with ``wait`` join."""
        with self._lock:
            self._shutdown = True
            threads = list(self._threads)
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

    def _put(self, call: tuple[Any, ...]) -> None:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot run a call after shutdown of the stage threads")
            # One thread per call until all are started: a stage each, as the processor's stages fill.
            start = len(self._threads) < self._size
            if start:
                thread = threading.Thread(
                    target=self._work, name=f"{self._prefix}_{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
        self._calls.put(call)
        if start:
            thread.start()

    def _work(self) -> None:
        calls = self._calls
        while True:
            call = calls.get()
            if call is _STOP:
                return
            loop, future, fn, args = call
            if loop is None:
                self._run_submitted(future, fn, *args)
                continue
            if future.cancelled():  # racy but harmless: a cancelled future ignores its outcome anyway
                continue
            try:
                outcome: tuple[Any, Any] = (fn(*args), None)
            except (
                BaseException
            ) as error:  # handed to the loop; KeyboardInterrupt/SystemExit too, as a result
                outcome = (None, error)
            self._hand_over(loop, future, outcome)

    def _hand_over(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], outcome: Any) -> None:
        with self._lock:
            finished = self._finished.get(loop)
            wake = finished is None
            if wake:
                finished = self._finished[loop] = []
            finished.append((future, *outcome))  # type: ignore[union-attr]
        if wake:
            # The one crossing of the self-pipe for every outcome that finishes before the loop runs _deliver.
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits for these futures
                loop.call_soon_threadsafe(self._deliver, loop)

    def _deliver(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            finished = self._finished.pop(loop, [])
        for future, value, error in finished:
            if future.cancelled():
                continue
            if error is None:
                future.set_result(value)
            elif isinstance(error, Exception):
                future.set_exception(error)
            else:
                # asyncio futures refuse BaseExceptions other than Exception: wrap, keeping the cause.
                wrapped = RuntimeError(f"the call ended with {type(error).__name__}")
                wrapped.__cause__ = error
                future.set_exception(wrapped)

    @staticmethod
    def _run_submitted(
        future: concurrent.futures.Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = fn(*args, **kwargs)
        except BaseException as error:
            future.set_exception(error)
        else:
            future.set_result(result)
