"""Settler: outcomes settle in batches (by count, by time, at once when nothing else runs), none lost on stop.

A recording source stands in for Redis, so these tests check the batching itself; the integration and fault
suites check the same Settler against real Redis and killed processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flume_rx import operators as fo
from flume_rx.engine.decide import SettlePolicy
from flume_rx.engine.settle import Settler
from flume_rx.engine.source import Delivery
from flume_rx.model.config import RetryConfig
from flume_rx.model.job import Job
from flume_rx.model.telemetry import Telemetry
from flume_rx.store import Settlement


class RecordingSource:
    """The part of a JobSource the Settler uses: settles are recorded, and credits come back on release."""

    def __init__(self, queue: str = "q", refill: int = 1, free: int = 0) -> None:
        self.queue = queue
        self.refill = refill  # the credits a fetch waits for (JobSource's min_fetch)
        self.free = free  # credits free before these outcomes settle
        self.settle_policy = SettlePolicy(RetryConfig())
        self.running: set[Any] = set()
        self.calls: list[list[bytes]] = []
        self.released: list[bytes] = []
        self.settled = asyncio.Event()

    async def settle(self, settlements: Sequence[Settlement]) -> None:
        await asyncio.sleep(0)  # a round trip: other outcomes may arrive meanwhile
        assert all(s.action == "ack" for s in settlements), settlements  # not dead letters of a settle fault
        self.calls.append([s.payload for s in settlements])
        self.settled.set()

    def short_of_fetch(self, settling: int) -> int:
        return self.refill - self.free - settling

    def release(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            self.running.discard(delivery)
            self.released.append(delivery.payload)

    def start(self, n: int) -> Delivery:
        job = Job(id=f"j{n}", queue=self.queue, worker="W", args=[], enqueued_at=0.0)
        delivery = Delivery(job, f"p{n}".encode(), self)  # type: ignore[arg-type]
        self.running.add(delivery)
        return delivery


def finished(delivery: Delivery) -> fo.Outcome[Any, Any]:
    return fo.Outcome(delivery, None, None, 0.0, 0.0)


@settings(max_examples=60, deadline=None)
@given(
    rounds=st.lists(st.integers(1, 40), min_size=1, max_size=12),
    keep_running=st.integers(0, 3),
    flush_count=st.integers(1, 64),
    refill=st.integers(1, 80),
    riding=st.booleans(),
    at_once=st.booleans(),
)
def test_every_outcome_is_settled_once_and_released_after_its_call(
    rounds: list[int], keep_running: int, flush_count: int, refill: int, riding: bool, at_once: bool
) -> None:
    """``at_once``: each round's outcomes come in one ``on_next_all``, as a processor's round sends them."""

    async def main() -> tuple[RecordingSource, int]:
        source = RecordingSource(refill=refill)
        # A long wait: only the count, or a source with nothing left running, may send a call early; riding,
        # the wait is over at once and only a fetch's worth (or those) sends it.
        after_s, ride_s = (0.0, 3600.0) if riding else (3600.0, 0.0)
        settler = Settler(Telemetry(), flush_after_s=after_s, flush_count=flush_count, ride_s=ride_s)
        busy = [source.start(-i - 1) for i in range(keep_running)]
        n = 0
        for size in rounds:
            outcomes = []
            for _ in range(size):
                delivery = source.start(n)
                n += 1
                outcomes.append(finished(delivery))
            if at_once:
                settler.on_next_all(outcomes)
            else:
                for outcome in outcomes:
                    settler.on_next(outcome)
            await asyncio.sleep(0)
        for delivery in busy:  # the last running jobs finish: nothing runs, so the rest goes at once
            settler.on_next(finished(delivery))
        await asyncio.wait_for(settler.drained(), 60)
        return source, n + keep_running

    source, total = asyncio.run(main())
    settled = [p for call in source.calls for p in call]
    assert sorted(settled) == sorted(source.released)
    assert len(settled) == len(set(settled)) == total
    # With an hour's wait, finishing at all shows the count and the idle source sent every call.
    assert len(source.calls) <= total


def test_a_full_batch_goes_at_once_however_long_the_wait() -> None:
    async def main() -> RecordingSource:
        source = RecordingSource()
        settler = Settler(Telemetry(), flush_after_s=3600.0, flush_count=5)
        source.start(999)  # still running: without the count, the five would wait an hour
        for n in range(5):
            settler.on_next(finished(source.start(n)))
        await asyncio.wait_for(source.settled.wait(), 60)
        return source

    source = asyncio.run(main())
    assert source.calls == [[b"p0", b"p1", b"p2", b"p3", b"p4"]]


def test_outcomes_below_the_count_go_once_their_wait_is_over() -> None:
    async def main() -> RecordingSource:
        source = RecordingSource()
        settler = Settler(Telemetry(), flush_after_s=0.001, flush_count=1000)
        source.start(999)  # still running, so only the time can send the call
        settler.on_next(finished(source.start(0)))
        settler.on_next(finished(source.start(1)))
        await asyncio.wait_for(source.settled.wait(), 60)
        return source

    source = asyncio.run(main())
    assert source.calls == [[b"p0", b"p1"]]


def test_a_source_with_nothing_running_settles_without_waiting() -> None:
    async def main() -> RecordingSource:
        source = RecordingSource()
        settler = Settler(Telemetry(), flush_after_s=3600.0, flush_count=1000)
        settler.on_next(finished(source.start(0)))
        await asyncio.wait_for(source.settled.wait(), 60)
        return source

    assert asyncio.run(main()).calls == [[b"p0"]]


def test_drained_waits_for_outcomes_still_waiting_for_company() -> None:
    # A stop waits on drained(): the outcomes held back for a bigger call must still be settled.
    async def main() -> RecordingSource:
        source = RecordingSource()
        settler = Settler(Telemetry(), flush_after_s=0.05, flush_count=1000)
        source.start(999)
        for n in range(3):
            settler.on_next(finished(source.start(n)))
        await asyncio.wait_for(settler.drained(), 60)
        return source

    source = asyncio.run(main())
    assert sorted(p for call in source.calls for p in call) == [b"p0", b"p1", b"p2"]


def test_outcomes_that_will_free_a_fetch_soon_wait_for_it_and_go_with_it() -> None:
    # The source fetches once five credits are free. The wait is over, but at the rate outcomes come the
    # five are near: they ride until the fifth and go in one call, right before the fetch.
    async def main() -> tuple[RecordingSource, list[list[bytes]]]:
        source = RecordingSource(refill=5)
        settler = Settler(Telemetry(), flush_after_s=0.0, flush_count=1000, ride_s=3600.0)
        source.start(999)  # still running, so only a fetch's worth can send the call
        for n in range(2):
            settler.on_next(finished(source.start(n)))
        await asyncio.sleep(0.01)
        before = list(source.calls)
        for n in range(2, 5):
            settler.on_next(finished(source.start(n)))
        await asyncio.wait_for(source.settled.wait(), 60)
        return source, before

    source, before = asyncio.run(main())
    assert before == []
    assert source.calls == [[b"p0", b"p1", b"p2", b"p3", b"p4"]]


@pytest.mark.parametrize(("refill", "free", "ride_s"), [(1, 0, 3600.0), (50, 0, 0.0), (5, 5, 3600.0)])
def test_without_a_fetch_near_outcomes_go_once_their_wait_is_over(
    refill: int, free: int, ride_s: float
) -> None:
    # A source that fetches whatever is free (refill 1), no ride allowed, or credits enough already: the
    # outcomes go after flush_after_s as before.
    async def main() -> RecordingSource:
        source = RecordingSource(refill=refill, free=free)
        settler = Settler(Telemetry(), flush_after_s=0.001, flush_count=1000, ride_s=ride_s)
        source.start(999)
        settler.on_next(finished(source.start(0)))
        await asyncio.wait_for(source.settled.wait(), 60)
        return source

    assert asyncio.run(main()).calls == [[b"p0"]]


@pytest.mark.parametrize(("after", "count", "ride"), [(-1.0, 10, 0.0), (0.001, 0, 0.0), (0.001, 10, -1.0)])
def test_settler_bounds_are_validated(after: float, count: int, ride: float) -> None:
    with pytest.raises(ValueError, match=r"flush_after_s|flush_count|ride_s"):
        Settler(Telemetry(), flush_after_s=after, flush_count=count, ride_s=ride)
