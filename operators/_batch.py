"""buffer_with_time_or_count: batches that close on size or age, with request-n and a lock (RxPY #694)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import TypeVar

from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable, Disposable, SerialDisposable
from reactivex.observer import Observer
from reactivex.scheduler import TimeoutScheduler

from ._flow import Demand, Flowable, StreamEnd, drain_loop, is_prompt, subscribe_upstream

_T = TypeVar("_T")

FlushHook = Callable[[int, str], None]
"""Told ``(size, trigger)`` as each batch is emitted; trigger is ``"count"``, ``"time"`` or ``"complete"``."""


def buffer_with_time_or_count(
    timespan: float,
    count: int,
    *,
    scheduler: abc.SchedulerBase | None = None,
    on_flush: FlushHook | None = None,
) -> Callable[[Observable[_T]], Flowable[list[_T]]]:
    """Group items into lists that close at ``count`` items or ``timespan`` seconds after their first item.

    The age timer starts at the first item of each batch (not on a fixed period), so no item waits longer
    than ``timespan`` while downstream is asking for batches, and an idle stream costs no timers. Empty
    batches are never emitted; the partial batch is flushed when the source completes. Unlike reactivex 4's
    operator of the same name, the timer and ``on_next`` share state under a lock (RxPY issue 694), so no
    item is lost or repeated when they race on different threads.

    Demand-aware: when downstream requests ``n`` batches, up to ``n * count`` items are requested from a
    Flowable source. A batch closed early by its timer withdraws the rest of its items' requests, so an item
    is requested only while a requested batch has room for it, and leaves at most ``timespan`` after it
    arrived (unless the source had already claimed it when the requests were withdrawn).

    Args:
        timespan: the longest a batch stays open after its first item, in seconds (> 0).
        count: the size at which a batch closes (>= 1).
        scheduler: where the timers run (else the subscriber's, else reactivex's TimeoutScheduler).
        on_flush: optional telemetry hook told ``(size, trigger)`` for each batch emitted.

    Returns:
        An operator from an Observable of items to a Flowable of non-empty lists.

    ::

        source:  -a-b-c-d------e-----|      (count=3, timespan=4 ticks)
        result:  -----x-----y-------z|      x=[a,b,c] (count), y=[d] (time), z=[e] (complete)

    >>> import reactivex
    >>> reactivex.from_iterable(range(5)).pipe(buffer_with_time_or_count(1.0, 2)).run()
    [4]
    """
    if not timespan > 0:
        raise ValueError(f"timespan must be a positive number of seconds (got {timespan})")
    if count < 1:
        raise ValueError(f"count must be >= 1 (got {count})")

    def operator(source: Observable[_T]) -> Flowable[list[_T]]:
        def subscribe(
            observer: abc.ObserverBase[list[_T]], demand: Demand, scheduler_: abc.SchedulerBase | None
        ) -> abc.DisposableBase:
            timer_scheduler = scheduler or scheduler_ or TimeoutScheduler.singleton()
            lock = threading.Lock()
            upstream = Demand.unlimited() if demand.unbounded else Demand()
            buffer: list[_T] = []
            generation = 0  # which open batch the running timer belongs to
            ready: deque[tuple[list[_T], str]] = deque()
            upstream_done = False
            requested = 0  # items asked of upstream and not yet received
            end = StreamEnd()
            timer = SerialDisposable()

            def close(trigger: str) -> None:
                # Called with the lock held.
                nonlocal buffer, generation
                if buffer:
                    ready.append((buffer, trigger))
                    buffer = []
                generation += 1

            def next_signal() -> Callable[[], None] | None:
                # Called with the lock held, once drain_loop found the stream going: picks what to emit next,
                # or None when nothing can go now.
                if ready and demand.take(1):
                    batch, trigger = ready.popleft()

                    def emit() -> None:
                        if on_flush is not None:
                            on_flush(len(batch), trigger)
                        observer.on_next(batch)

                    return emit
                if upstream_done and not ready and not buffer:
                    end.stopped = True
                    return observer.on_completed
                return None

            def request_more() -> int:
                # Called with the lock held: how many more items the requested batches leave room for. It
                # counts its own requests: upstream's Demand drops before the item reaches on_next.
                nonlocal requested
                if upstream.unbounded:
                    return 0
                room = min(demand.pending, _MAX_BATCHES) * count
                held = len(buffer) + sum(len(batch) for batch, _ in ready) + requested
                if held > room and requested:
                    # A batch closed by its timer took one requested batch but fewer than `count` of the items
                    # asked for it: take the rest back. Then every item that arrives has a requested batch to
                    # leave in, at most `timespan` later (a throttle above stays exact with its hold extended
                    # by `timespan`). Counted as gone now; any the producer had already claimed still arrive.
                    withdrawn = min(held - room, requested)
                    requested -= withdrawn
                    return -withdrawn
                wanted = max(0, room - held)
                requested += wanted
                return wanted

            drain = drain_loop(lock, next_signal, request_more, upstream, end, observer)

            def fire(_scheduler: abc.SchedulerBase, expected: int | None) -> None:
                with lock:
                    if expected != generation:
                        return  # the batch closed on count (or completion) before the timer ran
                    close("time")
                drain()

            def on_next(item: _T) -> None:
                nonlocal requested
                start_timer = None
                with lock:
                    if end.stopped:
                        return
                    requested = max(0, requested - 1)
                    buffer.append(item)
                    if len(buffer) >= count:
                        close("count")
                        start_timer = -1
                    elif len(buffer) == 1:
                        start_timer = generation
                if start_timer is not None:
                    if start_timer >= 0:
                        timer.disposable = timer_scheduler.schedule_relative(timespan, fire, start_timer)
                    else:
                        timer.disposable = Disposable()
                drain()

            def on_error(error: Exception) -> None:
                with lock:
                    end.fail(error)
                drain()

            def on_completed() -> None:
                nonlocal upstream_done
                with lock:
                    close("complete")
                    upstream_done = True
                timer.disposable = Disposable()
                drain()

            def stop() -> None:
                with lock:
                    end.stopped = True

            subscription = CompositeDisposable(timer, Disposable(stop))
            subscription.add(demand.on_request(drain))
            subscription.add(
                subscribe_upstream(source, Observer(on_next, on_error, on_completed), upstream, scheduler_)
            )
            drain()
            return subscription

        # Batches of a prompt source (a per-key throttle above) must start at once too.
        return Flowable(subscribe, prompt=is_prompt(source))

    return operator


# Caps room * count so an enormous (but bounded) demand cannot build a huge integer request.
_MAX_BATCHES = 1 << 40
