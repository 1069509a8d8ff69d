"""Unique jobs on a real Redis: one job per key while it holds the key; freed at ack or dead, at start, or at
expiry, as ``unique_until`` says; bulk enqueues take keys too."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from flume_rx import Flume, worker
from flume_rx.model import config as config_module
from flume_rx.model.errors import ConfigError
from flume_rx.model.registry import unregister
from flume_rx.store import RedisStore, Settlement
from flume_rx.store.keys import Keys
from flume_rx.surfaces.cli import main as cli_main
from flume_rx.surfaces.runtime import WorkerRuntime

QUEUE = "uniq"
KEY = Keys("t").of(QUEUE).unique("welcome:42")


@pytest.fixture
def flume(redis_url: str) -> Iterator[Flume]:
    with Flume(redis_url, "t") as client:
        yield client


@pytest.fixture
def runs() -> Iterator[list[Any]]:
    seen: list[Any] = []

    @worker("UWelcome")
    def welcome(user_id: int) -> None:
        seen.append(user_id)

    @worker("UFails")
    def fails() -> None:
        raise RuntimeError("always")

    yield seen
    unregister("UWelcome")
    unregister("UFails")


def _key_held(redis_url: str, within_s: float = 5.0) -> bool:
    """Whether the unique key is still held after waiting up to ``within_s`` for it to go."""
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + within_s
    while client.exists(KEY) and time.monotonic() < deadline:
        time.sleep(0.005)
    return bool(client.exists(KEY))


def _drain(redis_url: str, max_retries: int = 0) -> None:
    config = config_module.parse(
        {
            "redis_url": redis_url,
            "namespace": "t",
            "pipelines": {
                "main": {
                    "queue": QUEUE,
                    # A retry falls due 0.5 to 1 s after the failure: long after a "ready" burst has seen the
                    # queue empty, even on a loaded machine (with 1 ms the same drain could promote and run it).
                    "retry": {"max_retries": max_retries, "backoff_initial": 1000, "backoff_max": 1000},
                }
            },
        }
    )

    async def main() -> None:
        # "ready": stop once the queue is empty, leaving a failed job in the retry set for the test to see.
        await asyncio.wait_for(WorkerRuntime(config, burst="ready").run(), 30)

    asyncio.run(main())


def test_an_equal_job_returns_the_waiting_job_id(flume: Flume, redis_url: str) -> None:
    first = flume.enqueue(QUEUE, "UWelcome", [42], unique_key="welcome:42", unique_for=60)
    again = flume.enqueue(QUEUE, "UWelcome", [42], unique_key="welcome:42", unique_for=60)
    other = flume.enqueue(QUEUE, "UWelcome", [43], unique_key="welcome:43", unique_for=60)
    assert again == first and other != first
    assert flume.stats([QUEUE])[QUEUE]["queued"] == 2
    client = redis.Redis.from_url(redis_url)
    assert client.get(KEY) == first.encode()
    ttl_ms: Any = client.pttl(KEY)
    assert 0 < ttl_ms <= 60_000


def test_the_key_is_released_when_the_job_is_acked(flume: Flume, redis_url: str, runs: list[Any]) -> None:
    first = flume.enqueue(QUEUE, "UWelcome", [42], unique_key="welcome:42")
    _drain(redis_url)
    assert runs == [42]
    assert not redis.Redis.from_url(redis_url).exists(KEY)
    assert flume.enqueue(QUEUE, "UWelcome", [42], unique_key="welcome:42") != first


def test_a_retried_job_keeps_the_key_and_a_dead_one_releases_it(
    flume: Flume, redis_url: str, runs: list[Any]
) -> None:
    client = redis.Redis.from_url(redis_url)
    first = flume.enqueue(QUEUE, "UFails", unique_key="welcome:42")
    _drain(redis_url, max_retries=1)  # the first attempt fails into the retry set
    assert flume.stats([QUEUE])[QUEUE]["retry"] == 1
    assert client.get(KEY) == first.encode()
    assert flume.enqueue(QUEUE, "UFails", unique_key="welcome:42") == first
    deadline = time.monotonic() + 15  # the drains go on until the retry falls due and its last attempt runs
    while flume.stats([QUEUE])[QUEUE]["dead"] == 0 and time.monotonic() < deadline:
        _drain(redis_url, max_retries=1)
    assert flume.stats([QUEUE])[QUEUE]["dead"] == 1
    assert not client.exists(KEY)


def test_a_scheduled_job_holds_the_key_from_its_due_time(flume: Flume, redis_url: str) -> None:
    due = time.time() + 120
    first = flume.enqueue_at(QUEUE, due, "UWelcome", [42], unique_key="welcome:42", unique_for=10)
    assert flume.enqueue(QUEUE, "UWelcome", [42], unique_key="welcome:42") == first
    stats = flume.stats([QUEUE])[QUEUE]
    assert (stats["scheduled"], stats["queued"]) == (1, 0)
    ttl_ms: Any = redis.Redis.from_url(redis_url).pttl(KEY)
    assert 100_000 < ttl_ms <= 131_000


def test_racing_producers_add_exactly_one_job(redis_url: str) -> None:
    barrier = threading.Barrier(8)

    def produce(_: int) -> str:
        with Flume(redis_url, "t") as client:
            barrier.wait()
            return client.enqueue(QUEUE, "UWelcome", [42], unique_key="welcome:42")

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(produce, range(8)))
    assert len(ids) == 1
    with Flume(redis_url, "t") as client:
        assert client.stats([QUEUE])[QUEUE]["queued"] == 1


def test_settling_an_expired_holder_leaves_a_newer_claim_alone(flume: Flume, redis_url: str) -> None:
    first = flume.enqueue(QUEUE, "UWelcome", [42], unique_key="welcome:42")
    client = redis.Redis.from_url(redis_url)

    async def main() -> None:
        async with RedisStore.from_url(redis_url, "t") as store:
            (payload,) = await store.fetch(QUEUE, "c1", 1, 0)
            client.set(KEY, "newer-job")  # the first claim expired and a newer job took the key
            await store.settle(QUEUE, "c1", [Settlement(payload, "ack", unique=("welcome:42", first))])

    asyncio.run(main())
    assert client.get(KEY) == b"newer-job"


def test_bad_unique_arguments_are_named(flume: Flume) -> None:
    with pytest.raises(ConfigError, match="unique_key"):
        flume.enqueue(QUEUE, "UWelcome", [1], unique_key="")
    with pytest.raises(ConfigError, match="unique_for"):
        flume.enqueue(QUEUE, "UWelcome", [1], unique_key="k", unique_for=0)
    with pytest.raises(ConfigError, match="unique_until"):
        flume.enqueue(QUEUE, "UWelcome", [1], unique_key="k", unique_until="done")  # type: ignore[arg-type]


def test_unique_until_start_frees_the_key_once_a_worker_starts_the_job(flume: Flume, redis_url: str) -> None:
    seen: list[tuple[int, bool, str]] = []

    @worker("UStart")
    def start(n: int) -> None:
        # Running now: the key is given up (by a call the pipeline makes at start, so wait for it briefly),
        # and an equal job enqueued meanwhile is a new job that runs after this one.
        held = _key_held(redis_url)
        again = (
            flume.enqueue(QUEUE, "UStart", [2], unique_key="welcome:42", unique_until="start")
            if n == 1
            else ""
        )
        seen.append((n, held, again))

    try:
        first = flume.enqueue(QUEUE, "UStart", [1], unique_key="welcome:42", unique_until="start")
        assert flume.enqueue(QUEUE, "UStart", [1], unique_key="welcome:42", unique_until="start") == first
        _drain(redis_url)
        _drain(redis_url)  # the job enqueued while the first ran may come after burst mode saw an empty queue
    finally:
        unregister("UStart")
    assert [(n, held) for n, held, _ in seen] == [(1, False), (2, False)]
    assert seen[0][2] not in ("", first)
    assert not redis.Redis.from_url(redis_url).exists(KEY)


def test_unique_until_expiry_holds_the_key_after_the_job_is_done(
    flume: Flume, redis_url: str, runs: list[Any]
) -> None:
    first = flume.enqueue(
        QUEUE, "UWelcome", [42], unique_key="welcome:42", unique_for=60, unique_until="expiry"
    )
    _drain(redis_url)
    assert runs == [42]
    assert flume.enqueue(QUEUE, "UWelcome", [42], unique_key="welcome:42", unique_until="expiry") == first
    ttl_ms: Any = redis.Redis.from_url(redis_url).pttl(KEY)
    assert 0 < ttl_ms <= 60_000
    assert flume.stats([QUEUE])[QUEUE]["queued"] == 0


def test_a_release_for_a_job_no_longer_in_flight_keeps_the_key(flume: Flume, redis_url: str) -> None:
    first = flume.enqueue(QUEUE, "UWelcome", [42], unique_key="welcome:42", unique_until="start")
    client = redis.Redis.from_url(redis_url)

    async def main() -> None:
        async with RedisStore.from_url(redis_url, "t") as store:
            (payload,) = await store.fetch(QUEUE, "c1", 1, 0)
            await store.settle(QUEUE, "c1", [Settlement(payload, "requeue")])  # e.g. recovered meanwhile
            release = Settlement(payload, "release", unique=("welcome:42", first))
            assert await store.settle(QUEUE, "c1", [release]) == 1  # counted stale

    asyncio.run(main())
    assert client.get(KEY) == first.encode()
    assert flume.stats([QUEUE])[QUEUE]["queued"] == 1


def test_bulk_enqueue_takes_unique_keys_in_one_round_trip(flume: Flume, redis_url: str) -> None:
    held = flume.enqueue(QUEUE, "UWelcome", [1], unique_key="welcome:1")
    client = redis.Redis.from_url(redis_url)
    client.config_resetstat()
    ids = flume.bulk_enqueue(
        QUEUE,
        [("UWelcome", [1]), ("UWelcome", [2]), ("UWelcome", [2]), ("UWelcome", [3]), ("UWelcome", [3])],
        unique_keys=["welcome:1", "welcome:2", "welcome:2", None, None],
    )
    calls: Any = client.info("commandstats")
    assert calls["cmdstat_evalsha"]["calls"] == 1
    assert ids[0] == held  # held by an earlier job
    assert ids[2] == ids[1]  # the second job of the call with the same key gives way to the first
    assert len({held, ids[1], ids[3], ids[4]}) == 4  # jobs without a key are always added
    assert flume.stats([QUEUE])[QUEUE]["queued"] == 4


def test_bulk_enqueue_checks_its_unique_arguments_before_writing(flume: Flume) -> None:
    with pytest.raises(ConfigError, match="one key"):
        flume.bulk_enqueue(QUEUE, [("UWelcome", [1]), ("UWelcome", [2])], unique_keys=["only-one"])
    with pytest.raises(ConfigError, match="unique_key"):
        flume.bulk_enqueue(QUEUE, [("UWelcome", [1]), ("UWelcome", [2])], unique_keys=["ok", ""])
    assert flume.stats([QUEUE])[QUEUE]["queued"] == 0


def test_the_cli_enqueues_a_unique_job(
    flume: Flume, redis_url: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "flume.toml"
    path.write_text(f'redis_url = "{redis_url}"\nnamespace = "t"\n[pipelines.main]\nqueue = "{QUEUE}"\n')
    argv = ["enqueue", "--config", str(path), QUEUE, "UWelcome", "[42]", "--unique-key", "welcome:42"]
    assert cli_main([*argv, "--unique-until", "start"]) == 0
    assert cli_main(argv) == 0
    first, again = capsys.readouterr().out.split()
    assert again == first
    assert flume.peek(QUEUE)[0].unique_until == "start"
