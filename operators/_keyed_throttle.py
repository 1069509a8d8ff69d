"""A throttle with one sliding window per key: :func:`throttle_by_key` and :class:`InProcessKeyedWindow`.

Items of one key keep their order; a key waiting for tokens never holds up another, and the tokens of every
waiting key are asked for in one call to the :class:`KeyedWindow` (flume_rx's Redis windows answer it in one
round trip). The operator knows nothing of jobs or Redis: a window and a key function are all it is given.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable, Disposable

from ._flow import Demand, Flowable, StreamEnd, drain_loop, subscribe_upstream
from ._throttle import Grant, InProcessWindow

_T = TypeVar("_T")

MAX_KEYS_PER_TAKE = 1000
"""Keys asked for in one Redis call: big enough for 1,000 busy tenants, small enough not to stall Redis."""


class KeyedWindow(Protocol):
    """Sliding windows of ``allowed`` starts per ``period_s``, one per key."""

    @property
    def allowed(self) -> int: ...

    async def take_many(self, wants: Sequence[tuple[str, int, int]]) -> list[Grant]:
        """One grant per ``(key, tokens, min_tokens)``, in order."""
        ...


class InProcessKeyedWindow:
    """Per-key :class:`InProcessWindow` s in memory (tests, one-process pipelines)."""

    def __init__(self, allowed: int, period_s: float, hold_s: float = 0.02, *, clock: Any = None) -> None:
        self._allowed = allowed
        self._make = functools.partial(InProcessWindow, allowed, period_s, hold_s, clock=clock)
        self._windows: dict[str, InProcessWindow] = {}

    @property
    def allowed(self) -> int:
        return self._allowed

    async def take_many(self, wants: Sequence[tuple[str, int, int]]) -> list[Grant]:
        return [self._windows.setdefault(key, self._make()).grant(n, least) for key, n, least in wants]


def throttle_by_key(
    window: KeyedWindow,
    *,
    key: Callable[[_T], str],
    cost: Callable[[_T], int] = lambda _item: 1,
) -> Callable[[Observable[_T]], Flowable[_T]]:
    """Emit items only as the window of their own key allows, asking for all waiting keys in one call.

    Demand-aware: requests from upstream only what downstream has requested. Items of one key keep their
    order; a key waiting for tokens never holds up another key. Runs on the asyncio loop it is subscribed
    from (the worker's).

    Args:
        window: per-key windows, e.g. :class:`InProcessKeyedWindow` or flume_rx's ``RedisKeyedWindow``.
        key: the key of an item. In a flume_rx job pipeline the items are deliveries of jobs;
            ``flume_rx.from_args`` turns a function of a job's args into one.
        cost: tokens an item needs, clamped to ``[1, window.allowed]``.

    ::

        source:  a1 a2 a3 b1|         (allowed=2 per 10 ticks per key)
        result:  a1 a2 b1 ... a3|     a3 waits for a's window; b1 does not wait for a
    """
    allowed = window.allowed

    def operator(source: Observable[_T]) -> Flowable[_T]:
        def subscribe(
            observer: abc.ObserverBase[_T], demand: Demand, scheduler: abc.SchedulerBase | None
        ) -> abc.DisposableBase:
            # The drain style of every demand-aware operator here (drain_loop): the state below changes under
            # the lock, next_signal picks the one thing to send downstream or to start, request_more what to
            # ask of upstream. Wake-ups are handed to the loop, so the drain (and the loop's timers and tasks
            # it starts) runs on the asyncio loop this was subscribed from, and the items that arrive in one
            # loop iteration share one take.
            loop = asyncio.get_running_loop()
            lock = threading.Lock()
            upstream = Demand.unlimited() if demand.unbounded else Demand()
            held: OrderedDict[str, deque[tuple[_T, int]]] = OrderedDict()
            held_count = 0
            requested = 0  # items asked of upstream and not yet received
            busy: dict[str, int] = {}  # keys with a grant being used or awaited -> items it may release
            usable: deque[tuple[str, int, float]] = deque()  # grants due now: (key, tokens, deadline)
            taking = done = False
            end = StreamEnd()
            timers: set[asyncio.TimerHandle] = set()  # grants waiting to be used; each leaves when it fires
            tasks: set[asyncio.Task[None]] = set()

            def next_signal() -> Callable[[], None] | None:
                # Called with the lock held, once drain_loop found the stream going.
                nonlocal held_count, taking
                while usable:
                    item_key, tokens, deadline = usable[0]
                    queue = held.get(item_key)
                    if queue and queue[0][1] <= tokens and loop.time() <= deadline and demand.take(1):
                        item, item_cost = queue.popleft()
                        usable[0] = (item_key, tokens - item_cost, deadline)
                        held_count -= 1
                        return lambda: observer.on_next(item)
                    # The grant is used up, lapsed, or downstream wants no more: what is left of it lapses.
                    usable.popleft()
                    if queue is not None and not queue:
                        del held[item_key]
                    busy.pop(item_key, None)
                if not taking:
                    wants: list[tuple[str, int, int]] = []
                    # Tokens only for items downstream can take: a grant nobody can use would lapse, and
                    # asking again at once would spin (held exceeds demand after downstream withdrew).
                    budget = demand.pending - sum(busy.values())
                    for item_key, queue in held.items():
                        if budget <= 0 or len(wants) >= MAX_KEYS_PER_TAKE:
                            break
                        if item_key in busy or not queue:
                            continue
                        costs = [c for _, c in itertools.islice(queue, budget)]
                        wants.append((item_key, min(allowed, sum(costs)), costs[0]))
                        busy[item_key] = len(costs)
                        budget -= len(costs)
                    if wants:
                        taking = True
                        return lambda: start_take(wants)
                if done and not held and not busy and not usable:
                    end.stopped = True
                    return observer.on_completed
                return None

            def request_more() -> int:
                # Called with the lock held. Counts what it asks for itself, as the throttle does: upstream's
                # pending drops before its item reaches on_next.
                nonlocal requested
                if upstream.unbounded:
                    return 0
                wanted = max(0, demand.pending - held_count - requested)
                requested += wanted
                return wanted

            drain = drain_loop(lock, next_signal, request_more, upstream, end, observer)

            def wake() -> None:
                # A signal arriving after disposal must not touch a loop that may be closed.
                if not end.stopped:
                    loop.call_soon_threadsafe(drain)

            def start_take(wants: list[tuple[str, int, int]]) -> None:
                task = loop.create_task(take(wants))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

            async def take(wants: list[tuple[str, int, int]]) -> None:
                nonlocal taking
                sent_at = loop.time()
                try:
                    grants = await window.take_many(wants)
                except Exception as exc:
                    with lock:
                        end.fail(exc)
                    drain()
                    return
                for (item_key, _, _), grant in zip(wants, grants, strict=True):
                    deadline = sent_at + grant.delay_s + grant.hold_s
                    schedule_use(grant.delay_s, item_key, grant.tokens, deadline)
                with lock:
                    taking = False
                drain()

            def schedule_use(delay_s: float, item_key: str, tokens: int, deadline: float) -> None:
                def fire() -> None:
                    timers.discard(handle)
                    with lock:
                        usable.append((item_key, tokens, deadline))
                    drain()

                handle = loop.call_later(delay_s, fire)
                timers.add(handle)

            def on_next(item: _T) -> None:
                nonlocal held_count, requested
                item_key = str(key(item))
                item_cost = max(1, min(allowed, int(cost(item))))
                with lock:
                    held.setdefault(item_key, deque()).append((item, item_cost))
                    held_count += 1
                    requested = max(0, requested - 1)
                wake()

            def on_error(error: Exception) -> None:
                with lock:
                    end.fail(error)
                wake()

            def on_completed() -> None:
                nonlocal done
                with lock:
                    done = True
                wake()

            def cancel() -> None:
                with lock:
                    end.stopped = True
                for timer in list(timers):
                    timer.cancel()
                timers.clear()
                for task in list(tasks):
                    task.cancel()

            disposables = CompositeDisposable()
            disposables.add(Disposable(cancel))
            if not demand.unbounded:
                # Held items may have waited for this demand (after downstream withdrew some).
                disposables.add(demand.on_request(wake))
            sink = _Sink(on_next, on_error, on_completed)
            disposables.add(subscribe_upstream(source, sink, upstream, scheduler))
            drain()
            return disposables

        # Released jobs must start within their grant's hold (plus lag_s): nothing below may buffer them.
        return Flowable(subscribe, prompt=True)

    return operator


class _Sink(abc.ObserverBase[Any]):
    def __init__(self, on_next: Callable[[Any], None], on_error: Callable[[Exception], None],
                 on_completed: Callable[[], None]) -> None:  # fmt: skip
        self._on_next, self._on_error, self._on_completed = on_next, on_error, on_completed

    def on_next(self, value: Any) -> None:
        self._on_next(value)

    def on_error(self, error: Exception) -> None:
        self._on_error(error)

    def on_completed(self) -> None:
        self._on_completed()
