"""Pipelines that serve several queues, by weight or by strict priority, with one Redis call per fetch.

A pipeline with ``queues = [{name = "email/urgent", weight = 10}, {name = "email/bulk", weight = 1}]`` has
one request-n source for all of them, so ``max_demand``, the batcher and the throttle apply to the pipeline as
a whole. Each fetch of ``n`` jobs is split into per-queue quotas by :class:`WeightedShares` (smooth weighted
round robin: every queue's share of the demand over time is its weight's share, and a low weight still gets
its turn, however loaded the others are), then ``fetch_weighted.lua`` takes each quota and fills whatever an
empty queue left over from the others, all in one call. With ``order = "strict"`` the first queue is
drained first and later ones only get what it cannot fill (they can starve: that is what strict means).

The queues must be named ``group/name`` with one group, so their keys share a Redis Cluster slot.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from flume_rx.engine.source import JobSource
from flume_rx.store import Settlement

IDLE_POLL_MIN_S = 0.005
IDLE_POLL_MAX_S = 0.25
"""Longest pause between fetches while every queue is empty (a multi-queue fetch cannot block in Redis)."""


class WeightedShares:
    """Splits each fetch of ``n`` into per-queue quotas that follow the weights over time.

    Every queue earns ``n * weight / total`` credit per fetch, and each of the ``n`` slots goes to the queue
    with the most credit, which pays one. Credits stay bounded, so every queue is served at its weight's rate
    and none waits more than about ``total / weight`` slots. A slot given to an empty queue is spent anyway
    (use it or lose it), so a queue that was idle does not come back with a burst.

    >>> shares = WeightedShares([3, 1])
    >>> [shares.quotas(1) for _ in range(4)]
    [[1, 0], [1, 0], [0, 1], [1, 0]]
    """

    def __init__(self, weights: Sequence[int], order: Literal["weighted", "strict"] = "weighted") -> None:
        if not weights or any(w < 1 for w in weights):
            raise ValueError(f"weights must be one or more integers >= 1 (got {list(weights)})")
        self.weights = list(weights)
        self.order = order
        self._total = sum(weights)
        self._credit = [0.0] * len(weights)

    def quotas(self, n: int) -> list[int]:
        """How many of the next ``n`` jobs each queue is offered first (the quotas sum to ``n``)."""
        if self.order == "strict":
            return [n] + [0] * (len(self.weights) - 1)
        for i, weight in enumerate(self.weights):
            self._credit[i] += n * weight / self._total
        quotas = [0] * len(self.weights)
        for _ in range(n):
            best = max(range(len(self._credit)), key=self._credit.__getitem__)
            self._credit[best] -= 1
            quotas[best] += 1
        return quotas


@dataclass(eq=False)
class WeightedSource(JobSource):
    """A :class:`~flume_rx.engine.source.JobSource` over several queues of one group (see the module docstring).

    ``queue`` names the pipeline in telemetry; ``queues`` and ``weights`` are what it fetches from.
    """

    queues: tuple[str, ...] = ()
    weights: tuple[int, ...] = ()
    order: Literal["weighted", "strict"] = "weighted"
    fetched_from: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _queue_of: dict[bytes, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.queues) != len(self.weights) or not self.queues:
            raise ValueError(f"WeightedSource needs one weight per queue (got {self.queues}, {self.weights})")
        self._shares = WeightedShares(self.weights, self.order)
        self._idle_s = IDLE_POLL_MIN_S

    @property
    def fetch_queues(self) -> tuple[str, ...]:
        return self.queues

    async def _fetch_payloads(self, n: int, block_s: float) -> list[bytes]:
        pairs = await self.store.fetch_weighted(
            self.queues, self.consumer, n, self._shares.quotas(n), self.max_payload_bytes
        )
        for queue, payload in pairs:
            self._queue_of[payload] = queue
            self.fetched_from[queue] += 1
        if pairs:
            self._idle_s = IDLE_POLL_MIN_S
        return [payload for _, payload in pairs]

    async def _when_empty(self, started: float, waited_for_burst: bool) -> None:
        # fetch_weighted never blocks (one Lua call over several lists): poll, backing off while idle.
        self._idle_s = min(IDLE_POLL_MAX_S, self.block_s, self._idle_s * 2)
        await asyncio.sleep(self._idle_s)

    async def settle(self, settlements: Sequence[Settlement]) -> None:
        by_queue: dict[str, list[Settlement]] = defaultdict(list)
        for settlement in settlements:
            by_queue[self._queue_of.get(settlement.payload, self.queues[0])].append(settlement)
        # One settle call per queue (settle.lua serves one queue), sent together.
        await asyncio.gather(*(self._settle_queue(q, batch) for q, batch in by_queue.items()))
        for settlement in settlements:
            self._queue_of.pop(settlement.payload, None)
