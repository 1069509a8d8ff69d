"""A record far over max_payload_bytes, pushed raw into a queue, is dead-lettered by Redis, never read whole.

The worker's peak resident memory (VmHWM, Linux) must not grow by anything like the record's size: a worker
that read the record, even to refuse it, would hold it at least once.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from flume_rx import Flume

from .harness import QUEUE, WorkerProcess, runs, wait_until, write_config

RECORD_BYTES = 50 * 1024 * 1024
KEYS = "{t:jobs}"


def _peak_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


@pytest.fixture
def running(redis_url: str, tmp_path: Path) -> Iterator[tuple[WorkerProcess, redis.Redis, Flume]]:
    config = write_config(tmp_path / "worker.toml", redis_url)
    client = redis.Redis.from_url(redis_url)
    flume = Flume(redis_url, "t")
    process = WorkerProcess(config, redis_url)
    try:
        flume.enqueue(QUEUE, "RecordWorker", ["warm-up"])  # the worker is up and has run a job
        wait_until(lambda: runs(client).get("warm-up") == 1, 30, "the warm-up job")
        yield process, client, flume
    finally:
        process.kill()
        flume.close()
        client.close()


def _check_dead_lettered_unread(
    process: WorkerProcess, client: redis.Redis, flume: Flume, peak_before: int
) -> None:
    wait_until(lambda: flume.stats([QUEUE])[QUEUE]["dead"] == 1, 60, "the record to be dead-lettered")
    (dead,) = flume.dead_list(QUEUE)
    assert dead.error is not None and dead.error.kind == "DecodeError"
    assert f"payload of {RECORD_BYTES} bytes exceeds the limit of 1048576" in dead.error.message
    assert dead.args and isinstance(dead.args[0], bytes) and dead.args[0].startswith(b"\x9a\x01huge")
    assert process.alive(), process.log()
    grown = _peak_rss_bytes(process.pid) - peak_before
    assert grown < RECORD_BYTES // 2, f"the worker's peak RSS grew by {grown / 2**20:.0f} MiB"
    flume.enqueue(QUEUE, "RecordWorker", ["after"])
    wait_until(lambda: runs(client).get("after") == 1, 30, "a job after the record")
    wait_until(lambda: flume.stats([QUEUE])[QUEUE]["in_flight"] == 0, 30, "its ack")


def test_an_oversized_record_pushed_to_an_idle_worker_is_dead_lettered_unread(
    running: tuple[WorkerProcess, redis.Redis, Flume],
) -> None:
    process, client, flume = running
    peak_before = _peak_rss_bytes(process.pid)
    client.lpush(
        f"{KEYS}:queue", b"\x9a\x01huge" + b"x" * (RECORD_BYTES - 6)
    )  # the worker waits on the queue
    _check_dead_lettered_unread(process, client, flume, peak_before)


def test_an_oversized_record_in_a_backlog_is_dead_lettered_unread(
    running: tuple[WorkerProcess, redis.Redis, Flume],
) -> None:
    process, client, flume = running
    flume.pause(QUEUE)
    flume.bulk_enqueue(QUEUE, [("RecordWorker", [f"before-{i}"]) for i in range(100)])
    client.lpush(f"{KEYS}:queue", b"\x9a\x01huge" + b"x" * (RECORD_BYTES - 6))
    flume.bulk_enqueue(QUEUE, [("RecordWorker", [f"after-{i}"]) for i in range(100)])
    peak_before = _peak_rss_bytes(process.pid)
    flume.resume(QUEUE)
    wait_until(lambda: len(runs(client)) == 201, 60, "the backlog to run")
    _check_dead_lettered_unread(process, client, flume, peak_before)


def test_a_weighted_fetch_dead_letters_oversized_records_in_redis(redis_url: str) -> None:
    """The multi-queue fetch never returns a record over the limit either: it fills the batch from the rest."""
    import asyncio

    from flume_rx.model import codec
    from flume_rx.model.job import Job
    from flume_rx.store import Keys, RedisStore

    urgent, bulk = Keys("t").of("mail/urgent"), Keys("t").of("mail/bulk")
    client = redis.Redis.from_url(redis_url)
    good = [codec.encode(Job(f"j{i}", "mail/urgent", "W", [i])) for i in range(3)]
    client.lpush(urgent.queue, good[0], b"\x9a\x01big" + b"x" * 5000, good[1])  # the first pushed comes first
    client.lpush(bulk.queue, good[2])

    async def main() -> list[tuple[str, bytes]]:
        async with RedisStore.from_url(redis_url, "t") as store:
            return await store.fetch_weighted(["mail/urgent", "mail/bulk"], "c1", 3, [2, 1], 4096)

    fetched = asyncio.run(main())

    assert fetched == [("mail/urgent", good[0]), ("mail/urgent", good[1]), ("mail/bulk", good[2])]
    (dead,) = [codec.decode(p) for p in client.zrange(urgent.dead, 0, -1)]
    assert dead.queue == "mail/urgent" and dead.error is not None
    assert dead.error.message == "payload of 5005 bytes exceeds the limit of 4096"
    assert dead.args == [b""]  # no room for its head under so small a limit
    assert client.hget(urgent.stats, "dead") == b"1"
    assert client.llen(urgent.inflight("c1")) == 2 and client.llen(bulk.inflight("c1")) == 1
