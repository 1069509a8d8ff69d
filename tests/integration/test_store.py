"""RedisStore and SyncStore against a private redis-server."""

from __future__ import annotations

import asyncio
import importlib.resources
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio

from flume_rx.model.errors import ConfigError, StoreError
from flume_rx.store import SCRIPTS, Keys, RedisStore, Settlement, SyncStore, redact_url, sync_store
from flume_rx.surfaces.embedded import RedisServer

pytestmark = pytest.mark.anyio

Q = "email"


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client, for looking at keys behind the store's back."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def jobs(n: int, prefix: str = "job") -> list[bytes]:
    return [f"{prefix}-{i}".encode() for i in range(n)]


class SendCounter:
    """Counts writes to Redis sockets: one per round trip (a pipeline is sent in one write, and so is a call
    on a connection the store keeps, which bypasses redis-py's send)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sends = 0
        original = asyncio.StreamWriter.writelines

        def counting(writer: asyncio.StreamWriter, data: Any) -> None:
            self.sends += 1
            original(writer, data)

        monkeypatch.setattr(asyncio.StreamWriter, "writelines", counting)


async def test_enqueue_fetch_settle_round_trip(store: RedisStore) -> None:
    await store.enqueue(Q, jobs(3))
    fetched = await store.fetch(Q, "c1", 10, 0)
    assert fetched == jobs(3)
    in_flight = await store.stats([Q])
    assert in_flight[Q]["in_flight"] == 3
    assert in_flight[Q]["queued"] == 0
    stale = await store.settle(Q, "c1", [Settlement(p, "ack") for p in fetched])
    assert stale == 0
    after = (await store.stats([Q]))[Q]
    assert (after["queued"], after["in_flight"], after["processed"], after["failed"]) == (0, 0, 3, 0)


async def test_fifo_across_enqueues_and_fetch_sizes(store: RedisStore) -> None:
    await store.enqueue(Q, jobs(7, "a"))
    await store.enqueue(Q, jobs(5, "b"))
    got: list[bytes] = []
    for n in (1, 4, 2, 100):
        got += await store.fetch(Q, "c1", n, 0)
    assert got == jobs(7, "a") + jobs(5, "b")


@pytest.mark.parametrize("n", [1, 2, 7, 50])
async def test_fetch_never_returns_more_than_n(store: RedisStore, n: int) -> None:
    await store.enqueue(Q, jobs(23))
    seen: list[bytes] = []
    while batch := await store.fetch(Q, "c1", n, 0):
        assert 1 <= len(batch) <= n
        seen += batch
    assert seen == jobs(23)


@pytest.mark.parametrize("n", [1, 3])
async def test_blocking_fetch_wakes_on_enqueue_and_stays_within_n(
    store: RedisStore, redis_url: str, n: int
) -> None:
    producer = RedisStore.from_url(redis_url)
    try:
        waiting = asyncio.create_task(store.fetch(Q, "c1", n, 10.0))
        await asyncio.sleep(0.05)  # let the fetch reach BLMOVE; correctness holds either way
        await producer.enqueue(Q, jobs(5))
        got = await waiting
    finally:
        await producer.aclose()
    assert 1 <= len(got) <= n
    assert got == jobs(5)[: len(got)]
    assert (await store.stats([Q]))[Q]["in_flight"] == len(got)


async def test_blocking_fetch_returns_empty_when_nothing_comes(store: RedisStore) -> None:
    assert await store.fetch(Q, "c1", 5, 0.1) == []


async def test_block_s_must_stay_below_the_socket_timeout(redis_url: str) -> None:
    store = RedisStore.from_url(redis_url, socket_timeout_s=2.0)
    try:
        with pytest.raises(ConfigError, match="block_s=5"):
            await store.fetch(Q, "c1", 1, 5.0)
    finally:
        await store.aclose()


async def test_bulk_enqueue_of_10000_is_one_round_trip(
    store: RedisStore, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.enqueue("warm-up", [b"x"])  # loads the script, so what follows is the steady state
    counter = SendCounter(monkeypatch)
    payloads = jobs(10_000)
    await store.enqueue(Q, payloads)
    assert counter.sends == 1
    assert raw.llen(store.keys.of(Q).queue) == 10_000
    assert await store.fetch(Q, "c1", 3, 0) == payloads[:3]


async def test_settle_of_a_batch_is_one_round_trip(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.enqueue(Q, jobs(200))
    fetched = await store.fetch(Q, "c1", 200, 0)
    assert await store.settle(Q, "c1", [Settlement(b"unknown", "ack")]) == 1  # loads the script
    counter = SendCounter(monkeypatch)
    await store.settle(Q, "c1", [Settlement(p, "ack") for p in fetched])
    assert counter.sends == 1


async def test_scripts_are_reloaded_after_a_script_flush(store: RedisStore, raw: redis.Redis) -> None:
    await store.enqueue(Q, jobs(2))
    await store.schedule_in(Q, [(b"later", 3600.0)])
    raw.script_flush()
    await store.schedule_in(Q, [(b"later-2", 3600.0)])  # the pipelined path (with the registration)
    raw.script_flush()
    assert await store.fetch(Q, "c1", 1, 0) == [b"job-0"]  # the single-call path
    stats = (await store.stats([Q]))[Q]
    assert (stats["queued"], stats["scheduled"]) == (1, 2)


def test_the_sync_store_reloads_scripts_after_a_script_flush(redis_url: str, raw: redis.Redis) -> None:
    with SyncStore.from_url(redis_url) as sync:
        sync.enqueue(Q, jobs(2))
        sync.schedule_in(Q, [(b"later", 3600.0)])
        raw.script_flush()
        # schedule.lua alone: the first enqueue registered the queue
        sync.schedule_in(Q, [(b"later-2", 3600.0)])
        raw.script_flush()
        assert sync.dead_retry(Q) == 0  # dead_retry.lua alone
        stats = sync.stats([Q])[Q]
        assert (stats["queued"], stats["scheduled"]) == (2, 2)


def _calls(raw: redis.Redis, command: str) -> int:
    stats: dict[str, Any] = raw.info("commandstats")  # type: ignore[assignment]
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def test_a_producer_registers_a_queue_once_then_enqueues_in_one_command(
    redis_url: str, raw: redis.Redis
) -> None:
    with SyncStore.from_url(redis_url) as sync:
        sync.enqueue(Q, jobs(1))  # registers the queue
        sync.schedule_in(Q, [(b"later", 60.0)])  # loads the script
        raw.config_resetstat()
        sync.enqueue(Q, jobs(1, "second"))
        sync.schedule_in(Q, [(b"later-2", 60.0)])
        calls = [_calls(raw, command) for command in ("multi", "sadd", "lpush", "evalsha")]
        assert calls == [0, 0, 1, 1]
        assert sync.known_queues() == [Q]


def test_a_wiped_set_of_queues_gets_the_queue_again_at_the_next_registration(
    redis_url: str, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SyncStore.from_url(redis_url) as sync:
        sync.enqueue(Q, jobs(1))
        raw.delete(sync.keys.queues)  # a FLUSHDB, or a hand, behind the producer's back
        monkeypatch.setattr(sync_store, "REGISTER_EVERY_S", 0.0)
        sync.enqueue(Q, jobs(1, "after"))
        assert sync.known_queues() == [Q]


def test_a_failed_enqueue_does_not_count_as_registering_the_queue(redis_url: str, raw: redis.Redis) -> None:
    with SyncStore.from_url(redis_url) as sync:
        raw.set(sync.keys.of(Q).queue, "not a list")
        with pytest.raises(StoreError, match="WRONGTYPE"):
            sync.enqueue(Q, jobs(1))
        raw.delete(sync.keys.of(Q).queue, sync.keys.queues)
        sync.enqueue(Q, jobs(1))
        assert sync.known_queues() == [Q]


async def test_concurrent_promote_due_moves_each_job_once(store: RedisStore, redis_url: str) -> None:
    payloads = jobs(600)
    await store.schedule(Q, [(p, 1.0) for p in payloads[:300]])  # long due
    await store.schedule_in(Q, [(p, 0.0) for p in payloads[300:]])  # due now on the Redis clock
    workers = [RedisStore.from_url(redis_url) for _ in range(4)]

    async def promoter(s: RedisStore) -> int:
        total = 0
        while moved := await s.promote_due(Q, limit=17):
            total += moved
        return total

    try:
        moved = await asyncio.gather(*(promoter(workers[i % 4]) for i in range(16)))
    finally:
        for w in workers:
            await w.aclose()
    assert sum(moved) == 600
    queued = await store.fetch(Q, "c1", 1000, 0)
    assert sorted(queued) == sorted(payloads)
    assert (await store.stats([Q]))[Q]["scheduled"] == 0


async def test_future_jobs_wait_for_their_due_time(store: RedisStore) -> None:
    await store.schedule_in(Q, [(b"later", 3600.0)])
    await store.schedule(Q, [(b"much-later", 4_000_000_000.0)])
    assert await store.promote_due(Q) == 0
    assert (await store.stats([Q]))[Q]["scheduled"] == 2


async def test_recover_orphans_returns_a_dead_consumers_jobs_and_spares_a_live_one(
    store: RedisStore, raw: redis.Redis
) -> None:
    await store.enqueue(Q, jobs(5))
    dead_jobs = await store.fetch(Q, "dead", 3, 0)
    live_jobs = await store.fetch(Q, "live", 2, 0)
    # The dead consumer last beat at the epoch; the live one beats now.
    raw.zadd(store.keys.of(Q).consumers, {"dead": 1})
    await store.heartbeat([Q], "live")

    assert await store.recover_orphans(Q, timeout_ms=60_000) == 3
    assert await store.recover_orphans(Q, timeout_ms=60_000) == 0
    assert raw.llen(store.keys.of(Q).inflight("live")) == 2
    assert not raw.exists(store.keys.of(Q).inflight("dead"))
    # They come back at the fetch end, oldest first, ahead of anything queued later.
    await store.enqueue(Q, [b"newer"])
    assert await store.fetch(Q, "other", 10, 0) == [*dead_jobs, b"newer"]
    # The recovered consumer's late settlements are stale and move nothing.
    assert await store.settle(Q, "dead", [Settlement(p, "ack") for p in dead_jobs]) == 3
    assert await store.settle(Q, "live", [Settlement(p, "ack") for p in live_jobs]) == 0
    stats = (await store.stats([Q]))[Q]
    assert stats["processed"] == 2
    assert stats["in_flight"] == 4  # the three recovered plus "newer", now with "other"


async def test_recover_orphans_leaves_consumers_within_the_timeout(store: RedisStore) -> None:
    await store.enqueue(Q, jobs(2))
    await store.fetch(Q, "c1", 2, 0)  # a fetch is a heartbeat too
    assert await store.recover_orphans(Q, timeout_ms=60_000) == 0
    assert (await store.stats([Q]))[Q]["in_flight"] == 2


async def test_requeue_all_gives_everything_back_and_leaves(store: RedisStore) -> None:
    await store.enqueue(Q, jobs(4))
    fetched = await store.fetch(Q, "c1", 3, 0)
    assert await store.requeue_all(Q, "c1") == 3
    stats = (await store.stats([Q]))[Q]
    assert (stats["queued"], stats["in_flight"], stats["consumers"]) == (4, 0, 0)
    assert await store.fetch(Q, "c2", 10, 0) == [*fetched, b"job-3"]


async def test_requeue_of_some_payloads_keeps_the_consumer_registered(store: RedisStore) -> None:
    await store.enqueue(Q, jobs(3))
    fetched = await store.fetch(Q, "c1", 3, 0)
    assert await store.requeue_all(Q, "c1", [fetched[1], b"not-in-flight"]) == 1
    stats = (await store.stats([Q]))[Q]
    assert (stats["queued"], stats["in_flight"], stats["consumers"]) == (1, 2, 1)


async def test_settle_retry_goes_through_the_retry_set(store: RedisStore) -> None:
    await store.enqueue(Q, [b"a", b"b"])
    a, b = await store.fetch(Q, "c1", 2, 0)
    await store.settle(
        Q,
        "c1",
        [Settlement(a, "retry", b"a#1", delay_ms=0), Settlement(b, "retry", b"b#1", delay_ms=3_600_000)],
    )
    stats = (await store.stats([Q]))[Q]
    assert (stats["retry"], stats["failed"], stats["in_flight"]) == (2, 2, 0)
    assert await store.promote_due(Q) == 1
    assert await store.fetch(Q, "c1", 5, 0) == [b"a#1"]


async def test_settle_requeue_goes_back_to_the_fetch_end_without_failing(store: RedisStore) -> None:
    await store.enqueue(Q, [b"a", b"b", b"c"])
    (a,) = await store.fetch(Q, "c1", 1, 0)
    await store.settle(Q, "c1", [Settlement(a, "requeue")])
    assert await store.fetch(Q, "c1", 5, 0) == [b"a", b"b", b"c"]
    stats = (await store.stats([Q]))[Q]
    assert (stats["failed"], stats["requeued"]) == (0, 1)


async def test_dead_letters_are_bounded_by_count(redis_url: str) -> None:
    store = RedisStore.from_url(redis_url, dead_max=5)
    try:
        await store.enqueue(Q, jobs(8))
        fetched = await store.fetch(Q, "c1", 8, 0)
        for p in fetched:  # one at a time, so each has its own death time
            await store.settle(Q, "c1", [Settlement(p, "dead", p + b"|boom")])
        dead = await store.dead_list(Q)
        assert len(dead) == 5
        assert {p for p, _ in dead} == {p + b"|boom" for p in fetched[3:]}
        stats = (await store.stats([Q]))[Q]
        assert (stats["dead"], stats["failed"]) == (5, 8)
    finally:
        await store.aclose()


async def test_dead_letters_are_bounded_by_age(redis_url: str, raw: redis.Redis) -> None:
    store = RedisStore.from_url(redis_url, dead_ttl_ms=3_600_000)
    try:
        raw.zadd(store.keys.of(Q).dead, {b"ancient": 1_000})  # died in 1970
        await store.enqueue(Q, [b"fresh"])
        (fresh,) = await store.fetch(Q, "c1", 1, 0)
        await store.settle(Q, "c1", [Settlement(fresh, "dead")])
        assert [p for p, _ in await store.dead_list(Q)] == [b"fresh"]
    finally:
        await store.aclose()


async def test_dead_retry_and_purge(store: RedisStore) -> None:
    await store.enqueue(Q, jobs(4))
    fetched = await store.fetch(Q, "c1", 4, 0)
    await store.settle(Q, "c1", [Settlement(p, "dead") for p in fetched])
    assert await store.dead_retry(Q, [fetched[0]], [b"job-0-again"]) == 1
    assert await store.dead_retry(Q, [fetched[0]]) == 0  # already moved
    assert await store.dead_purge(Q) == 3
    assert await store.dead_retry(Q) == 0
    assert await store.fetch(Q, "c1", 10, 0) == [b"job-0-again"]


async def test_dead_retry_all(store: RedisStore) -> None:
    await store.enqueue(Q, jobs(3))
    fetched = await store.fetch(Q, "c1", 3, 0)
    await store.settle(Q, "c1", [Settlement(p, "dead") for p in fetched])
    assert await store.dead_retry(Q) == 3
    assert sorted(await store.fetch(Q, "c1", 10, 0)) == sorted(fetched)


async def test_pause_stops_fetch_until_resume(store: RedisStore) -> None:
    await store.enqueue(Q, jobs(2))
    await store.pause(Q)
    assert await store.is_paused(Q)
    assert await store.fetch(Q, "c1", 5, 0) == []
    assert await store.fetch(Q, "c1", 5, 0.05) == []
    stats = (await store.stats([Q]))[Q]
    assert (stats["queued"], stats["paused"]) == (2, True)
    await store.resume(Q)
    assert not await store.is_paused(Q)
    assert await store.fetch(Q, "c1", 5, 0) == jobs(2)


async def test_stats_cover_every_known_queue(store: RedisStore) -> None:
    await store.enqueue("a", jobs(3))
    await store.schedule_in("b", [(b"x", 3600.0)])
    await store.fetch("a", "c1", 1, 0)
    await store.fetch("a", "c2", 1, 0)
    assert await store.known_queues() == ["a", "b"]
    stats = await store.stats()
    assert stats["a"]["queued"] == 1
    assert stats["a"]["in_flight"] == 2
    assert stats["a"]["consumers"] == 2
    assert stats["b"]["scheduled"] == 1
    assert stats["b"]["in_flight"] == 0


async def test_sync_store_works_with_the_async_one(store: RedisStore, redis_url: str) -> None:
    with SyncStore.from_url(redis_url) as sync:
        sync.enqueue(Q, jobs(3))
        sync.schedule_in(Q, [(b"soon", 0.0)])
        assert await store.promote_due(Q) == 1
        fetched = await store.fetch(Q, "c1", 10, 0)
        assert fetched == [*jobs(3), b"soon"]
        sync.heartbeat([Q], "c1")
        await store.settle(Q, "c1", [Settlement(fetched[0], "dead")])
        assert sync.stats([Q])[Q]["in_flight"] == 3
        assert sync.known_queues() == [Q]
        assert [p for p, _ in sync.dead_list(Q)] == [b"job-0"]
        assert sync.dead_retry(Q) == 1
        sync.pause(Q)
        assert sync.is_paused(Q)
        sync.resume(Q)
        assert sync.dead_purge(Q) == 0


def test_keys_share_one_hash_tag_per_queue() -> None:
    k = Keys("ns").of("q")
    names = [k.queue, k.scheduled, k.retry, k.dead, k.consumers, k.stats, k.paused, k.inflight("c")]
    assert all(name.startswith("{ns:q}:") for name in names)
    assert len(set(names)) == len(names)
    assert all(name.startswith("{ns:rate:r}:") for name in Keys("ns").rate("r"))
    with pytest.raises(ConfigError, match="queue name"):
        Keys("ns").of("bad{name}")


def test_every_script_is_a_packaged_file_with_a_header() -> None:
    lua = importlib.resources.files("flume_rx") / "lua"
    for name in SCRIPTS:
        text = (lua / f"{name}.lua").read_text(encoding="utf-8")
        assert text.startswith(f"-- {name}(KEYS["), name


def test_redact_url_drops_credentials() -> None:
    assert redact_url("redis://user:s3cret@10.0.0.1:6380/2") == "redis://10.0.0.1:6380/2"
    assert "s3cret" not in redact_url("rediss://:s3cret@host/0")


async def test_unreachable_redis_is_a_store_error_without_the_password() -> None:
    with RedisServer(password="s3cret-pass") as server:
        store = RedisStore.from_url(server.url, socket_timeout_s=2.0)
        await store.enqueue(Q, [b"a"])
        server.kill()
        with pytest.raises(StoreError) as caught:
            await store.enqueue(Q, [b"b"])
        await store.aclose()
    message = str(caught.value)
    assert f"127.0.0.1:{server.port}/0" in message
    assert "s3cret-pass" not in message
    assert "redis_url" in message


async def test_jobs_survive_a_redis_crash_with_appendonly(fresh_redis_server: RedisServer) -> None:
    store = RedisStore.from_url(fresh_redis_server.url)
    try:
        await store.enqueue(Q, jobs(3))
        assert await store.fetch(Q, "c1", 1, 0) == [b"job-0"]
        fresh_redis_server.kill()
        fresh_redis_server.restart()
        await store.client.connection_pool.disconnect()
        assert await store.fetch(Q, "c2", 5, 0) == [b"job-1", b"job-2"]
        assert await store.requeue_all(Q, "c1") == 1
    finally:
        await store.aclose()


async def test_a_blocking_fetch_after_a_script_flush_still_returns_the_job_that_woke_it(
    store: RedisStore, redis_url: str, raw: redis.Redis
) -> None:
    """The script behind the wait meets NOSCRIPT: it is loaded and run again, and takes the parked job."""
    await store.fetch(Q, "c1", 1, 0)  # the scripts are loaded
    raw.script_flush()
    producer = RedisStore.from_url(redis_url)
    try:
        waiting = asyncio.create_task(store.fetch(Q, "c1", 3, 10.0))
        await asyncio.sleep(0.05)  # let the fetch reach its wait; correctness holds either way
        await producer.enqueue(Q, jobs(1))
        got = await waiting
    finally:
        await producer.aclose()
    assert got == jobs(1)
    keys = Keys("flume").of(Q)
    assert raw.lrange(keys.inflight("c1"), 0, -1) == jobs(1) and raw.llen(keys.arrivals("c1")) == 0
    assert await store.fetch(Q, "c1", 3, 0) == []  # the connection that waited serves the next call
