"""throttle_by_key in memory: what a long-running subscription keeps."""

from __future__ import annotations

import asyncio
import gc

import reactivex

from flume_rx.operators import Demand, InProcessKeyedWindow, from_iterable, throttle_by_key


def _live_timer_handles() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, asyncio.TimerHandle))


def test_a_long_running_subscription_does_not_keep_the_timers_of_used_grants() -> None:
    # Before, every grant's timer stayed in a list until the subscription ended: a worker with a per-key
    # limit grew by one handle per grant, hundreds a second, for its whole life.
    async def main() -> tuple[int, int]:
        source = from_iterable(range(300), max_in_flight=300)
        keyed = throttle_by_key(InProcessKeyedWindow(10_000, 1.0, 60.0), key=lambda x: str(x % 3))(source)
        seen: list[int] = []
        demand = Demand()
        keyed.subscribe_with_demand(reactivex.Observer(seen.append), demand)
        before = _live_timer_handles()
        for _ in range(100):  # one small request at a time: one grant per item
            demand.request(1)
            target = len(seen) + 1
            async with asyncio.timeout(30):
                while len(seen) < target:
                    await asyncio.sleep(0)
        return before, _live_timer_handles()

    before, after = asyncio.run(main())
    assert after - before < 10
