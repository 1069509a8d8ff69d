"""retry_with_backoff: resubscribe after an error, waiting an exponentially growing, jittered delay."""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Callable
from typing import TypeVar

from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable, Disposable, SerialDisposable
from reactivex.observer import Observer
from reactivex.scheduler import TimeoutScheduler

from ._flow import Demand, Flowable, serialize, subscribe_upstream

_jitter = random.Random()

_V = TypeVar("_V")


def backoff_delay(
    attempt: int,
    initial: float,
    cap: float,
    rng: random.Random | None = None,
    jitter: float = 0.5,
) -> float:
    """The delay before retry number ``attempt`` (0 is the first retry), in seconds.

    The base delay doubles each attempt, ``initial * 2**attempt``, and stops growing at ``cap``. Then a
    share ``jitter`` of it is drawn at random and the rest is fixed. The default 0.5 is "equal jitter":
    half fixed, half random, so retries of many clients spread out while each client's delays still grow
    with the attempt (full jitter, 1.0, would let a late retry come sooner than an early one). The delay
    lies within ``[base * (1 - jitter), base]`` where ``base = min(cap, initial * 2**attempt)``.

    Args:
        attempt: how many retries came before this one (>= 0).
        initial: the base delay of the first retry, in seconds (> 0).
        cap: the largest base delay, in seconds (>= initial).
        rng: the random source (a private one when None, so the application's global random state is left
            alone); pass a seeded one for repeatable runs.
        jitter: the random share of the delay, within [0, 1].

    Returns:
        The delay in seconds.

    ::

        attempt:  0      1        2            3 (capped)
        delay:   [.5,1] [1,2]    [2,4]        [2.5,5]      (initial=1, cap=5)

    >>> 2.0 <= backoff_delay(2, 1.0, 60.0, random.Random(7)) <= 4.0
    True
    >>> backoff_delay(10, 1.0, 5.0, jitter=0.0)
    5.0
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0 (got {attempt}); attempt 0 is the first retry")
    _check_delays(initial, cap)
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter must be within [0, 1] (got {jitter}); 0.5 is equal jitter")
    try:
        raw = initial * 2.0**attempt
    except OverflowError:
        raw = cap
    base = min(cap, raw)
    draw = (rng or _jitter).random()
    return base * (1.0 - jitter) + base * jitter * draw


def _check_delays(initial: float, cap: float) -> None:
    if not initial > 0:
        raise ValueError(f"initial must be a positive number of seconds (got {initial})")
    if not cap >= initial:
        raise ValueError(f"cap must be >= initial (got cap={cap}, initial={initial}); raise cap")


def retry_with_backoff(
    max_retries: int,
    initial: float,
    cap: float,
    *,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    scheduler: abc.SchedulerBase | None = None,
    rng: random.Random | None = None,
    jitter: float = 0.5,
) -> Callable[[Observable[_V]], Flowable[_V]]:
    """Resubscribe to the source after an error, waiting :func:`backoff_delay` between attempts.

    Each subscriber gets its own attempt budget (reactivex 4's ``retry`` shares one across subscribers,
    RxPY issue 712). An error that is not an instance of ``retry_on``, or the error after ``max_retries``
    retries, goes downstream. Items already delivered stay delivered: a retried cold source starts over,
    so pair this with sources that resume (or dedupe downstream).

    Demand-aware: when the source is a :class:`Flowable`, each (re)subscription is given the downstream
    demand still pending, so the source never emits more in total than was requested. A plain source pushes
    what it has; items beyond the downstream demand are held and sent as requests come, and its completion
    follows the last of them. An error that ends the stream goes downstream at once (held items are dropped),
    as in ``throttle``, ``buffer_with_time_or_count`` and ``process``.

    Args:
        max_retries: retries after the first subscription (>= 0); 3 means at most 4 subscriptions.
        initial: base delay of the first retry, in seconds.
        cap: the largest base delay, in seconds.
        retry_on: exception types that are retried; others pass straight downstream.
        scheduler: where the delays run (else the subscriber's, else reactivex's TimeoutScheduler).
        rng: random source for the jitter (a seeded one makes delays repeatable).
        jitter: the random share of each delay, see :func:`backoff_delay`.

    Returns:
        An operator from an Observable to a Flowable.

    ::

        source:  --a--#        (resubscribed after ~initial)  --a--b--|
        result:  --a--------------------------------------------a--b--|

    >>> import reactivex
    >>> from reactivex.testing import TestScheduler
    >>> scheduler, attempts = TestScheduler(), []
    >>> def flaky(observer, _scheduler=None):
    ...     attempts.append(scheduler.clock)
    ...     observer.on_error(OSError("down")) if len(attempts) < 3 else observer.on_completed()
    >>> _ = reactivex.create(flaky).pipe(retry_with_backoff(5, 1.0, 60.0, scheduler=scheduler)).subscribe()
    >>> _ = scheduler.start()
    >>> len(attempts)
    3
    """
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0 (got {max_retries}); 0 disables retries")
    _check_delays(initial, cap)
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter must be within [0, 1] (got {jitter}); 0.5 is equal jitter")
    retry_types = tuple(retry_on)
    if not all(isinstance(kind, type) and issubclass(kind, BaseException) for kind in retry_types):
        raise ValueError(f"retry_on must be a tuple of exception types (got {retry_on!r})")

    def operator(source: Observable[_V]) -> Flowable[_V]:
        def subscribe(
            observer: abc.ObserverBase[_V], demand: Demand, scheduler_: abc.SchedulerBase | None
        ) -> abc.DisposableBase:
            timer_scheduler = scheduler or scheduler_ or TimeoutScheduler.singleton()
            lock = threading.RLock()
            attempt = 0
            # Each (re)subscription has its own generation. Signals of an older one are ignored, and its
            # subscription is never installed over a newer one: a source that fails inside subscribe can have
            # its retry timer fire, on another thread, before that subscribe returns.
            generation = 0
            stopped = False
            upstream_demand: Demand | None = None
            upstream_subscription: abc.DisposableBase | None = None
            requested = 0  # asked of the current subscription and not yet received
            # Items received and not yet requested downstream: a plain upstream pushes whatever it has.
            held: deque[_V] = deque()
            finished: Callable[[], None] | None = None  # the completion, sent once `held` is empty
            failure: list[Exception] = []
            timer = SerialDisposable()

            def next_signal() -> Callable[[], None] | None:
                # Called with the lock held.
                nonlocal stopped
                if stopped:
                    return None
                if failure:
                    # An error ends the stream at once, as in throttle, batch and process; held items drop.
                    stopped = True
                    held.clear()
                    error = failure[0]
                    return lambda: observer.on_error(error)
                if held and demand.take(1):
                    item = held.popleft()
                    return lambda: observer.on_next(item)
                if finished is not None and not held:
                    stopped = True
                    return finished
                return None

            def request_more() -> tuple[Demand | None, int]:
                # Called with the lock held. Counts its own requests: the source's Demand drops before the item
                # reaches on_next, and a request racing in between must not ask for that item twice.
                nonlocal requested
                target = upstream_demand
                if stopped or target is None or target.unbounded:
                    return None, 0
                missing = demand.pending - len(held) - requested
                if missing > 0:
                    requested += missing
                    return target, missing
                # Downstream withdrew requests: pass that on, as a pass-through stage does.
                return target, -min(-missing, requested)

            def step() -> None:
                nonlocal requested
                while True:
                    with lock:
                        signal = next_signal()
                        target, wanted = request_more()
                    if target is not None and wanted > 0:
                        target.request(wanted)
                    elif target is not None and wanted < 0:
                        withdrawn = target.withdraw(-wanted)
                        with lock:
                            if upstream_demand is target:
                                requested = max(0, requested - withdrawn)
                    if signal is None:
                        return
                    signal()

            drain = serialize(step)

            def attach() -> None:
                nonlocal upstream_demand, requested, generation, upstream_subscription
                with lock:
                    if stopped:
                        return
                    generation += 1
                    mine = generation
                    requested = 0 if demand.unbounded else max(0, demand.pending - len(held))
                    fresh = Demand.unlimited() if demand.unbounded else Demand(requested)
                    upstream_demand = fresh

                def on_next(item: _V) -> None:
                    nonlocal requested
                    with lock:
                        if stopped or mine != generation:
                            return
                        requested = max(0, requested - 1)
                        held.append(item)
                    drain()

                def on_error(error: Exception) -> None:
                    nonlocal attempt, upstream_demand
                    with lock:
                        if stopped or mine != generation:
                            return
                        retryable = isinstance(error, retry_types) and attempt < max_retries
                        if retryable:
                            delay = backoff_delay(attempt, initial, cap, rng, jitter)
                            attempt += 1
                            upstream_demand = None
                        else:
                            failure.append(error)
                    if retryable:
                        timer.disposable = timer_scheduler.schedule_relative(delay, lambda _s, _st: attach())
                    else:
                        drain()

                def on_completed() -> None:
                    nonlocal finished
                    with lock:
                        if stopped or mine != generation:
                            return
                        finished = observer.on_completed
                    drain()

                subscription = subscribe_upstream(
                    source, Observer(on_next, on_error, on_completed), fresh, scheduler_
                )
                with lock:
                    current = mine == generation and not stopped
                    if current:
                        upstream_subscription, subscription = subscription, upstream_subscription
                # Outside the lock: the one replaced, or this one if a newer attempt (or a cancel) came first.
                if subscription is not None:
                    subscription.dispose()

            def stop() -> None:
                nonlocal stopped, upstream_subscription
                with lock:
                    stopped = True
                    held.clear()
                    subscription, upstream_subscription = upstream_subscription, None
                if subscription is not None:
                    subscription.dispose()

            cancel = CompositeDisposable(demand.on_request(drain), timer, Disposable(stop))
            attach()
            drain()
            return cancel

        return Flowable(subscribe)

    return operator
