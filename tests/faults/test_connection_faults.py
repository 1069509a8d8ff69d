"""Connections killed, Redis paused or asleep: bounded waits, no hang, no double ack, nothing lost."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from flume_rx import Flume, worker
from flume_rx.engine.priorities import WeightedSource
from flume_rx.engine.source import JobSource
from flume_rx.model import codec
from flume_rx.model import config as config_module
from flume_rx.model.errors import StoreError
from flume_rx.model.job import Job
from flume_rx.model.registry import unregister
from flume_rx.model.telemetry import Telemetry
from flume_rx.store import RedisStore, Settlement
from flume_rx.store.keys import Keys
from flume_rx.store.scripts import SyncRunner, _Cmd
from flume_rx.store.sync_store import SyncStore
from flume_rx.surfaces.embedded import RedisServer
from flume_rx.surfaces.runtime import WorkerRuntime

from .harness import QUEUE

INFLIGHT_PREFIX = Keys("t").of(QUEUE).inflight("")


@pytest.fixture(scope="module")
def debug_server() -> Iterator[RedisServer]:
    """A server that accepts DEBUG SLEEP (Redis 7 refuses DEBUG unless enabled)."""
    with RedisServer(extra_args=["--enable-debug-command", "yes"]) as server:
        yield server


@pytest.fixture
def url(debug_server: RedisServer) -> str:
    redis.Redis.from_url(debug_server.url).flushall()
    return debug_server.url


@contextlib.contextmanager
def _redis_asleep(url: str, seconds: float) -> Iterator[None]:
    """Redis asleep (DEBUG SLEEP) before the body sends anything; on leaving, waits until it is awake again.

    The sleeper's connection is open and has answered a PING first, and the DEBUG SLEEP is written before the
    body starts: the server reads it ahead of the body's commands, however slowly this machine runs threads.
    """
    pool = redis.ConnectionPool.from_url(url)
    connection = pool.make_connection()
    try:
        connection.send_command("PING")
        connection.read_response()
        connection.send_command("DEBUG", "SLEEP", seconds)
        yield
        connection.read_response()  # its OK comes once the sleep is over
    finally:
        connection.disconnect()
        pool.disconnect()


def _payloads(n: int) -> list[bytes]:
    return [codec.encode(Job(id=f"id{i}", queue=QUEUE, worker="W", args=[i])) for i in range(n)]


def test_settle_is_idempotent_a_repeated_outcome_moves_nothing(url: str) -> None:
    """A settle whose reply was lost is sent again; Lua acts only for payloads LREM really removed."""

    async def main() -> None:
        async with RedisStore.from_url(url, "t") as store:
            await store.enqueue(QUEUE, _payloads(4))
            fetched = await store.fetch(QUEUE, "c1", 4, 0.0)
            outcomes = [
                Settlement(fetched[0], "ack"),
                Settlement(fetched[1], "retry", b"retry-copy", 60_000),
                Settlement(fetched[2], "dead", b"dead-copy"),
                Settlement(fetched[3], "requeue"),
            ]
            assert await store.settle(QUEUE, "c1", outcomes) == 0
            assert await store.settle(QUEUE, "c1", outcomes) == 4  # all stale the second time
            stats = (await store.stats([QUEUE]))[QUEUE]
            assert (stats["processed"], stats["failed"], stats["retry"], stats["dead"]) == (1, 2, 1, 1)
            assert (stats["queued"], stats["in_flight"], stats["requeued"]) == (1, 0, 1)

    asyncio.run(main())


async def _fetch_all(source: JobSource, jobs: int) -> list[int]:
    """The args of what ``source`` fetches, until ``jobs`` of them came or a burst-mode fetch found nothing."""
    got: list[int] = []
    while len(got) < jobs:
        batch = await asyncio.wait_for(source._fetch_async(jobs), 30)
        if not batch:
            break
        got += [d.job.args[0] for d in batch]
    return got


def test_a_fetch_whose_reply_was_lost_gives_its_jobs_back(url: str) -> None:
    """DEBUG SLEEP outlasts the socket timeout: Redis runs the fetch after the client gave up on it.

    The jobs it moved sit in this consumer's in-flight list although no pipeline holds them; as the
    consumer is alive, orphan recovery would never return them. The source must hand them back itself.
    """
    client = redis.Redis.from_url(url)

    async def main() -> list[int]:
        async with RedisStore.from_url(url, "t", socket_timeout_s=1.0) as store:
            await store.enqueue(QUEUE, _payloads(5))
            source = JobSource(
                store, QUEUE, "c-lost", max_demand=5, telemetry=Telemetry(), burst_mode="drained"
            )
            with _redis_asleep(url, 2.5):
                return await _fetch_all(source, 5)

    got = asyncio.run(main())
    assert sorted(got) == [0, 1, 2, 3, 4]
    assert client.llen(Keys("t").of(QUEUE).queue) == 0


@pytest.mark.parametrize("weighted", [False, True], ids=["one queue", "weighted queues"])
def test_every_source_gives_back_the_jobs_of_a_fetch_whose_reply_was_lost(url: str, weighted: bool) -> None:
    """The same, made certain: the fetch runs in Redis, then its caller sees an error instead of the reply."""
    queues = ("mail/urgent", "mail/bulk") if weighted else (QUEUE,)

    async def main() -> list[int]:
        async with RedisStore.from_url(url, "t") as store:
            payloads = _payloads(5)
            for index, queue in enumerate(queues):
                await store.enqueue(queue, payloads[index :: len(queues)])
            verb = "fetch_weighted" if weighted else "fetch"
            real = getattr(store, verb)
            lost: list[bool] = []

            async def loses_its_first_reply(*args: Any) -> Any:
                reply = await real(*args)
                if not lost:
                    lost.append(True)
                    raise StoreError("the reply was lost")
                return reply

            setattr(store, verb, loses_its_first_reply)
            source: JobSource
            if weighted:
                source = WeightedSource(
                    store, queues[0], "c-lost", max_demand=5, telemetry=Telemetry(), burst_mode="drained",
                    queues=queues, weights=(1, 1),
                )  # fmt: skip
            else:
                source = JobSource(
                    store, QUEUE, "c-lost", max_demand=5, telemetry=Telemetry(), burst_mode="drained"
                )
            return await _fetch_all(source, 5)

    assert sorted(asyncio.run(main())) == [0, 1, 2, 3, 4]


def test_a_blocked_store_call_times_out_instead_of_hanging(url: str) -> None:
    async def main() -> None:
        async with RedisStore.from_url(url, "t", socket_timeout_s=1.0) as store:
            with _redis_asleep(url, 3), pytest.raises(StoreError, match="cannot reach Redis"):
                await asyncio.wait_for(store.stats([QUEUE]), 20)
            await store.stats([QUEUE])  # and the same store works again afterwards

    asyncio.run(main())


class _Recorder:
    def __init__(self) -> None:
        self.runs: Counter[int] = Counter()
        self.lock = threading.Lock()

    def __call__(self, n: int) -> None:
        time.sleep(0.001)
        with self.lock:
            self.runs[n] += 1


@pytest.fixture
def recorder() -> Iterator[_Recorder]:
    rec = _Recorder()
    worker("FaultRecorder")(rec)
    yield rec
    unregister("FaultRecorder")


def _drain_under(url: str, jobs: int, fault: Any, recorder: _Recorder) -> dict[str, Any]:
    """Run a worker over ``jobs`` jobs while ``fault(admin_client)`` runs in a thread; returns the stats."""
    flume = Flume(url, "t")
    flume.bulk_enqueue(QUEUE, [("FaultRecorder", [i]) for i in range(jobs)])
    config = config_module.parse(
        {
            "redis_url": url,
            "namespace": "t",
            "orphan_timeout": 3000,
            "shutdown_timeout": 2000,
            "pipelines": {"main": {"queue": QUEUE, "max_demand": 20, "processor": {"stages": 4}}},
        }
    )
    runtime = WorkerRuntime(config, block_s=0.5)
    admin = redis.Redis.from_url(url)
    stop = threading.Event()
    thread = threading.Thread(target=lambda: fault(admin, stop), daemon=True)

    async def main() -> None:
        task = asyncio.create_task(runtime.run())
        thread.start()
        deadline = time.monotonic() + 90
        while len(recorder.runs) < jobs and time.monotonic() < deadline and not task.done():
            await asyncio.sleep(0.05)
        stop.set()
        runtime.stop()
        await asyncio.wait_for(task, 60)

    asyncio.run(main())
    thread.join(10)
    stats = dict(flume.stats([QUEUE])[QUEUE])
    flume.close()
    return stats


def _check(stats: dict[str, Any], recorder: _Recorder, jobs: int) -> None:
    assert set(recorder.runs) == set(range(jobs))  # nothing lost
    assert stats["processed"] == jobs  # each job acked exactly once, however often a reply was lost
    assert stats["queued"] == 0 and stats["in_flight"] == 0


def test_client_kill_mid_drain(url: str, recorder: _Recorder) -> None:
    def fault(admin: redis.Redis, stop: threading.Event) -> None:
        for _ in range(8):
            if stop.wait(0.15):
                return
            admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")

    _check(_drain_under(url, 3000, fault, recorder), recorder, 3000)


def test_client_pause_mid_drain(url: str, recorder: _Recorder) -> None:
    def fault(admin: redis.Redis, stop: threading.Event) -> None:
        for _ in range(3):
            if stop.wait(0.2):
                return
            admin.execute_command("CLIENT", "PAUSE", 700, "ALL")

    _check(_drain_under(url, 2000, fault, recorder), recorder, 2000)


def test_debug_sleep_mid_drain(url: str, recorder: _Recorder) -> None:
    def fault(admin: redis.Redis, stop: threading.Event) -> None:
        for _ in range(2):
            if stop.wait(0.2):
                return
            admin.execute_command("DEBUG", "SLEEP", 1.0)

    _check(_drain_under(url, 2000, fault, recorder), recorder, 2000)


# Script calls ride a connection the store keeps between them: never one the server closed, never one whose
# reply to a cancelled call may still come.


def _our_clients(url: str) -> int:
    """Connections to the server besides the one asking."""
    client = redis.Redis.from_url(url)
    try:
        return len(client.client_list()) - 1
    finally:
        client.close()


def test_script_calls_keep_their_connection_between_them(url: str) -> None:
    async def main() -> None:
        async with RedisStore.from_url(url, "t") as store:
            await store.enqueue(QUEUE, _payloads(41))
            assert len(await store.fetch(QUEUE, "c1", 1, 0.0)) == 1
            connections = _our_clients(url)
            for _ in range(40):
                assert len(await store.fetch(QUEUE, "c1", 1, 0.0)) == 1
            assert _our_clients(url) == connections, "each call took the connection the one before kept"

    asyncio.run(main())


def test_the_blocking_wait_rides_the_kept_connection_too(url: str) -> None:
    """The wait and the fetch script after it take the connection the calls before kept, and leave it kept
    (a connection of the pool is read with a zero timeout when handed out, and released with an event)."""

    async def main() -> None:
        async with RedisStore.from_url(url, "t") as store:
            pusher = redis.Redis.from_url(url)
            kept = store._run._kept
            for round_ in range(3):
                waiting = asyncio.ensure_future(store.fetch(QUEUE, "c1", 1, 5.0))
                await asyncio.sleep(0.1)  # the non-blocking fetch found nothing; the wait is on
                assert kept == [], "the wait holds the connection the fetch before it kept"
                pusher.lpush(Keys("t").of(QUEUE).queue, _payloads(round_ + 1)[-1])
                assert len(await asyncio.wait_for(waiting, 5)) == 1
                assert len(kept) == 1
            pusher.close()

    asyncio.run(main())


def test_a_connection_the_server_closed_is_not_used_again(url: str) -> None:
    async def main() -> None:
        async with RedisStore.from_url(url, "t") as store:
            await store.enqueue(QUEUE, _payloads(3))
            assert len(await store.fetch(QUEUE, "c1", 1, 0.0)) == 1
            killer = redis.Redis.from_url(url)
            assert killer.client_kill_filter(_type="normal", skipme=True) == 1
            killer.close()
            await asyncio.sleep(0.1)  # the loop reads the close while the connection idles
            assert len(await store.fetch(QUEUE, "c1", 2, 0.0)) == 2, (
                "no error: a new connection took the call"
            )

    asyncio.run(main())


def test_a_restarted_redis_costs_the_next_call_nothing(fresh_redis_server: RedisServer) -> None:
    async def main() -> None:
        async with RedisStore.from_url(fresh_redis_server.url, "t") as store:
            await store.enqueue(QUEUE, _payloads(3))
            assert len(await store.fetch(QUEUE, "c1", 1, 0.0)) == 1
            fresh_redis_server.restart()
            await asyncio.sleep(0.1)
            assert len(await store.fetch(QUEUE, "c1", 2, 0.0)) == 2

    asyncio.run(main())


def _connection_id(runner: SyncRunner) -> int:
    """The server's id of the connection a single command of ``runner`` goes on."""
    return int(runner.one(_Cmd(("CLIENT", "ID"))))


