"""flume_rx on a local Redis Cluster of 3 masters: every Lua call stays in one slot, and the flow works."""

from __future__ import annotations

import asyncio
import importlib.resources
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.cluster
from faults.harness import QUEUE, WorkerProcess, runs, wait_until, wait_while_moving, write_config
from redis.crc import key_slot

from flume_rx import Flume
from flume_rx.model import codec
from flume_rx.model.job import Job
from flume_rx.store import Handoff, RedisStore, Settlement, SyncStore, UniqueEnqueue
from flume_rx.store.keys import Keys
from flume_rx.store.scripts import AsyncRunner, SyncRunner, _Eval, _Op

from .conftest import LocalCluster


def test_store_verbs_on_the_cluster(cluster: LocalCluster) -> None:
    payloads = [codec.encode(Job(id=f"id{i}", queue="q", worker="W", args=[i])) for i in range(10)]

    async def main() -> None:
        async with RedisStore.from_url(cluster.url, "t") as store:
            await store.enqueue("q", payloads)
            got = await store.fetch("q", "c1", 10, 0.0)
            assert sorted(got) == sorted(payloads)
            assert await store.settle("q", "c1", [Settlement(p, "ack") for p in got]) == 0
            stats = await store.stats()
            assert stats["q"]["processed"] == 10

    asyncio.run(main())
    with Flume(cluster.url, "t") as flume:
        assert flume.stats(["q"])["q"]["processed"] == 10


def _max_in_window(starts: list[float], window_s: float) -> int:
    starts = sorted(starts)
    best, low = 0, 0
    for high, start in enumerate(starts):
        while start - starts[low] >= window_s:
            low += 1
        best = max(best, high - low + 1)
    return best


STALL_S = 60.0
"""How long the cluster test waits with no job starting before it calls the flow stalled."""

STARTUP_S = 240.0
"""How long three worker processes may take to join: at load 31 to 38 on 2 cores the first job came 57 to 65 s
after spawning (each process spends over a second of CPU importing and connecting before it serves)."""


@pytest.mark.slow
@pytest.mark.timeout(1200)  # at load 30+ a run takes minutes; the waits below fail on a stall within a minute
def test_three_worker_processes_on_the_cluster(cluster: LocalCluster, redis_url: str, tmp_path: Path) -> None:
    records = redis.Redis.from_url(redis_url)
    nodes = cluster.client()
    config = write_config(
        tmp_path / "cluster.toml",
        cluster.url,
        {
            "max_demand": 40,
            "processor": {"stages": 8},
            "rate_limiter": {"allowed": 400, "period": 1000},
            "retry": {"max_retries": 3, "backoff_initial": 50, "backoff_max": 200},
        },
        imports=["tests.cluster.cluster_workers"],
        orphan_timeout=1500,
    )
    plain = [f"p{i}" for i in range(1200)]
    flaky = [f"f{i}" for i in range(150)]
    later = [f"s{i}" for i in range(50)]
    with Flume(cluster.url, "t") as flume:
        flume.bulk_enqueue(QUEUE, [("ClusterRecord", [t]) for t in plain])
        flume.bulk_enqueue(QUEUE, [("ClusterFailOnce", [t]) for t in flaky])
        for token in later:
            flume.enqueue_in(QUEUE, 0.5, "ClusterRecord", [token])

    def starts() -> int:
        return int(records.llen("test:starts"))  # one per run, retries included: the flow's progress

    workers = [WorkerProcess(config, redis_url, name=f"c{i}") for i in range(3)]
    try:
        # Every worker serves before the kill: a victim still starting when the others have drained the queue
        # would never hold jobs.
        wait_until(lambda: len(_consumers(nodes)) == 3, STARTUP_S, "the three workers to join")
        wait_while_moving(lambda: records.hlen("test:runs") >= 300, starts, STALL_S, "300 jobs done")
        victim = workers[0]
        wait_while_moving(lambda: _holds_jobs(nodes, victim.pid), starts, STALL_S, "the victim to hold jobs")
        victim.kill()
        workers[0] = WorkerProcess(config, redis_url, name="c0-respawn")
        # Orphan recovery on the cluster: the dead consumer's jobs return and it leaves the consumers zset.
        wait_while_moving(
            lambda: not _consumer_known(nodes, victim.pid),
            starts,
            STALL_S,
            "the killed worker's jobs to return",
        )
        expected = set(plain) | set(flaky) | set(later)
        wait_while_moving(lambda: expected <= set(runs(records)), starts, STALL_S, "every job to run")
        wait_while_moving(
            lambda: all(runs(records)[t] >= 2 for t in flaky),
            starts,
            STALL_S,
            "every flaky job to be retried",
        )
        for worker in workers:
            assert worker.terminate() == 0, worker.log()
    finally:
        for worker in workers:
            worker.kill()

    with Flume(cluster.url, "t") as flume:
        stats = flume.stats([QUEUE])[QUEUE]
    assert (
        stats["queued"] == 0 and stats["in_flight"] == 0 and stats["retry"] == 0 and stats["scheduled"] == 0
    )
    assert stats["dead"] == 0
    # A start is recorded a little after its grant (thread hand-off, at most tens of ms here), so a limit of
    # 400 in every sliding second shows as at most 400 in every sliding 0.9 s of recorded starts.
    starts = [float(s) for s in records.lrange("test:starts", 0, -1)]
    assert _max_in_window(starts, 0.9) <= 400
    assert not [k for k in nodes.scan_iter(match="{t:*inflight*")]


