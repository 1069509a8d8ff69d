"""SIGKILL of worker processes in the middle of a drain: nothing is lost, duplicates stay bounded."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import redis

from flume_rx import Flume
from flume_rx.store.keys import Keys
from flume_rx.surfaces.embedded import RedisServer

from .harness import QUEUE, WorkerProcess, leftover_keys, runs, wait_until, write_config

JOBS = 20_000
PROCESSES = 3
KILLS = 3
MAX_DEMAND = 50
ORPHAN_TIMEOUT_MS = 2000


CONSUMERS = Keys("t").of(QUEUE).consumers


def _consumer_of(pid: int) -> str:
    """How every consumer id of the worker process ``pid`` begins (``new_consumer_id``)."""
    return f"{socket.gethostname()}:{pid}:"


def _inflight_keys_of(client: redis.Redis, pid: int) -> list[bytes]:
    marker = f":inflight:{_consumer_of(pid)}"
    return [k for k in client.scan_iter(match="{t:*", count=1000) if marker in k.decode()]


def _recovered(client: redis.Redis, pid: int) -> bool:
    """Whether the killed worker ``pid`` has been recovered: its in-flight lists are gone and it is out of the
    consumers set. Its lists alone can empty without recovery (a settle it wrote just before the kill still
    runs), and a consumer left in the set when every worker stops stays there until the next one starts."""
    members = client.zrange(CONSUMERS, 0, -1)
    return not _inflight_keys_of(client, pid) and not any(
        m.decode().startswith(_consumer_of(pid)) for m in members
    )


@pytest.mark.slow
def test_repeated_sigkill_loses_nothing_and_duplicates_stay_within_what_was_in_flight(
    redis_server: RedisServer, redis_url: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_url)
    config = write_config(
        tmp_path / "worker.toml",
        redis_url,
        {"max_demand": MAX_DEMAND, "processor": {"stages": 8}},
        orphan_timeout=ORPHAN_TIMEOUT_MS,
    )
    with Flume(redis_url, "t") as flume:
        for start in range(0, JOBS, 5000):
            flume.bulk_enqueue(
                QUEUE, [("RecordWorker", [f"j{i}"]) for i in range(start, min(JOBS, start + 5000))]
            )
    workers = [WorkerProcess(config, redis_url, name=f"w{i}") for i in range(PROCESSES)]
    killed: list[int] = []
    try:
        for kill in range(KILLS):
            threshold = JOBS * (kill + 1) // (KILLS + 2)
            wait_until(lambda t=threshold: client.hlen("test:runs") >= t, 120, f"{threshold} jobs done")
            victim = workers[kill % PROCESSES]
            # The victim must hold jobs when it dies, or the kill proves nothing.
            wait_until(lambda v=victim: bool(_inflight_keys_of(client, v.pid)), 30, "the victim to hold jobs")
            victim.kill()
            killed.append(victim.pid)
            workers[kill % PROCESSES] = WorkerProcess(config, redis_url, name=f"w{kill}-respawn")
        for pid in killed:
            # Orphans come back once the dead consumer's heartbeat is orphan_timeout old.
            wait_until(lambda p=pid: _recovered(client, p), 60, f"killed worker {pid} to be recovered")
        wait_until(lambda: client.hlen("test:runs") >= JOBS, 180, "every job to run")
        for worker in workers:
            assert worker.terminate() == 0, worker.log()
    finally:
        for worker in workers:
            worker.kill()

    done = runs(client)
    assert set(done) == {f"j{i}" for i in range(JOBS)}  # every job at least once
    duplicates = sum(done.values()) - JOBS
    # Only jobs in a killed consumer's in-flight list can run twice: at most max_demand per kill.
    assert 0 <= duplicates <= KILLS * MAX_DEMAND
    stats = Flume(redis_url, "t").stats([QUEUE])[QUEUE]
    assert stats["queued"] == 0 and stats["in_flight"] == 0
    consumers = client.zrange(CONSUMERS, 0, -1)
    assert leftover_keys(client) == [], f"consumers left: {consumers!r}; killed: {killed}"
