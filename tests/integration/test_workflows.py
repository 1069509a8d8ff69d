"""Workflows against real worker processes and a private Redis: chains hand each result to the next step,
a dead step stops its chain, a group's callback learns every member's outcome, and a pipeline built in code
hops its results to the next queue durably."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from flume_rx import ConfigError, Flume, JobCancelled, JobFailed
from flume_rx.store import Keys
from tests.faults.harness import WorkerProcess, runs, wait_until, write_config

NS = "t"


@pytest.fixture
def workers(redis_url: str, tmp_path: Path) -> Iterator[WorkerProcess]:
    config = write_config(
        tmp_path / "worker.toml",
        redis_url,
        {"queue": "wf/a", "retry": {"max_retries": 0}},
        imports=["tests.integration.workflow_workers"],
    )
    # A second pipeline on wf/b (same group, so one cluster slot), in the same process.
    config.write_text(
        config.read_text()
        + '[pipelines.b]\nqueue = "wf/b"\nretry = { max_retries = 0 }\nprocessor = { stages = 4 }\n'
    )
    process = WorkerProcess(config, redis_url)
    yield process
    assert process.terminate() == 0, process.log()


@pytest.fixture
def flume(redis_url: str) -> Iterator[Flume]:
    with Flume(redis_url, NS) as client:
        yield client


def test_a_chain_hands_each_result_to_the_next_step(workers: WorkerProcess, flume: Flume) -> None:
    chain = flume.chain(
        [("wf/a", "wf.count", ["s1"]), ("wf/b", "wf.count", ["s2"]), ("wf/a", "wf.count", ["s3"])]
    )
    assert len(chain.ids) == 3
    assert flume.result(chain.last, chain.last_queue, timeout=60) == 3
    # Each step ran once, and each step's own result is kept too.
    assert flume.result(chain.ids[0], "wf/a", timeout=5) == 1
    assert flume.result(chain.ids[1], "wf/b", timeout=5) == 2
    assert runs(redis.Redis.from_url(flume.redis_url)) == {"s1": 1, "s2": 1, "s3": 1}


def test_a_dead_step_stops_the_chain_and_says_so(workers: WorkerProcess, flume: Flume) -> None:
    chain = flume.chain(
        [("wf/a", "wf.count", ["s1"]), ("wf/b", "wf.fail", ["broken"]), ("wf/a", "wf.count", ["never"])]
    )
    with pytest.raises(JobFailed, match="no such photo"):
        flume.result(chain.ids[1], "wf/b", timeout=60)
    info = flume.job(chain.ids[1], "wf/b")
    assert info.state == "dead"
    # The step after it was never enqueued: it is recorded as cancelled, naming where the chain stopped.
    with pytest.raises(JobCancelled):
        flume.result(chain.last, chain.last_queue, timeout=60)
    stopped = flume.job(chain.ids[2], "wf/a")
    assert stopped.state == "cancelled" and stopped.error is not None
    assert stopped.error.kind == "ChainStopped" and "no such photo" in stopped.error.message
    assert "never" not in runs(redis.Redis.from_url(flume.redis_url))
    assert flume.stats(["wf/a"])["wf/a"]["queued"] == 0


def test_a_group_callback_receives_every_outcome_once(workers: WorkerProcess, flume: Flume) -> None:
    group = flume.group(
        [("wf/a", "wf.count", ["m0"]), ("wf/b", "wf.fail", ["m1"]), ("wf/a", "wf.count", ["m2", 41])],
        then=("wf/b", "wf.gather", ["album"]),
    )
    outcomes = flume.result(group.then, "wf/b", timeout=60)
    assert outcomes == [
        {"id": group.members[0], "ok": True, "result": 1, "error": None},
        {"id": group.members[1], "ok": False, "result": None, "error": "LookupError: no such photo 'm1'"},
        {"id": group.members[2], "ok": True, "result": 42, "error": None},
    ]
    client = redis.Redis.from_url(flume.redis_url)
    assert runs(client)["gather:album"] == 1
    # The group's record is gone once its callback is enqueued.
    assert not list(client.scan_iter(match="*:group:*"))


def test_a_group_of_one_queue_and_a_malformed_step_is_refused(flume: Flume) -> None:
    with pytest.raises(ConfigError, match="at least one member"):
        flume.group([], then=("wf/b", "wf.gather", ["x"]))
    with pytest.raises(ConfigError, match="step must be"):
        flume.chain([("wf/a",)])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="at least one step"):
        flume.chain([])


def test_to_queue_hops_each_result_to_the_next_queue(
    flume: Flume, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLUME_TEST_REDIS_URL", redis_url)
    import tests.integration.workflow_workers  # noqa: F401  (registers the workers in this process)

    flume.bulk_enqueue("wf/src", [("wf.count", ["h", n]) for n in range(5)])
    pipeline = flume.source("wf/src").pipe(flume.process(), flume.to_queue("wf/next", "wf.square"))
    asyncio.run(flume.run(pipeline, burst=True, handle_signals=False))
    hopped = flume.peek("wf/next", limit=10)
    assert sorted(job.args[0] for job in hopped) == [1, 2, 3, 4, 5]
    assert {job.worker for job in hopped} == {"wf.square"}
    squares = flume.source("wf/next").pipe(flume.process())
    asyncio.run(flume.run(squares, burst=True, handle_signals=False))
    assert {k for k in runs(redis.Redis.from_url(redis_url)) if k.startswith("square:")} == {
        f"square:{n}" for n in range(1, 6)
    }


def test_worker_handles_give_chain_steps(
    flume: Flume, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLUME_TEST_REDIS_URL", redis_url)
    from tests.integration.workflow_workers import count

    chain = flume.chain([count.step("h1", queue="wf/a"), count.step("h2", queue="wf/a")])
    with pytest.raises(ConfigError, match="has no queue"):
        count.step("h3")
    pipeline = flume.source("wf/a").pipe(flume.process())
    asyncio.run(flume.run(pipeline, burst=True, handle_signals=False))
    assert flume.result(chain.last, chain.last_queue, timeout=30) == 2


def test_an_aborted_member_counts_as_failed_and_the_callback_still_runs(
    workers: WorkerProcess, flume: Flume
) -> None:
    group = flume.group(
        [("wf/a", "wf.count", ["m0"]), ("wf/a", "wf.wait", ["m1"])], then=("wf/b", "wf.gather", ["aborted"])
    )
    waiting = group.members[1]
    wait_until(lambda: flume.job(waiting, "wf/a").state == "running", 30, "the member to start")
    assert flume.cancel(waiting, "wf/a").state == "running"  # the abort is asked; the worker stops it
    outcomes = flume.result(group.then, group.then_queue, timeout=60)
    assert [o["ok"] for o in outcomes] == [True, False]
    assert outcomes[1]["error"].startswith("Aborted")


def test_an_aborted_chain_step_stops_its_chain(workers: WorkerProcess, flume: Flume) -> None:
    chain = flume.chain([("wf/a", "wf.wait", ["c-abort"]), ("wf/b", "wf.count", ["after-abort"])])
    wait_until(lambda: flume.job(chain.ids[0], "wf/a").state == "running", 30, "the first step to start")
    assert flume.job(chain.ids[1], "wf/b").state == "waiting"
    assert flume.cancel(chain.ids[0], "wf/a").state == "running"  # the abort is asked; the worker stops it
    # The abort's settle records the later step as stopped, so its waiter wakes at once.
    with pytest.raises(JobCancelled):
        flume.result(chain.last, chain.last_queue, timeout=60)
    stopped = flume.job(chain.ids[1], "wf/b")
    assert stopped.state == "cancelled" and stopped.error is not None and stopped.error.kind == "ChainStopped"
    assert "was aborted" in stopped.error.message
    assert "after-abort" not in runs(redis.Redis.from_url(flume.redis_url))


def test_a_member_whose_settle_redis_refuses_still_completes_its_group(
    flume: Flume, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key of the wrong type (bad data) where a member's result goes. Before: the settle script failed half-way,
    after taking the member out of the in-flight list, so it was neither counted nor dead, and the group's
    callback never ran."""
    monkeypatch.setenv("FLUME_TEST_REDIS_URL", redis_url)
    import tests.integration.workflow_workers  # noqa: F401  (registers the workers in this process)

    members = [("wf/c", "wf.count", ["m0"]), ("wf/c", "wf.count", ["m1"])]
    group = flume.group(members, then=("wf/b", "wf.gather", ["g"]))
    client = redis.Redis.from_url(redis_url)
    try:
        client.set(Keys(NS).of("wf/c").record(group.members[1]), "not a hash")
        asyncio.run(flume.run(flume.source("wf/c").pipe(flume.process()), burst=True, handle_signals=False))
        (callback,) = flume.peek("wf/b", limit=10)
        outcomes = callback.args[-1]
        assert [o["ok"] for o in outcomes] == [True, False]
        assert "SettleError" in outcomes[1]["error"] and "holds a string, not a hash" in outcomes[1]["error"]
        stats = flume.stats(["wf/c"])["wf/c"]
        assert (stats["processed"], stats["dead"], stats["in_flight"]) == (1, 1, 0)
    finally:
        client.close()