def _holds_jobs(nodes: redis.cluster.RedisCluster, pid: int) -> bool:
    marker = f":{pid}:"
    return any(
        marker in k.decode() and nodes.llen(k) > 0
        for k in nodes.scan_iter(match=Keys("t").of("jobs").inflight("*"))
    )


def _consumers(nodes: redis.cluster.RedisCluster) -> list[str]:
    return [c.decode() for c in nodes.zrange(Keys("t").of("jobs").consumers, 0, -1)]


def _consumer_known(nodes: redis.cluster.RedisCluster, pid: int) -> bool:
    return any(f":{pid}:" in c for c in _consumers(nodes))


def test_every_lua_script_keeps_its_keys_in_one_slot(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every store verb runs against a plain Redis while each script call is recorded; every script file in
    flume_rx/lua must have been called, with all its keys in one cluster slot, so a new script cannot slip
    past this test."""
    calls: list[_Eval] = []
    run = AsyncRunner.run

    async def recording(self: AsyncRunner, ops: Sequence[_Op], *, transaction: bool = False) -> list[Any]:
        calls.extend(op for op in ops if isinstance(op, _Eval))
        return await run(self, ops, transaction=transaction)

    monkeypatch.setattr(AsyncRunner, "run", recording)
    sync_one = SyncRunner.one

    def recording_one(self: SyncRunner, op: _Op) -> Any:
        if isinstance(op, _Eval):
            calls.append(op)
        return sync_one(self, op)

    monkeypatch.setattr(SyncRunner, "one", recording_one)
    payload = codec.encode(Job(id="id1", queue="email", worker="W", args=[1]))

    async def every_verb() -> None:
        async with RedisStore.from_url(redis_url, "t") as store:
            await store.enqueue("email", [payload])
            await store.schedule("email", [(payload, 1.0)])
            await store.schedule_in("email", [(payload, 0.0)])
            await store.enqueue_unique("email", [UniqueEnqueue("u1", payload, "k1")], 60_000)
            await store.cron_tick(
                "email", "daily", 60_000, payload, claim_ttl_ms=1000, on_time_ms=1000, missed="skip"
            )
            await store.promote_due("email")
            got = await store.fetch("email", "host:1:abc", 2, 0.0)
            await store.settle("email", "host:1:abc", [Settlement(p, "dead") for p in got])
            # A settlement with every kind of workflow hand-off (its job is not in flight: the keys count).
            handoffs = (
                Handoff("email/b", payload),
                Handoff("email/c", group="g1", outcome=b"\xc0"),
                Handoff("email/b", payload, stopped="id9", keep_ms=1000),
            )
            await store.settle("email/a", "host:1:abc", [Settlement(payload, "ack", handoffs=handoffs)])
            await store.dead_retry("email")
            await store.dead_retry("email", [payload])
            await store.fetch_weighted(["email/a", "email/b"], "host:1:abc", 2, [1, 1])
            await store.requeue_all("email", "host:1:abc")
            await store.heartbeat(["email"], "host:1:old")
            await store.recover_orphans("email", 0)
            await store.take_tokens("ses", allowed=10, period_ms=1000.0, hold_ms=20.0, want=1)
            await store.take_tokens_multi(
                "ses", [("a", 1, 1), ("b", 1, 1)], allowed=10, period_ms=1000.0, hold_ms=20.0
            )
            await store.set_progress("email", "id1", 0.5, "half", 60_000)
            await store.penalize_window("ses", allowed=10, period_ms=1000.0, hold_ms=20.0)

    asyncio.run(every_verb())
    with SyncStore.from_url(redis_url, "t") as sync:
        sync.enqueue("email", [payload])
        sync.cancel("email", "id1", payload, 60_000)
    lua = importlib.resources.files("flume_rx") / "lua"
    # A file named _*.lua is a prelude that scripts include (store/scripts.py), never called by itself.
    files = {
        entry.name.removesuffix(".lua")
        for entry in lua.iterdir()
        if entry.name.endswith(".lua") and not entry.name.startswith("_")
    }
    assert {call.script for call in calls} == files
    for call in calls:
        assert len({key_slot(key.encode()) for key in call.keys}) == 1, (call.script, call.keys)


def test_a_workflow_runs_on_the_cluster_and_one_across_slots_is_refused(
    cluster: LocalCluster, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLUME_TEST_REDIS_URL", redis_url)  # where the workers count their runs
    import tests.integration.workflow_workers  # noqa: F401  (registers the workers in this process)
    from flume_rx import ConfigError
    from flume_rx.model.config import RetryConfig

    with Flume(cluster.url, "t") as flume:
        with pytest.raises(ConfigError, match="one group"):
            flume.chain([("resize", "wf.count", ["a"]), ("upload", "wf.count", ["b"])])
        with pytest.raises(ConfigError, match="one group"):
            flume.group([("wf/a", "wf.count", ["a"])], then=("notify", "wf.gather", ["t"]))
        chain = flume.chain([("wf/a", "wf.count", ["c1"]), ("wf/b", "wf.count", ["c2"])])
        group = flume.group(
            [("wf/a", "wf.count", ["m0"]), ("wf/b", "wf.count", ["m1"])], then=("wf/b", "wf.gather", ["g"])
        )
        sources = [
            flume.source(q, retry=RetryConfig(max_retries=0)).pipe(flume.process()) for q in ("wf/a", "wf/b")
        ]
        asyncio.run(flume.run(*sources, burst=True, handle_signals=False))
        assert flume.result(chain.last, chain.last_queue, timeout=30) == 2
        outcomes = flume.result(group.then, group.then_queue, timeout=30)
        assert [o["result"] for o in outcomes] == [1, 1]


def test_a_to_queue_hop_across_slots_sends_its_job_to_the_dead_letters_saying_why(
    cluster: LocalCluster, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLUME_TEST_REDIS_URL", redis_url)
    import tests.integration.workflow_workers  # noqa: F401  (registers the workers in this process)

    with Flume(cluster.url, "t") as flume:
        flume.enqueue("wf/a", "wf.count", ["x"])
        flume.enqueue("wf/c", "wf.count", ["y"])
        crossing = flume.source("wf/a").pipe(flume.process(), flume.to_queue("elsewhere", "wf.count"))
        within = flume.source("wf/c").pipe(flume.process(), flume.to_queue("wf/d", "wf.square"))
        asyncio.run(flume.run(crossing, within, burst=True, handle_signals=False))
        (dead,) = flume.dead_letters("wf/a")
        assert dead.job.error is not None and "different cluster slots" in dead.job.error.message
        assert flume.stats(["elsewhere"])["elsewhere"]["queued"] == 0
        (hopped,) = flume.peek("wf/d")
        assert (hopped.worker, hopped.args) == ("wf.square", [1])
