"""A bridge to asyncio: consume any Observable with ``async for``, or as an aioreactive AsyncObservable; make a
coroutine an Observable (:func:`from_coroutine`), or a call that returns a value or an awaitable
(:func:`from_result`: how the throttle turns a token window's answer into a stream).

When the source is a Flowable, the bridge keeps request-n: it asks for ``prefetch`` items and for one more
each time the consumer takes one, so a slow ``async for`` body slows the pipeline instead of filling memory.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from concurrent.futures import Future as ThreadFuture
from typing import Any, Generic, TypeVar

import aioreactive
import reactivex
from reactivex import Observable, abc
from reactivex.observer import Observer

from ._flow import Demand, subscribe_upstream

_T = TypeVar("_T")

_NEXT, _ERROR, _DONE = range(3)


async def to_async_iterable(source: Observable[_T], *, prefetch: int = 16) -> AsyncIterator[_T]:
    """Iterate ``source`` with ``async for``; the subscription lives as long as the iteration.

    Args:
        source: any Observable; a Flowable is pulled at most ``prefetch`` items ahead of the consumer.
        prefetch: how many items may wait for the consumer.

    >>> async def first_three(source):  # doctest: +SKIP
    ...     return [x async for x in to_async_iterable(source.pipe(ops.take(3)))]
    """
    if prefetch < 1:
        raise ValueError(f"prefetch must be >= 1 (got {prefetch})")
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    def put(kind: int, value: Any) -> None:
        # Items may be produced on another thread (a timer, a thread pool): hand them to the loop.
        loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

    demand = Demand(prefetch)
    observer: Observer[_T] = Observer(
        lambda item: put(_NEXT, item), lambda error: put(_ERROR, error), lambda: put(_DONE, None)
    )
    subscription = subscribe_upstream(source, observer, demand, None)
    try:
        while True:
            kind, value = await queue.get()
            if kind == _DONE:
                return
            if kind == _ERROR:
                raise value
            yield value
            demand.request(1)
    finally:
        subscription.dispose()


class _Iterable(Generic[_T]):
    def __init__(self, source: Observable[_T], prefetch: int) -> None:
        self._source = source
        self._prefetch = prefetch

    def __aiter__(self) -> AsyncIterator[_T]:
        return to_async_iterable(self._source, prefetch=self._prefetch)


def to_async_observable(source: Observable[_T], *, prefetch: int = 16) -> Any:
    """The same stream as an aioreactive ``AsyncObservable`` (each subscription subscribes ``source`` anew)."""
    return aioreactive.from_async_iterable(_Iterable(source, prefetch))


def from_coroutine(make: Callable[[], Coroutine[Any, Any, _T]]) -> Observable[_T]:
    """An Observable that runs the coroutine ``make()`` on the event loop per subscription, emits its result
    and completes (an async call, such as a shared window's Redis round trip, as a stream).

    Subscribing from the loop's thread schedules it there; from another thread, it is handed to the loop
    that was running where the Observable was made.
    """
    return from_result(make)


def from_result(call: Callable[[], _T | Awaitable[_T]]) -> Observable[_T]:
    """An Observable that makes ``call()`` per subscription and emits its result, then completes: a plain value
    at once, an awaitable once the event loop has awaited it (as :func:`from_coroutine` does). An exception
    raised by ``call`` or by the awaitable goes to ``on_error``, and so does a result that is an Observable: a
    service answers with a value or an awaitable and stays free of streams.

    >>> from_result(lambda: 3).run()
    3
    """
    try:
        home: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        home = None

    def factory(_: abc.SchedulerBase | None) -> Observable[_T]:
        result = call()
        if isinstance(result, Observable):
            raise TypeError(
                f"from_result's call answered with a stream ({type(result).__name__}); answer with the value "
                "itself or an awaitable of it (a TokenWindow's take and penalize never return an Observable)"
            )
        if not inspect.isawaitable(result):
            return reactivex.just(result)
        coro = _awaited(result)
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None and (home is None or running is home):
            return reactivex.from_future(asyncio.ensure_future(coro))
        if home is not None:
            future: ThreadFuture[_T] = asyncio.run_coroutine_threadsafe(coro, home)
            return reactivex.from_future(future)  # type: ignore[arg-type]
        coro.close()
        raise RuntimeError(
            "from_coroutine: subscribe from a thread running an asyncio event loop, or create it on one"
        )

    return reactivex.defer(factory)


async def _awaited(awaitable: Awaitable[_T]) -> _T:
    return await awaitable
