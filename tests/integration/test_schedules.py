"""Cron schedules: parsing, tick arithmetic, the atomic tick decision, and several runtimes on one Redis."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

from flume_rx.model import codec
from flume_rx.model import config as config_module
from flume_rx.model.errors import ConfigError
from flume_rx.model.job import Job
from flume_rx.model.schedules import ScheduleConfig, parse_schedules
from flume_rx.store import RedisStore
from flume_rx.store.keys import Keys
from flume_rx.surfaces.cli import main as cli_main
from flume_rx.surfaces.runtime import WorkerRuntime

QUEUE = "cron"
K = Keys("t").of(QUEUE)


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# ---- parsing and tick arithmetic (no Redis) -------------------------------------------------------------


def test_a_schedule_table_is_parsed_with_defaults() -> None:
    (schedule,) = parse_schedules(
        {"nightly": {"cron": "0 3 * * *", "queue": "reports", "worker": "Nightly", "args": ["daily", 1]}}
    )
    assert schedule == ScheduleConfig("nightly", "0 3 * * *", "reports", "Nightly", ("daily", 1))
    assert schedule.missed == "skip" and schedule.timezone == "UTC"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"cron": "61 * * * *", "queue": "q", "worker": "W"}, "not a valid cron"),
        ({"queue": "q", "worker": "W"}, "cron must be a non-empty string"),
        ({"cron": "* * * * *", "queue": "q", "worker": "W", "missed": "always"}, "missed must be"),
        ({"cron": "* * * * *", "queue": "q", "worker": "W", "timezone": "Mars/Olympus"}, "IANA"),
        ({"cron": "* * * * *", "queue": "q", "worker": "W", "args": "x"}, "args must be a list"),
        (
            {"cron": "* * * * *", "queue": "q", "worker": "W", "every": 5},
            "unknown config key schedules.s.every",
        ),
        ({"cron": "* * * * *", "queue": "{q}", "worker": "W"}, "without braces"),
    ],
)
def test_bad_schedule_tables_are_named(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_module.parse({"pipelines": {"p": {}}, "schedules": {"s": table}})


def test_a_sixth_field_of_star_fires_every_second_and_is_refused_unless_written_as_every_second() -> None:
    # The README's old example: croniter reads it as every second of every tenth minute.
    with pytest.raises(ConfigError) as refused:
        config_module.parse(
            {
                "pipelines": {"p": {}},
                "schedules": {"s": {"cron": "*/10 * * * * *", "queue": "q", "worker": "W"}},
            }
        )
    assert str(refused.value) == (
        "schedules.s.cron '*/10 * * * * *' fires every second of the minutes it matches (croniter reads a 6th "
        'field as seconds); write "*/10 * * * *" for once in each minute it matches, "* * * * * */10" for '
        'seconds */10 of every minute, or "*/10 * * * * */1" if every second is what you mean'
    )

    def parsed(cron: str) -> ScheduleConfig:
        raw = {"pipelines": {"p": {}}, "schedules": {"s": {"cron": cron, "queue": "q", "worker": "W"}}}
        return config_module.parse(raw).schedules[0]

    midnight = _ts("2026-03-10T00:00:00")
    every_ten_s = parsed("* * * * * */10")  # the README's example now
    assert every_ten_s.next_run(midnight) == midnight + 10
    on_purpose = parsed("* * * * * */1")
    assert on_purpose.next_run(midnight) == midnight + 1


def test_latest_tick_includes_a_tick_falling_exactly_now_and_next_run_is_strictly_after() -> None:
    schedule = ScheduleConfig("n", "0 3 * * *", "q", "W")
    three = _ts("2026-03-10T03:00:00")
    assert schedule.latest_tick(three) == (three, 86400.0)
    assert schedule.latest_tick(three - 0.5)[0] == three - 86400
    assert schedule.next_run(three) == three + 86400
    every_second = ScheduleConfig("s", "* * * * * *", "q", "W")
    assert every_second.latest_tick(three + 0.999) == (three, 1.0)


def test_the_expression_is_read_in_the_schedule_time_zone() -> None:
    paris = ScheduleConfig("n", "0 3 * * *", "q", "W", timezone="Europe/Paris")
    # 03:00 in Paris is 02:00 UTC in winter and 01:00 UTC in summer.
    assert paris.next_run(_ts("2026-01-15T00:00:00")) == _ts("2026-01-15T02:00:00")
    assert paris.next_run(_ts("2026-07-15T00:00:00")) == _ts("2026-07-15T01:00:00")


# ---- the atomic tick decision -------------------------------------------------------------------------


def _payload() -> bytes:
    return codec.encode(Job("j", QUEUE, "Tick", []))


def test_each_tick_is_decided_once_and_missed_ticks_follow_the_policy(redis_url: str) -> None:
    async def main() -> list[tuple[str, int]]:
        async with RedisStore.from_url(redis_url, "t") as store:
            now_ms = await store.time_ms()

            async def tick(name: str, tick_ms: int, missed: Any) -> tuple[str, int]:
                return await store.cron_tick(
                    QUEUE, name, tick_ms, _payload(), claim_ttl_ms=60_000, on_time_ms=5_000, missed=missed
                )

            hour = 3_600_000
            return [
                await tick("a", now_ms, "skip"),  # on time: enqueued
                await tick("a", now_ms, "skip"),  # the same tick again: already decided
                await tick("a", now_ms - 1000, "skip"),  # an earlier tick: old
                await tick("b", now_ms - hour, "run_once"),  # first tick ever seen, late: skipped
                await tick("b", now_ms - hour // 2, "run_once"),  # missed since the last: enqueued once
                await tick("c", now_ms - hour, "skip"),
                await tick("c", now_ms - hour // 2, "skip"),  # missed with skip: skipped
            ]

    statuses = [status for status, _ in asyncio.run(main())]
    assert statuses == ["enqueued", "old", "old", "skipped", "enqueued", "skipped", "skipped"]
    client = redis.Redis.from_url(redis_url)
    assert client.llen(K.queue) == 2
    assert client.sismember("t:queues", QUEUE)
    # Even with the schedule's last tick lost, the tick's own claim keeps it from running twice.
    client.delete(K.cron_last("a"))
    assert asyncio.run(_tick_again(redis_url, "a"))[0] == "taken"


async def _tick_again(redis_url: str, name: str) -> tuple[str, int]:
    async with RedisStore.from_url(redis_url, "t") as store:
        client = redis.asyncio.Redis.from_url(redis_url)
        claims: list[bytes] = [k async for k in client.scan_iter(match=K.cron_tick(name, 1) + "*")]
        (claim,) = claims
        await client.aclose()
        tick_ms = int(claim.rsplit(b":", 1)[1])
        return await store.cron_tick(
            QUEUE, name, tick_ms, _payload(), claim_ttl_ms=60_000, on_time_ms=5_000, missed="skip"
        )


HELD_UP_S = 0.2
"""Readings of Redis's clock this far apart show the loop or Redis held up. A ticker looks within a few ms of
a tick; its steps to the decision (a sleep timed from a stale reading, the wake-up, the read of the clock,
the decision) each held up by less than a fifth of a second still decide the tick within its second."""


def _held_up(reads: list[float], start: float, end: float) -> bool:
    """Whether two consecutive ``reads`` at least HELD_UP_S apart overlap ``[start, end)``."""
    return any(b - a >= HELD_UP_S and a < end and b > start for a, b in itertools.pairwise(reads))


def test_several_runtimes_enqueue_exactly_one_job_per_tick(redis_url: str) -> None:
    config = config_module.parse(
        {
            "redis_url": redis_url,
            "namespace": "t",
            "pipelines": {"idle": {"queue": "idle"}},
            "schedules": {
                "every_second": {
                    "cron": "* * * * * */1",
                    "queue": QUEUE,
                    "worker": "Tick",
                    "args": [7],
                    "missed": "run_once",
                }
            },
        }
    )
    runtimes = [WorkerRuntime(config, block_s=0.2) for _ in range(4)]
    claim_pattern = K.cron_tick("every_second", 1) + "*"
    # Redis's clock read from the runtimes' loop every 20 ms: a gap in the readings is a time the loop or Redis
    # was held up (a loaded machine), when the tickers could not have looked either.
    clock_reads: list[float] = []

    async def read_the_clock() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            while True:
                seconds, micros = await client.time()
                clock_reads.append(seconds + micros / 1e6)
                await asyncio.sleep(0.02)
        finally:
            await client.aclose()

    async def main() -> None:
        reader = asyncio.create_task(read_the_clock())
        while not clock_reads:
            await asyncio.sleep(0.01)
        tasks = [asyncio.create_task(r.run()) for r in runtimes]
        # Three ticks decided: the first may be skipped (see below), so at least two were enqueued.
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            async with asyncio.timeout(60):
                while len([k async for k in client.scan_iter(match=claim_pattern)]) < 3:
                    await asyncio.sleep(0.1)
        finally:
            await client.aclose()
        for runtime in runtimes:
            runtime.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader

    asyncio.run(main())
    client = redis.Redis.from_url(redis_url)
    payloads: list[bytes] = client.lrange(K.queue, 0, -1)  # type: ignore[assignment]
    jobs = [codec.decode(p) for p in payloads]
    claims = {int(k.rsplit(b":", 1)[1]): client.get(k) for k in client.scan_iter(match=claim_pattern)}
    ticks = sorted(claims)
    assert len(ticks) >= 2, "the runtimes saw at least two ticks"
    # Consecutive seconds, each decided once, each with one job: no tick lost and none doubled. A second may
    # lack its tick only if the clock readings show the loop or Redis held up in it. Only the first tick may
    # be skipped: the schedule had never run, and it can come over half a second before the start (run_once
    # keeps a later tick that a busy machine decided late).
    assert all(tick % 1000 == 0 for tick in ticks)
    for lost in sorted(set(range(ticks[0], ticks[-1], 1000)) - set(ticks)):
        assert _held_up(clock_reads, lost / 1000, lost / 1000 + 1), (lost, ticks)
    assert all(claims[t] == b"enqueued" for t in ticks[1:])
    assert len(jobs) == sum(1 for outcome in claims.values() if outcome == b"enqueued")
    assert len({j.id for j in jobs}) == len(jobs)
    assert all(j.worker == "Tick" and j.args == [7] for j in jobs)


def test_the_cli_lists_schedules_with_their_next_run(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "flume.toml"
    path.write_text(
        f'redis_url = "{redis_url}"\nnamespace = "t"\n[pipelines.p]\n'
        '[schedules.nightly]\ncron = "0 3 * * *"\nqueue = "reports"\nworker = "Nightly"\n'
        'missed = "run_once"\n'
    )
    redis.Redis.from_url(redis_url).set(Keys("t").of("reports").cron_last("nightly"), 1_700_000_000_000)
    assert cli_main(["schedules", "--config", str(path), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["name"] == "nightly" and row["missed"] == "run_once"
    assert row["next_run"].endswith("T03:00:00+00:00")
    assert row["last_tick"] == "2023-11-14T22:13:20+00:00"
    assert cli_main(["schedules", "--config", str(path)]) == 0
    assert "nightly" in capsys.readouterr().out