def test_a_producers_single_commands_keep_their_connection(url: str) -> None:
    with SyncStore.from_url(url, "t") as store:
        store.enqueue(QUEUE, _payloads(1))  # the first registers the queue, in a MULTI of its own
        first = _connection_id(store._run)
        connections = _our_clients(url)
        for payload in _payloads(40):
            store.enqueue(QUEUE, [payload])
        assert _our_clients(url) == connections, "each call took the connection the one before kept"
        assert _connection_id(store._run) == first


def test_an_error_reply_leaves_the_producers_connection_kept(url: str) -> None:
    with SyncStore.from_url(url, "t") as store:
        first = _connection_id(store._run)
        store.client.set("a-string", "x")
        with pytest.raises(StoreError, match="WRONGTYPE"):
            store._run.one(_Cmd(("LPUSH", "a-string", b"p")))
        assert _connection_id(store._run) == first


def test_a_producer_connection_the_server_closed_is_not_used_again(url: str) -> None:
    with SyncStore.from_url(url, "t") as store:
        store.enqueue(QUEUE, _payloads(1))
        kept = _connection_id(store._run)
        killer = redis.Redis.from_url(url)
        assert killer.client_kill_filter(_id=kept) == 1
        killer.close()
        time.sleep(0.1)  # the close reaches the idle connection
        store.enqueue(QUEUE, _payloads(2)[1:])  # no error: the close was seen and the call reconnected
        assert store.client.llen(Keys("t").of(QUEUE).queue) == 2
        assert _connection_id(store._run) != kept


