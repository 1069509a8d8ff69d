"""Cron schedules: jobs enqueued at the ticks of a cron expression, exactly once per tick across every worker.

Every worker process that runs a config with ``[schedules.NAME]`` tables ticks every schedule. When a tick
comes (by Redis's clock), each process asks Redis to decide it in one Lua call (``cron_tick.lua``): the first
claims the tick with ``SET NX`` of ``{ns:queue}:cron:<name>:<tick_ms>`` and enqueues the job in the same step;
the others find the claim and do nothing. There is no leader that could die holding a lock: any process alive
at the tick enqueues it. A tick missed while no worker ran is enqueued once when one starts (``missed =
"run_once"``) or skipped (``"skip"``, the default); many missed ticks never make more than one job.

.. code-block:: toml

    [schedules.nightly_report]
    cron = "0 3 * * *"          # croniter syntax; a 6th field is seconds: "* * * * * */10" = every 10 s
    queue = "reports"
    worker = "NightlyReport"
    args = ["daily"]
    timezone = "Europe/Paris"   # IANA name; UTC by default
    missed = "run_once"         # or "skip"
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter  # type: ignore[import-untyped]

from flume_rx import codec
from flume_rx.errors import ConfigError, StoreError
from flume_rx.job import build_job, check_name
from flume_rx.telemetry import Telemetry

logger = logging.getLogger("flume_rx.schedules")

# Jitter comes from a private generator: drawing from the global one would perturb the random state of
# the application (and of Hypothesis, which checks it) from our background loops.
_jitter = random.Random()

Missed = Literal["run_once", "skip"]

MAX_SLEEP_S = 1.0
"""The longest a ticker sleeps between looks at Redis's clock (bounds how late a tick is enqueued)."""

ON_TIME_S = 60.0
"""A tick decided later than this after it came (capped at half the schedule's interval) counts as missed."""

_KEYS = {"cron", "queue", "worker", "args", "missed", "timezone", "cost"}


@dataclass(frozen=True, slots=True)
class ScheduleConfig:
    """One ``[schedules.NAME]`` table.

    Attributes:
        name: the table's name; it names the schedule's keys in Redis, so renaming it starts afresh.
        cron: the cron expression (croniter syntax, 5 fields, or 6 with seconds last).
        queue: where each tick's job goes.
        worker: the registered worker name the job runs.
        args: the job's positional arguments.
        missed: what a worker starting after missed ticks does: ``run_once`` or ``skip``.
        timezone: the IANA zone the expression is read in (``UTC`` by default).
        cost: the job's rate-limit cost.
    """

    name: str
    cron: str
    queue: str
    worker: str
    args: tuple[Any, ...] = ()
    missed: Missed = "skip"
    timezone: str = "UTC"
    cost: int = 1

    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def next_run(self, after_s: float) -> float:
        """The first tick strictly after ``after_s`` (unix seconds)."""
        start = datetime.fromtimestamp(after_s, tz=UTC).astimezone(self.zone())
        return float(croniter(self.cron, start).get_next(float))

    def latest_tick(self, at_s: float) -> tuple[float, float]:
        """``(tick, interval)``: the latest tick at or before ``at_s`` and the gap to the one after it."""
        # get_prev is strictly before its start: a millisecond past at_s keeps a tick falling on at_s itself.
        start = datetime.fromtimestamp(at_s + 0.001, tz=UTC).astimezone(self.zone())
        tick = float(croniter(self.cron, start).get_prev(float))
        return tick, self.next_run(tick) - tick


def check_not_every_second(cron: str, where: str) -> None:
    """Refuse a 6-field expression whose seconds field is ``*``: croniter reads the 6th field as seconds, so
    ``"*/10 * * * * *"`` is every second of every tenth minute, not every ten seconds. Writing the seconds
    as ``*/1`` says that every second is meant.

    Raises:
        ConfigError: naming the expression and what to write for the likely intents.
    """
    fields = cron.split()
    if len(fields) != 6 or fields[5] != "*":
        return
    five = " ".join(fields[:5])
    meant = f'"{five}" for once in each minute it matches'
    if fields[0] != "*":  # "*/10 * * * * *" was most likely meant as "every 10 seconds"
        meant += f', "* * * * * {fields[0]}" for seconds {fields[0]} of every minute'
    raise ConfigError(
        f"{where} {cron!r} fires every second of the minutes it matches (croniter reads a 6th field as "
        f'seconds); write {meant}, or "{five} */1" if every second is what you mean'
    )


