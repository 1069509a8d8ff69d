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

from ._flow import Demand, Flowable, subscribe_upstream
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
            loop = asyncio.get_running_loop()
            lock = threading.Lock()
            upstream = Demand.unlimited() if demand.unbounded else Demand()
            held: OrderedDict[str, deque[tuple[_T, int]]] = OrderedDict()
            busy: dict[str, int] = {}  # keys with a grant being used or awaited -> items it may release
            state = {"held": 0, "taking": False, "done": False, "stopped": False}
            timers: set[asyncio.TimerHandle] = set()  # grants waiting to be used; each leaves when it fires
            tasks: set[asyncio.Task[None]] = set()

            def top_up() -> None:
                if demand.unbounded:
                    return
                with lock:
                    missing = demand.pending - state["held"] - upstream.pending
                    stopped = state["stopped"]
                if missing > 0:
                    upstream.request(missing)
                if not stopped:  # a request arriving after disposal must not touch a loop that may be closed
                    # Held items may have waited for this demand (after downstream withdrew some).
                    loop.call_soon_threadsafe(pump)

            def on_next(item: _T) -> None:
                item_key = str(key(item))
                item_cost = max(1, min(allowed, int(cost(item))))
                with lock:
                    held.setdefault(item_key, deque()).append((item, item_cost))
                    state["held"] += 1
                loop.call_soon_threadsafe(pump)

            def pump() -> None:
                with lock:
                    if state["taking"] or state["stopped"]:
                        return
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
                    if not wants:
                        finish_if_done()
                        return
                    state["taking"] = True
                task = loop.create_task(take(wants))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

            async def take(wants: list[tuple[str, int, int]]) -> None:
                sent_at = loop.time()
                try:
                    grants = await window.take_many(wants)
                except Exception as exc:
                    fail(exc)
                    return
                for (item_key, _, _), grant in zip(wants, grants, strict=True):
                    deadline = sent_at + grant.delay_s + grant.hold_s
                    schedule_use(grant.delay_s, item_key, grant.tokens, deadline)
                with lock:
                    state["taking"] = False
                pump()

            def schedule_use(delay_s: float, item_key: str, tokens: int, deadline: float) -> None:
                def fire() -> None:
                    timers.discard(handle)
                    use(item_key, tokens, deadline)

                handle = loop.call_later(delay_s, fire)
                timers.add(handle)

            def use(item_key: str, tokens: int, deadline: float) -> None:
                emit: list[_T] = []
                with lock:
                    queue = held.get(item_key)
                    while (
                        queue and queue[0][1] <= tokens and loop.time() <= deadline and not state["stopped"]
                    ):
                        if demand.take(1) < 1:
                            break
                        item, item_cost = queue.popleft()
                        tokens -= item_cost
                        state["held"] -= 1
                        emit.append(item)
                    if queue is not None and not queue:
                        del held[item_key]
                    busy.pop(item_key, None)
                for item in emit:
                    observer.on_next(item)
                pump()

            def finish_if_done() -> None:
                # Called with the lock held.
                if state["done"] and not held and not busy and not state["stopped"]:
                    state["stopped"] = True
                    loop.call_soon(observer.on_completed)

            def fail(error: Exception) -> None:
                with lock:
                    if state["stopped"]:
                        return
                    state["stopped"] = True
                observer.on_error(error)

            def on_completed() -> None:
                with lock:
                    state["done"] = True
                loop.call_soon_threadsafe(pump)

            def cancel() -> None:
                with lock:
                    state["stopped"] = True
                for timer in list(timers):
                    timer.cancel()
                timers.clear()
                for task in list(tasks):
                    task.cancel()

            disposables = CompositeDisposable()
            disposables.add(Disposable(cancel))
            if not demand.unbounded:
                disposables.add(demand.on_request(top_up))

            def on_upstream_error(error: Exception) -> None:
                loop.call_soon_threadsafe(fail, error)

            sink = _Sink(on_next, on_upstream_error, on_completed)
            disposables.add(subscribe_upstream(source, sink, upstream, scheduler))
            top_up()
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
