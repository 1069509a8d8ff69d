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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter  # type: ignore[import-untyped]

from flume_rx.model import codec
from flume_rx.model.errors import ConfigError
from flume_rx.model.job import build_job, check_name

Missed = Literal["run_once", "skip"]

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
        codec.encode(job_of(schedule))
    except Exception as exc:
        raise ConfigError(f"{where}.args cannot be sent as a job ({exc}); use plain values") from None
    return schedule


def job_of(schedule: ScheduleConfig) -> Any:
    return build_job(schedule.queue, schedule.worker, list(schedule.args), schedule.cost)


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
                "next_run": iso(s.next_run(now_s)),
                "last_tick": None if last is None else iso(last / 1000),
            }
        )
    return rows


def iso(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, tz=UTC).isoformat(timespec="seconds")
