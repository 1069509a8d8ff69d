"""SIGKILL of worker processes in the middle of chains and groups: every hand-off happens exactly once.

The chains' last steps and the groups' callbacks land on a queue no worker serves (``wf/sink``), so the test
counts the hand-offs themselves, not runs (a killed worker's jobs run again: at least once). Each must be
there exactly once, carrying every result, whatever moment the kills hit.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import redis

from flume_rx import Flume
from flume_rx.model import codec
from flume_rx.surfaces.embedded import RedisServer

from .harness import WorkerProcess, runs, wait_until, write_config

CHAINS = 30
GROUPS = 30
MEMBERS = 3
SLEEP_S = 0.03
KILLS = 2
QUEUES = ("wf/a", "wf/b")


def _inflight_of(client: redis.Redis, pid: int) -> int:
    marker = f":inflight:{socket.gethostname()}:{pid}:"
    return sum(client.llen(k) for k in client.scan_iter(match="{t:wf}*", count=1000) if marker in k.decode())


def _drained(flume: Flume) -> bool:
    stats = flume.stats(list(QUEUES))
    return all(s["queued"] == 0 and s["in_flight"] == 0 and s["retry"] == 0 for s in stats.values())


@pytest.mark.slow
def test_sigkill_in_the_middle_of_chains_and_groups_neither_loses_nor_doubles_a_handoff(
    redis_server: RedisServer, redis_url: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_url)
    config = write_config(
        tmp_path / "worker.toml",
        redis_url,
        {"queue": "wf/a", "max_demand": 10, "processor": {"stages": 4}},
        imports=["tests.integration.workflow_workers"],
        orphan_timeout=1500,
    )
    config.write_text(
        config.read_text() + '[pipelines.b]\nqueue = "wf/b"\nmax_demand = 10\nprocessor = { stages = 4 }\n'
    )
    with Flume(redis_url, "t") as flume:
        chains = [
            flume.chain(
                [
                    ("wf/a", "wf.slow", [f"c{i}.1", SLEEP_S]),
                    ("wf/b", "wf.slow", [f"c{i}.2", SLEEP_S]),
                    ("wf/a", "wf.slow", [f"c{i}.3", SLEEP_S]),
                    ("wf/sink", "wf.slow", [f"c{i}.end", 0]),
                ]
            )
            for i in range(CHAINS)
        ]
        groups = [
            flume.group(
                [(QUEUES[m % 2], "wf.slow", [f"g{i}.{m}", SLEEP_S]) for m in range(MEMBERS)],
                then=("wf/sink", "wf.gather", [f"g{i}"]),
            )
            for i in range(GROUPS)
        ]
        workers = [WorkerProcess(config, redis_url, name=f"w{i}") for i in range(2)]
        try:
            total = CHAINS * 3 + GROUPS * MEMBERS
            for kill in range(KILLS):
                threshold = total * (kill + 1) // (KILLS + 2)
                wait_until(lambda at=threshold: sum(runs(client).values()) >= at, 120, f"{threshold} runs")
                victim = workers[kill % 2]
                # The victim must hold jobs when it dies, or the kill proves nothing.
                wait_until(
                    lambda pid=victim.pid: _inflight_of(client, pid) > 0, 60, "the victim to hold jobs"
                )
                victim.kill()
                workers[kill % 2] = WorkerProcess(config, redis_url, name=f"w{kill}-respawn")
            wait_until(
                lambda: client.llen("{t:wf}/sink:queue") >= CHAINS + GROUPS and _drained(flume),
                180,
                "every chain and group to hand off to the sink, and the killed workers' jobs to come back",
            )
        finally:
            for worker in workers:
                worker.kill()
        sink = [codec.decode(p) for p in client.lrange("{t:wf}/sink:queue", 0, -1)]
    by_id = {job.id: job for job in sink}
    assert len(by_id) == len(sink) == CHAINS + GROUPS, "a hand-off was doubled"
    for i, chain in enumerate(chains):
        assert by_id[chain.last].args == [f"c{i}.end", 0, 3]
    for i, group in enumerate(groups):
        tag, outcomes = by_id[group.then].args
        assert tag == f"g{i}"
        assert [o["id"] for o in outcomes] == group.members
        assert all(o["ok"] and o["result"] == 1 for o in outcomes)
    # Every group is gone once its callback is enqueued; every step ran at least once.
    assert not list(client.scan_iter(match="*:group:*"))
    ran = runs(client)
    assert all(ran.get(f"c{i}.{s}", 0) >= 1 for i in range(CHAINS) for s in (1, 2, 3))
    assert all(ran.get(f"g{i}.{m}", 0) >= 1 for i in range(GROUPS) for m in range(MEMBERS))
