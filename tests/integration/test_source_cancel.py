"""A pipeline's source under cancel: every job it fetched reaches a worker or goes back to the queue.

request_n hands back the jobs it holds when its subscription is cancelled (rules 3.5 and 3.13); the job
source must return them to Redis, and also the jobs of a fetch cancelled while its reply was on the way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import reactivex
from reactivex import abc

from flume_rx.engine.source import Delivery, JobSource
from flume_rx.model import codec
from flume_rx.model.job import Job
from flume_rx.model.telemetry import Telemetry
from flume_rx.operators import Demand
from flume_rx.store import RedisStore

QUEUE = "jobs"


def _payloads(n: int) -> list[bytes]:
    return [codec.encode(Job(id=f"id{i}", queue=QUEUE, worker="W", args=[i])) for i in range(n)]


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(30):
        while not condition():
            await asyncio.sleep(0.01)


async def _counts(store: RedisStore) -> tuple[int, int]:
    stats = (await store.stats([QUEUE]))[QUEUE]
    return stats["queued"], stats["in_flight"]


async def _eventually(store: RedisStore, expected: tuple[int, int]) -> None:
    async with asyncio.timeout(30):
        while await _counts(store) != expected:
            await asyncio.sleep(0.01)


def test_cancelling_returns_the_jobs_fetched_beyond_the_demand_left(redis_url: str) -> None:
    # Requested 3, withdrew 2 while the fetch ran: one job goes downstream, two wait in the source; the
    # cancel gives those two back to the queue and their credits to the source.
    async def main() -> None:
        async with RedisStore.from_url(redis_url, "t") as store:
            await store.enqueue(QUEUE, _payloads(5))
            source = JobSource(store, QUEUE, "c1", max_demand=5, telemetry=Telemetry(), burst_mode="drained")
            seen: list[Delivery] = []
            demand = Demand()
            subscription = source.flowable.subscribe_with_demand(reactivex.Observer(seen.append), demand)
            demand.request(3)
            assert demand.withdraw(2) == 2
            await _until(lambda: len(source.outstanding) == 3)
            await _until(lambda: len(seen) == 1)
            subscription.dispose()
            await _eventually(store, (4, 1))
            assert source.outstanding == set(seen)
            assert source.flowable.credits.in_flight == 1

    asyncio.run(main())


@pytest.mark.parametrize("when", ["as the reply is read", "after the fetch finished"])
def test_a_fetch_cancelled_with_its_jobs_in_hand_gives_them_back_or_hands_them_on(
    redis_url: str, when: str
) -> None:
    """Cancelled as its reply is read, a fetch gives its jobs back; cancelled once it finished, it had
    handed them to the subscriber in the step that decoded them (no turn of the loop between), and they stay
    there."""

    async def main() -> None:
        async with RedisStore.from_url(redis_url, "t") as store:
            await store.enqueue(QUEUE, _payloads(3))
            source = JobSource(store, QUEUE, "c1", max_demand=5, telemetry=Telemetry(), burst_mode="drained")
            real_fetch = store.fetch
            subscription: list[abc.DisposableBase] = []
            cancelled = asyncio.Event()

            def cancel() -> None:
                subscription[0].dispose()
                cancelled.set()

            async def fetch_then_cancel(*args: Any) -> Sequence[bytes]:
                payloads = await real_fetch(*args)
                assert len(payloads) == 2
                if when == "as the reply is read":
                    cancel()  # the task is cancelled as it returns its jobs
                else:
                    asyncio.get_running_loop().call_soon(cancel)  # the loop's next turn
                return payloads

            store.fetch = fetch_then_cancel  # type: ignore[method-assign]
            seen: list[Delivery] = []
            subscription.append(
                source.flowable.subscribe_with_demand(reactivex.Observer(seen.append), Demand(2))
            )
            await cancelled.wait()
            if when == "as the reply is read":
                await _eventually(store, (3, 0))
                assert seen == []
                assert source.outstanding == set()
                assert source.flowable.credits.in_flight == 0
            else:
                await asyncio.sleep(0.1)  # a give-back, were there one, would have landed
                assert await _counts(store) == (1, 2)
                assert len(seen) == 2
                assert source.outstanding == set(seen)
                assert source.flowable.credits.in_flight == 2

    asyncio.run(main())


def test_a_subscriber_that_raises_is_reported_naming_its_queue(redis_url: str) -> None:
    """The fetch emits from its own task: a fault downstream reaches the loop's exception handler as it
    happens, naming the queue, not as a task's exception nobody retrieved."""

    async def main() -> None:
        async with RedisStore.from_url(redis_url, "t") as store:
            await store.enqueue(QUEUE, _payloads(1))
            source = JobSource(store, QUEUE, "c1", max_demand=5, telemetry=Telemetry(), burst_mode="drained")
            reported: list[dict[str, Any]] = []
            asyncio.get_running_loop().set_exception_handler(lambda _loop, context: reported.append(context))

            def fails(_delivery: Delivery) -> None:
                raise RuntimeError("the subscriber failed")

            subscription = source.flowable.subscribe_with_demand(reactivex.Observer(fails), Demand(1))
            await _until(lambda: bool(reported))
            assert isinstance(reported[0]["exception"], RuntimeError)
            assert QUEUE in reported[0]["message"]
            subscription.dispose()

    asyncio.run(main())
