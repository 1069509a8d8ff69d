"""Following a workflow's jobs: a chain step or a group's callback not yet enqueued reads ``waiting`` and
names what it waits on, a step whose chain stopped says where, ``Flume.workflow`` and ``flume-rx job`` show
every step or member with its state, a group callback's ``enqueued_at`` is when it was enqueued, and a group
whose outcomes are too large to hand on dead-letters its callback at once, saying why. Pipelines run in this
process, in burst mode, against a private Redis."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from flume_rx import Flume, JobCancelled, JobFailed, ResultTimeout
from flume_rx.model.config import RetryConfig
from flume_rx.store.keys import Keys
from tests.faults.harness import runs

NS = "t"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def flume(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flume]:
    monkeypatch.setenv("FLUME_TEST_REDIS_URL", redis_url)
    import tests.integration.workflow_workers  # noqa: F401  (registers the workers in this process)

    with Flume(redis_url, NS) as client:
        yield client


def _drain(flume: Flume, queue: str) -> None:
    """Run every job waiting on ``queue`` (and what they hand on to it) in this process, then stop."""
    pipeline = flume.source(queue, retry=RetryConfig(max_retries=0)).pipe(flume.process())
    asyncio.run(flume.run(pipeline, burst=True, handle_signals=False))


def test_a_chain_step_to_come_waits_on_the_one_before_it(flume: Flume) -> None:
    chain = flume.chain(
        [("wf/a", "wf.count", ["c1"]), ("wf/b", "wf.count", ["c2"]), ("wf/a", "wf.count", ["c3"])]
    )
    first, second, third = (flume.job(job_id) for job_id in chain.ids)
    assert (first.state, first.after) == ("queued", None)
    assert (second.state, second.queue, second.after) == ("waiting", "wf/b", chain.ids[0])
    assert (third.state, third.queue, third.after) == ("waiting", "wf/a", chain.ids[1])
    workflow = flume.workflow(chain.ids[1])
    assert workflow is not None and (workflow.kind, workflow.id) == ("chain", chain.ids[0])
    assert [(j.id, j.queue, j.worker) for j in workflow.jobs] == [
        (chain.ids[0], "wf/a", "wf.count"),
        (chain.ids[1], "wf/b", "wf.count"),
        (chain.ids[2], "wf/a", "wf.count"),
    ]
    assert [j.info.state for j in workflow.jobs if j.info] == ["queued", "waiting", "waiting"]
    # Without its queue, a wait for a step to come finds it (it once read unknown: ResultUnavailable).
    with pytest.raises(ResultTimeout):
        flume.result(chain.ids[2], timeout=0.2)

    _drain(flume, "wf/a")  # runs step 1: step 2 is queued now, step 3 still waits on it
    assert flume.job(chain.ids[0]).state == "done"  # wf.count keeps results
    assert flume.job(chain.ids[1]).state == "queued"
    assert (flume.job(chain.ids[2]).state, flume.job(chain.ids[2]).after) == ("waiting", chain.ids[1])
    _drain(flume, "wf/b")
    _drain(flume, "wf/a")
    assert flume.result(chain.last, chain.last_queue, timeout=10) == 3
    done = flume.workflow(chain.ids[0])
    assert done is not None and [j.info.state for j in done.jobs if j.info] == ["done", "done", "done"]


def test_a_step_after_a_cancelled_or_dead_one_says_its_chain_stopped(flume: Flume) -> None:
    cancelled = flume.chain([("wf/a", "wf.count", ["x1"]), ("wf/a", "wf.count", ["x2"])])
    assert flume.cancel(cancelled.ids[0]).state == "cancelled"
    after = flume.job(cancelled.ids[1])
    assert (after.state, after.after) == ("cancelled", cancelled.ids[0])
    # Recorded in the cancel's own step, so a waiter learns at once rather than at its timeout.
    assert after.error is not None and after.error.kind == "ChainStopped"
    assert f"step {cancelled.ids[0]} (wf.count on 'wf/a') was cancelled" in after.error.message
    with pytest.raises(JobCancelled):
        flume.result(cancelled.ids[1], "wf/a", timeout=5)

    failed = flume.chain([("wf/a", "wf.fail", ["f1"]), ("wf/a", "wf.count", ["f2"])])
    _drain(flume, "wf/a")
    stopped = flume.job(failed.ids[1])
    assert (stopped.state, stopped.after) == ("cancelled", failed.ids[0])
    assert stopped.error is not None and stopped.error.kind == "ChainStopped"
    workflow = flume.workflow(failed.ids[1])
    assert workflow is not None and [j.info.state for j in workflow.jobs if j.info] == ["dead", "cancelled"]
    assert "f2" not in runs(redis.Redis.from_url(flume.redis_url))


def test_a_group_callback_waits_on_its_members_and_is_enqueued_when_the_last_one_ends(flume: Flume) -> None:
    group = flume.group(
        [("wf/a", "wf.count", ["g0"]), ("wf/a", "wf.fail", ["g1"])], then=("wf/t", "wf.gather", ["album"])
    )
    callback = flume.job(group.then)
    assert (callback.state, callback.queue, callback.after) == ("waiting", "wf/t", group.id)
    for job_id in (group.then, group.members[1]):  # seen from the callback and from a member
        workflow = flume.workflow(job_id)
        assert workflow is not None and (workflow.kind, workflow.id, workflow.settled) == (
            "group",
            group.id,
            0,
        )
        assert [j.id for j in workflow.jobs] == group.members
        assert [j.info.state for j in workflow.jobs if j.info] == ["queued", "queued"]
        assert workflow.callback is not None and workflow.callback.id == group.then
        assert (
            workflow.callback.worker,
            workflow.callback.info.state if workflow.callback.info else None,
        ) == (
            "wf.gather",
            "waiting",
        )

    time.sleep(0.3)  # so the callback's enqueue is measurably later than the group's creation
    _drain(flume, "wf/a")
    (queued,) = flume.peek("wf/t")
    # Its enqueued_at is when the last member enqueued it (Redis's clock), not when the group was made.
    assert queued.id == group.then and queued.enqueued_at >= queued.created_at + 0.25
    assert flume.job(group.then).state == "queued"
    workflow = flume.workflow(group.then)
    assert workflow is not None and workflow.settled is None  # the group's record is gone: callback enqueued
    assert [j.info.state for j in workflow.jobs if j.info] == ["done", "dead"]


def test_a_group_too_large_to_hand_on_dead_letters_its_callback_and_says_why(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLUME_TEST_REDIS_URL", redis_url)
    import tests.integration.workflow_workers  # noqa: F401

    with Flume(redis_url, NS, max_payload_bytes=16_384) as flume:
        group = flume.group(
            [("wf/a", "wf.big", [f"b{n}", 6_000]) for n in range(3)], then=("wf/t", "wf.gather", ["big"])
        )
        _drain(flume, "wf/a")
        # Its waiters hear of it at once (no wait for a fetch that would dead-letter it unread).
        with pytest.raises(JobFailed, match=f"GroupTooLarge.*group {group.id}.*16384 bytes"):
            flume.result(group.then, "wf/t", timeout=10)
        assert flume.stats(["wf/t"])["wf/t"]["queued"] == 0
        (dead,) = flume.dead_list("wf/t")
        assert dead.id == group.then and dead.error is not None and dead.error.kind == "GroupTooLarge"
        assert flume.job(group.then).state == "dead"
        # Counted as every dead letter is (it was not).
        stats_key = Keys(NS).of("wf/t").stats
        assert redis.Redis.from_url(redis_url).hget(stats_key, "dead") == b"1"
        # A group whose outcomes fit is handed on as before.
        fits = flume.group([("wf/a", "wf.big", ["s0", 100])], then=("wf/t", "wf.gather", ["small"]))
        _drain(flume, "wf/a")
        assert [job.id for job in flume.peek("wf/t")] == [fits.then]
    assert "gather:big" not in runs(redis.Redis.from_url(redis_url))


def test_the_cli_shows_a_jobs_chain(flume: Flume, redis_url: str, tmp_path: Path) -> None:
    chain = flume.chain([("wf/a", "wf.count", ["k1"]), ("wf/b", "wf.count", ["k2"])])
    config = tmp_path / "flume.toml"
    config.write_text(f'redis_url = "{redis_url}"\nnamespace = "{NS}"\n')
    command = [sys.executable, "-m", "flume_rx", "--log-level", "error", "job", chain.ids[1]]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def cli(*extra: str) -> str:
        done = subprocess.run(
            [*command, *extra, "--config", str(config)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    plain = cli()
    assert f"{chain.ids[1]}  waiting  on 'wf/b'" in plain and f"waits on step {chain.ids[0]}" in plain
    assert "chain of 2 step(s)" in plain
    assert f"1.   {chain.ids[0]}  wf.count on 'wf/a'  queued" in plain
    assert f"2.   {chain.ids[1]}  wf.count on 'wf/b'  waiting  <- this job" in plain
    row = json.loads(cli("--json"))
    assert (row["state"], row["after"]) == ("waiting", chain.ids[0])
    assert [(j["id"], j["state"]) for j in row["workflow"]["jobs"]] == [
        (chain.ids[0], "queued"),
        (chain.ids[1], "waiting"),
    ]


def test_a_cancelled_member_still_completes_its_group(flume: Flume) -> None:
    group = flume.group(
        [("wf/a", "wf.count", ["k0"]), ("wf/a", "wf.count", ["k1"])], then=("wf/t", "wf.gather", ["kept"])
    )
    assert flume.cancel(group.members[1]).state == "cancelled"
    workflow = flume.workflow(group.then)
    assert workflow is not None and workflow.settled == 1  # the cancel recorded its outcome in the group
    _drain(flume, "wf/a")
    _drain(flume, "wf/t")
    assert flume.result(group.then, "wf/t", timeout=10) == [
        {"id": group.members[0], "ok": True, "result": 1, "error": None},
        {
            "id": group.members[1],
            "ok": False,
            "result": None,
            "error": "Cancelled: the job was taken off before it ran",
        },
    ]
    assert "k1" not in runs(redis.Redis.from_url(flume.redis_url))


def test_a_step_or_callback_to_come_is_cancelled_and_skipped_when_its_turn_comes(flume: Flume) -> None:
    chain = flume.chain(
        [("wf/a", "wf.count", ["t1"]), ("wf/a", "wf.count", ["t2"]), ("wf/a", "wf.count", ["t3"])]
    )
    assert flume.cancel(chain.ids[1]).state == "cancelled"
    stopped = flume.job(chain.ids[2])
    assert stopped.state == "cancelled" and stopped.error is not None
    assert (
        f"step {chain.ids[1]} (wf.count on 'wf/a') was cancelled before its turn came"
        in stopped.error.message
    )
    group = flume.group([("wf/a", "wf.count", ["t4"])], then=("wf/t", "wf.gather", ["skipped"]))
    assert flume.cancel(group.then).state == "cancelled"

    _drain(flume, "wf/a")
    ran = runs(redis.Redis.from_url(flume.redis_url))
    assert ran.get("t1") == 1 and ran.get("t4") == 1 and "t2" not in ran and "t3" not in ran
    assert flume.job(chain.ids[0]).state == "done"
    assert flume.stats(["wf/a", "wf/t"])["wf/t"]["queued"] == 0  # the callback was not enqueued
    for job_id, queue in ((chain.ids[1], "wf/a"), (chain.ids[2], "wf/a"), (group.then, "wf/t")):
        assert flume.job(job_id).state == "cancelled"
        with pytest.raises(JobCancelled):
            flume.result(job_id, queue, timeout=5)
    # A job once enqueued is no longer to come: cancelling a finished step changes nothing.
    assert flume.cancel(chain.ids[0]).state == "done"
