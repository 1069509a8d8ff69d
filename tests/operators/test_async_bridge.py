"""The asyncio bridge: async for and aioreactive over reactivex, with request-n kept."""

from __future__ import annotations

import asyncio

import aioreactive
import pytest
import reactivex

from flume_rx import operators as fo


def test_async_for_sees_every_item_and_pulls_no_more_than_prefetch_ahead() -> None:
    source = fo.from_iterable(range(100), max_in_flight=1000)
    seen: list[int] = []
    most_ahead = 0

    async def main() -> None:
        nonlocal most_ahead
        async for item in fo.to_async_iterable(source, prefetch=4):
            seen.append(item)
            most_ahead = max(most_ahead, source.credits.in_flight - len(seen))
            await asyncio.sleep(0)

    asyncio.run(main())
    assert seen == list(range(100))
    assert most_ahead <= 4


def test_errors_are_raised_in_the_async_for() -> None:
    async def main() -> None:
        async for _ in fo.to_async_iterable(reactivex.throw(ValueError("bad"))):
            pass

    with pytest.raises(ValueError, match="bad"):
        asyncio.run(main())


def test_aioreactive_async_observable_receives_the_stream() -> None:
    received: list[int] = []

    async def main() -> None:
        done = asyncio.Event()

        async def asend(value: int) -> None:
            received.append(value)

        async def athrow(error: Exception) -> None:
            done.set()

        async def aclose() -> None:
            done.set()

        observable = fo.to_async_observable(reactivex.of(1, 2, 3))
        observer = aioreactive.AsyncAnonymousObserver(asend, athrow, aclose)
        subscription = await observable.subscribe_async(observer)
        await asyncio.wait_for(done.wait(), 5)
        await subscription.dispose_async()

    asyncio.run(main())
    assert received == [1, 2, 3]


def test_from_result_refuses_a_stream_saying_what_to_answer() -> None:
    with pytest.raises(TypeError, match="answer with the value itself or an awaitable"):
        fo.from_result(lambda: reactivex.just(3)).run()