def parse_schedules(raw: Any) -> tuple[ScheduleConfig, ...]:
    """Check the ``schedules`` table of a config and build one :class:`ScheduleConfig` per entry.

    Raises:
        ConfigError: naming the key, the value and the fix.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"schedules must be a table of [schedules.NAME] tables (got {raw!r})")
    return tuple(_schedule(name, table) for name, table in raw.items())


def _schedule(name: str, table: Any) -> ScheduleConfig:
    where = f"schedules.{name}"
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table (got {table!r}); write it as [{where}]")
    if not name or any(c in name for c in "{}: "):
        raise ConfigError(
            f"schedule name {name!r} must be non-empty without '{{', '}}', ':' or spaces; rename it"
        )
    for key in table:
        if key not in _KEYS:
            raise ConfigError(
                f"unknown config key {where}.{key}; remove it or use one of: {', '.join(sorted(_KEYS))}"
            )
    for key in ("cron", "queue", "worker"):
        if not isinstance(table.get(key), str) or not table[key]:
            raise ConfigError(f"{where}.{key} must be a non-empty string (got {table.get(key)!r})")
    cron = table["cron"]
    if not croniter.is_valid(cron):
        raise ConfigError(f'{where}.cron {cron!r} is not a valid cron expression; write it like "0 3 * * *"')
    check_not_every_second(cron, f"{where}.cron")
    queue = table["queue"]
    check_name(queue, f"{where}.queue")
    args = table.get("args", [])
    if not isinstance(args, list):
        raise ConfigError(
            f'{where}.args must be a list of positional arguments (got {args!r}); e.g. ["daily"]'
        )
    missed = table.get("missed", "skip")
    if missed not in ("run_once", "skip"):
        raise ConfigError(f'{where}.missed must be "run_once" or "skip" (got {missed!r})')
    zone = table.get("timezone", "UTC")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ConfigError(
            f'{where}.timezone {zone!r} is not an IANA time zone; write it like "Europe/Paris"'
        ) from None
    cost = table.get("cost", 1)
    if isinstance(cost, bool) or not isinstance(cost, int) or cost < 0:
        raise ConfigError(f"{where}.cost must be an integer >= 0 (got {cost!r})")
    schedule = ScheduleConfig(name, cron, queue, table["worker"], tuple(args), missed, zone, cost)
    try:
        codec.encode(_job(schedule))
    except Exception as exc:
        raise ConfigError(f"{where}.args cannot be sent as a job ({exc}); use plain values") from None
    return schedule


def _job(schedule: ScheduleConfig) -> Any:
    return build_job(schedule.queue, schedule.worker, list(schedule.args), schedule.cost)


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
        job = _job(schedule)
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
            logger.info("schedule %s: tick %s %s", schedule.name, _iso(tick_s), status)
            self.telemetry.emit(
                f"schedule.{status}", schedule=schedule.name, queue=schedule.queue, tick=tick_s,
                job_id=job.id if status == "enqueued" else "",
            )  # fmt: skip


def describe(
    schedules: Sequence[ScheduleConfig], now_s: float, last_ms: Mapping[str, int | None]
) -> list[dict[str, Any]]:
    """One row per schedule for ``flume-rx schedules``: its expression, target and next (and last) run."""
    rows = []
    for s in schedules:
        last = last_ms.get(s.name)
        rows.append(
            {
                "name": s.name,
                "cron": s.cron,
                "timezone": s.timezone,
                "queue": s.queue,
                "worker": s.worker,
                "missed": s.missed,
                "next_run": _iso(s.next_run(now_s)),
                "last_tick": None if last is None else _iso(last / 1000),
            }
        )
    return rows


def _iso(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, tz=UTC).isoformat(timespec="seconds")


def print_schedules(config: Any, *, as_json: bool = False) -> int:
    """``flume-rx schedules``: each schedule with its next run and, when Redis answers, its last tick.

    Returns:
        The exit code, 0.
    """
    import json
    import time

    from flume_rx.store import SyncStore

    last: dict[str, int | None] = {}
    with SyncStore.from_url(config.redis_url, config.namespace, socket_timeout_s=5.0) as store:
        for schedule in config.schedules:
            try:
                last[schedule.name] = store.cron_last(schedule.queue, schedule.name)
            except StoreError as exc:
                logger.warning("cannot read last ticks from Redis (%s); showing next runs only", exc)
                break
    rows = describe(config.schedules, time.time(), last)
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no [schedules.NAME] tables in the config")
        return 0
    from rich.table import Table

    from flume_rx.terminal import table_console

    table = Table("schedule", "cron", "queue", "worker", "missed", "next run (UTC)", "last tick (UTC)")
    for row in rows:
        table.add_row(
            row["name"], f"{row['cron']} ({row['timezone']})", row["queue"], row["worker"], row["missed"],
            row["next_run"], row["last_tick"] or "never",
        )  # fmt: skip
    table_console().print(table)
    return 0
