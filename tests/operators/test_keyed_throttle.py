"""throttle_by_key in memory: what a long-running subscription keeps."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Sequence

import reactivex

from flume_rx.operators import Demand, Grant, InProcessKeyedWindow, from_iterable, throttle_by_key


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


class _CountingKeyedWindow(InProcessKeyedWindow):
    """Counts the calls and records the keys of each."""

    def __init__(self, allowed: int, period_s: float, hold_s: float) -> None:
        super().__init__(allowed, period_s, hold_s)
        self.calls: list[list[str]] = []

    async def take_many(self, wants: Sequence[tuple[str, int, int]]) -> list[Grant]:
        self.calls.append([key for key, _, _ in wants])
        return await super().take_many(wants)


def test_keys_arriving_together_share_one_take_and_a_full_key_holds_up_no_other() -> None:
    async def main() -> tuple[list[str], list[list[str]]]:
        window = _CountingKeyedWindow(2, 60.0, 1.0)
        seen: list[str] = []
        reactivex.from_iterable(["a1", "a2", "a3", "b1"]).pipe(
            throttle_by_key(window, key=lambda item: item[0])
        ).subscribe(seen.append)
        for _ in range(50):  # a3 waits a whole period for a's window; the others go at once
            await asyncio.sleep(0)
        return seen, window.calls

    seen, calls = asyncio.run(main())
    assert seen == ["a1", "a2", "b1"]
    assert calls[0] == ["a", "b"]  # the items of one loop iteration, every key in one call
