"""The cron ticker: every worker process ticks its config's schedules; Redis decides each tick once.

The schedules themselves (parsing, next and latest ticks) are :mod:`flume_rx.model.schedules`; its docstring
says how a tick is claimed. This is the loop that asks, with time from Redis.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from typing import Any

from flume_rx.model import codec
from flume_rx.model.errors import StoreError
from flume_rx.model.schedules import ScheduleConfig, iso, job_of
from flume_rx.model.telemetry import Telemetry

logger = logging.getLogger("flume_rx.schedules")

# Jitter comes from a private generator: drawing from the global one would perturb the random state of
# the application (and of Hypothesis, which checks it) from our background loops.
_jitter = random.Random()

MAX_SLEEP_S = 1.0
"""The longest a ticker sleeps between looks at Redis's clock (bounds how late a tick is enqueued)."""

ON_TIME_S = 60.0
"""A tick decided later than this after it came (capped at half the schedule's interval) counts as missed."""


class CronTicker:
    """Ticks every schedule of a config from one worker process (see the module docstring).

    Args:
        store: the worker's :class:`~flume_rx.store.RedisStore`.
        schedules: the schedules to tick.
        telemetry: ``schedule.enqueued`` / ``schedule.skipped`` events go there.
        max_payload_bytes: the payload limit of the config.
    """

    def __init__(
        self,
        store: Any,
        schedules: Sequence[ScheduleConfig],
        *,
        telemetry: Telemetry | None = None,
        max_payload_bytes: int = codec.DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        self.store = store
        self.schedules = list(schedules)
        self.telemetry = telemetry or Telemetry()
        self.max_payload_bytes = max_payload_bytes
        self._decided: dict[str, float] = {}

    async def run(self) -> None:
        """Tick until cancelled; Redis outages are waited out (the worker's fetch loop reports them)."""
        while True:
            try:
                sleep_s = await self.tick_once()
            except StoreError:
                sleep_s = MAX_SLEEP_S
            await asyncio.sleep(sleep_s * _jitter.uniform(0.9, 1.0))

    async def tick_once(self) -> float:
        """Decide each schedule's latest tick not yet seen here; returns how long to sleep until the next."""
        now_s = await self.store.time_ms() / 1000
        sleep_s = MAX_SLEEP_S
        for schedule in self.schedules:
            tick_s, interval_s = schedule.latest_tick(now_s)
            if self._decided.get(schedule.name) != tick_s:
                await self._decide(schedule, tick_s, interval_s)
                self._decided[schedule.name] = tick_s
            sleep_s = min(sleep_s, max(0.01, schedule.next_run(now_s) - now_s))
        return sleep_s

    async def _decide(self, schedule: ScheduleConfig, tick_s: float, interval_s: float) -> None:
        job = job_of(schedule)
        status, _ = await self.store.cron_tick(
            schedule.queue,
            schedule.name,
            round(tick_s * 1000),
            codec.encode(job, self.max_payload_bytes),
            # The claim outlives every process's chance of asking about this tick; `last` covers the rest.
            claim_ttl_ms=round(max(2 * interval_s, 3600.0) * 1000),
            on_time_ms=round(min(ON_TIME_S, interval_s / 2) * 1000),
            missed=schedule.missed,
        )
        if status in ("enqueued", "skipped"):
            logger.info("schedule %s: tick %s %s", schedule.name, iso(tick_s), status)
            self.telemetry.emit(
                f"schedule.{status}", schedule=schedule.name, queue=schedule.queue, tick=tick_s,
                job_id=job.id if status == "enqueued" else "",
            )  # fmt: skip