def test_a_restarted_redis_costs_a_producers_next_call_nothing(fresh_redis_server: RedisServer) -> None:
    with SyncStore.from_url(fresh_redis_server.url, "t") as store:
        store.enqueue(QUEUE, _payloads(1))
        _connection_id(store._run)  # a connection kept from before the restart
        fresh_redis_server.restart()
        store.enqueue(QUEUE, _payloads(2)[1:])
        assert store.client.llen(Keys("t").of(QUEUE).queue) == 2


def test_a_producer_call_cut_short_by_its_timeout_leaves_no_reply_for_the_next(url: str) -> None:
    with SyncStore.from_url(url, "t", socket_timeout_s=0.3) as store:
        store.enqueue(QUEUE, _payloads(1))  # registers the queue: the next enqueue is a single LPUSH
        with _redis_asleep(url, 1.0), pytest.raises(StoreError):
            store.enqueue(QUEUE, _payloads(2)[1:])
        # Redis ran the LPUSH when it woke and answered it: that reply must not be read as this call's.
        assert store.known_queues() == [QUEUE]


def test_producer_threads_each_read_their_own_replies(url: str) -> None:
    with SyncStore.from_url(url, "t") as store:
        crossed: list[tuple[bytes, bytes]] = []

        def echo(thread: int) -> None:
            for call in range(200):
                sent = f"{thread}:{call}".encode()
                got = store._run.one(_Cmd(("ECHO", sent)))
                if got != sent:
                    crossed.append((sent, got))

        threads = [threading.Thread(target=echo, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert crossed == []


def test_a_forked_producer_talks_on_a_connection_of_its_own(url: str) -> None:
    with SyncStore.from_url(url, "t") as store:
        parent = _connection_id(store._run)
        ids = multiprocessing.get_context("fork").SimpleQueue()
        child = multiprocessing.get_context("fork").Process(
            target=lambda: ids.put(_connection_id(store._run))
        )
        child.start()
        child.join(30)
        assert child.exitcode == 0
        assert ids.get() != parent, "the child asked on its parent's socket"
        assert _connection_id(store._run) == parent, (
            "the parent's kept connection still reads its own replies"
        )


def test_a_call_cancelled_while_redis_sleeps_leaves_no_reply_for_the_next(url: str) -> None:
    keys = Keys("t").of(QUEUE)

    async def main() -> None:
        payloads = _payloads(3)
        async with RedisStore.from_url(url, "t") as store:
            await store.enqueue(QUEUE, payloads)
            assert (
                await store.fetch(QUEUE, "c0", 1, 0.0) == payloads[:1]
            )  # a connection kept before the sleep
            with _redis_asleep(url, 0.4):
                cancelled = asyncio.ensure_future(store.fetch(QUEUE, "c1", 1, 0.0))
                await asyncio.sleep(0.1)  # sent, waiting for its reply
                cancelled.cancel()
                await asyncio.gather(cancelled, return_exceptions=True)
            got = await store.fetch(QUEUE, "c2", 5, 0.0)
        # The cancelled fetch may or may not have run once Redis woke; either way the next call read its own
        # reply (the payloads it moved), not the cancelled call's.
        check = redis.Redis.from_url(url)
        try:
            moved_by_cancelled = check.lrange(keys.inflight("c1"), 0, -1)
            assert sorted(got) == sorted(check.lrange(keys.inflight("c2"), 0, -1)), (
                "the reply is what it moved"
            )
            assert set(got) | set(moved_by_cancelled) == set(payloads[1:])
            assert payloads[2] in got
            assert check.llen(keys.queue) == 0
        finally:
            check.close()

    asyncio.run(main())


def _big_payloads(n: int, size: int = 60_000) -> list[bytes]:
    return [codec.encode(Job(id=f"big{i}", queue=QUEUE, worker="W", args=["x" * size])) for i in range(n)]


def test_a_settle_bigger_than_the_socket_takes_at_once_waits_for_room_and_lands(url: str) -> None:
    """A settle of 20 MB of payloads while Redis sleeps: the socket takes part of it, the rest waits for room
    within the socket timeout, and the whole call lands once Redis reads again."""
    keys = Keys("t").of(QUEUE)

    async def main() -> None:
        async with RedisStore.from_url(url, "t", socket_timeout_s=10.0) as store:
            await store.enqueue(QUEUE, _big_payloads(340))
            fetched = await store.fetch(QUEUE, "c1", 340, 0.0)
            assert len(fetched) == 340
            with _redis_asleep(url, 1.0):
                stale = await store.settle(QUEUE, "c1", [Settlement(p, "ack") for p in fetched])
            assert stale == 0

    asyncio.run(main())
    assert redis.Redis.from_url(url).llen(keys.inflight("c1")) == 0


def test_a_settle_that_cannot_be_written_times_out_instead_of_hanging(url: str) -> None:
    async def main() -> None:
        async with RedisStore.from_url(url, "t", socket_timeout_s=1.0) as store:
            await store.enqueue(QUEUE, _big_payloads(340))
            fetched = await store.fetch(QUEUE, "c1", 340, 0.0)
            settlements = [Settlement(p, "ack") for p in fetched]
            with _redis_asleep(url, 4), pytest.raises(StoreError, match="cannot reach Redis"):
                await asyncio.wait_for(store.settle(QUEUE, "c1", settlements), 20)
            assert await store.settle(QUEUE, "c1", settlements) >= 0  # the store works again afterwards

    asyncio.run(main())
