"""A refusal seen by one process reaches the grants of the others at once: penalize.lua publishes each cut of an
adaptive window's rate, and every worker process hands what it hears to its windows (``hear_cuts_forever``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from flume_rx.store import RedisStore, RedisTokenWindow
from flume_rx.surfaces.runtime import hear_cuts_forever

pytestmark = pytest.mark.anyio


async def _until(done: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    # A wait for something to happen, not a timing assert: a loaded machine only makes it slower.
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"waited {timeout_s} s for {what}"
        await asyncio.sleep(0.01)


async def test_a_refusal_in_one_process_ends_the_grants_of_the_others(store: RedisStore) -> None:
    # Two processes of one adaptive window: `holder` has a grant decided at 40/s; `reporter` sees the
    # downstream refuse. Before, `holder` learnt of the cut only at its next take, after using its grant up.
    holder = RedisTokenWindow(store, "ses", 40, 60.0, adaptive=True)
    reporter = RedisTokenWindow(store, "ses", 40, 60.0, adaptive=True)
    listener = asyncio.create_task(hear_cuts_forever(store, [holder, reporter]))
    try:
        channel = holder.cuts_channel

        async def subscribed() -> bool:
            return dict(await store.client.pubsub_numsub(channel)).get(channel.encode(), 0) >= 1

        deadline = time.monotonic() + 10.0
        while not await subscribed():
            assert time.monotonic() < deadline, "the listener never subscribed"
            await asyncio.sleep(0.01)
        assert (await holder.take_async(10, 10)).tokens == 10
        await reporter.penalize(1)
        await _until(lambda: holder.refusal_reports == 1, "the holder to hear of the cut")
        # The reporter counted its own refusal when it reported it, not once more when it heard it back.
        assert reporter.refusal_reports == 1
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)


async def test_a_cut_the_latest_grant_was_decided_after_is_no_news(store: RedisStore) -> None:
    holder = RedisTokenWindow(store, "ses", 40, 60.0, adaptive=True)
    reporter = RedisTokenWindow(store, "ses", 40, 60.0, adaptive=True)
    await holder.take_async(10, 10)
    cut = await reporter.refuse(1)
    # The next grant is decided after the cut, and its reply says so: the message of that cut, heard late,
    # must not end it.
    assert (await holder.take_reply(1, 1)).cut_at_us == cut.at_us
    assert not holder.heard_cut(f"{cut.at_us} elsewhere".encode())
    assert holder.refusal_reports == 0
    # The reply told the holder of another's cut, once; the reporter's own replies tell it of none.
    assert holder.cuts_elsewhere == 1
    await reporter.take_reply(1, 1)
    assert reporter.cuts_elsewhere == 0
    # A newer cut is news, once.
    assert holder.heard_cut(f"{cut.at_us + 1} elsewhere")
    assert not holder.heard_cut(f"{cut.at_us + 1} elsewhere")
    assert holder.refusal_reports == 1
    assert holder.cuts_elsewhere == 2
    assert not holder.heard_cut(b"garbled")
