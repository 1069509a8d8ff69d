"""A workflow job's flow travels in its meta: it survives the codec, plain jobs carry none, and a malformed one
is named (so the job goes to the dead letters saying why, rather than crashing the settle)."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest

from flume_rx.engine.workflows import (
    FLOW,
    check_one_slot,
    flow_of,
    group_members,
    group_record,
    is_workflow_job,
    job_of,
    next_in_chain,
)
from flume_rx.model import codec
from flume_rx.model.errors import ConfigError, DecodeError
from flume_rx.model.job import Flow, Job, Step
from flume_rx.store import Keys


def test_a_chain_step_round_trips_through_the_codec_and_a_plain_job_stays_short() -> None:
    flow = Flow((Step("s2", "wf/b", "B", [1]), Step("s3", "wf/c", "C", [])))
    job = codec.decode(codec.encode(job_of(Step("s1", "wf/a", "A", ["x"]), flow)))
    assert flow_of(job) == flow and is_workflow_job(job)
    plain = codec.decode(codec.encode(Job("1", "q", "W", [1])))
    assert flow_of(plain) is None and not is_workflow_job(plain)
    assert len(msgpack.unpackb(codec.encode(Job("1", "q", "W", [1])))) == 10


def test_the_next_step_gets_the_result_appended_and_carries_the_rest() -> None:
    flow = Flow((Step("s2", "wf/b", "B", [1]), Step("s3", "wf/c", "C", [])))
    handoff = next_in_chain(job_of(Step("s1", "wf/a", "A", []), flow), {"size": 3}, 1 << 20)
    assert handoff is not None and handoff.queue == "wf/b"
    following = codec.decode(handoff.payload)
    assert (following.id, following.worker, following.args) == ("s2", "B", [1, {"size": 3}])
    assert flow_of(following) == Flow((Step("s3", "wf/c", "C", []),))
    last = next_in_chain(following, 4, 1 << 20)
    assert last is not None and flow_of(codec.decode(last.payload)) is None


@pytest.mark.parametrize(
    "bad", [[[["s", "q"]], "g", "t", 0], [[], "g", "t", "zero"], [[["s", "q", "w", "args"]], "", "", 0], "x"]
)
def test_a_malformed_flow_is_named(bad: object) -> None:
    with pytest.raises(DecodeError, match="flow"):
        flow_of(Job("1", "q", "W", [], meta={FLOW: bad}))


def test_the_group_record_completes_into_the_callback_job() -> None:
    members, callback = group_members([("wf/a", "A", [1]), ("wf/a", "A", [2])], ("wf/t", "T", ["tag"]), "g")
    assert [flow_of(m) for m in members] == [
        Flow((), "g", "wf/t", 0, callback.id),
        Flow((), "g", "wf/t", 1, callback.id),
    ]
    record = group_record(callback, 2, "g")
    outcomes = [codec.encode_result({"ok": True}), codec.encode_result({"ok": False})]
    # What the settle script does: head, every member's outcome in order, mid, the time it enqueues the
    # callback (enqueued_at), tail.
    enqueued_at = msgpack.packb(callback.created_at + 30.5)
    payload = record["head"] + b"".join(outcomes) + record["mid"] + enqueued_at + record["tail"]  # type: ignore[operator]
    job = codec.decode(payload)
    assert job == dataclasses.replace(
        callback, args=["tag", [{"ok": True}, {"ok": False}]], enqueued_at=callback.created_at + 30.5
    )
    # Too large to hand on, the callback is dead-lettered as this record, saying why.
    over = codec.decode(record["over"])  # type: ignore[arg-type]
    assert over.id == callback.id and over.error is not None and over.error.kind == "GroupTooLarge"
    assert "group g" in over.error.message and "max_payload_bytes" in over.error.message


def test_a_group_too_large_for_any_outcomes_is_refused_at_enqueue() -> None:
    members, callback = group_members([("wf/a", "A", [n]) for n in range(200)], ("wf/t", "T", []), "g7")
    with pytest.raises(ConfigError, match=r"group g7: the outcomes of its 200 members.* 4096 bytes"):
        group_record(callback, len(members), "g7", 4096)
    group_record(callback, len(members), "g7", 1 << 20)  # fits the default limit


def test_queues_of_different_groups_are_refused_for_one_slot() -> None:
    check_one_slot(Keys("t"), ["wf/a", "wf/b", "wf"], "chain")
    with pytest.raises(ConfigError, match="one group"):
        check_one_slot(Keys("t"), ["resize", "upload"], "chain")


def test_the_next_step_carries_the_trace_context_of_the_chain() -> None:
    trace = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    flow = Flow((Step("s2", "wf/b", "B", []),))
    first = job_of(Step("s1", "wf/a", "A", []), flow, {"trace": trace})
    handoff = next_in_chain(codec.decode(codec.encode(first)), 1, 1 << 20)
    assert handoff is not None
    following = codec.decode(handoff.payload)
    assert following.meta == {"trace": trace} and flow_of(following) is None
    members, callback = group_members([("wf/a", "A", [])], ("wf/t", "T", []), "g", {"trace": trace})
    assert members[0].meta is not None and members[0].meta["trace"] == trace
    assert callback.meta == {"trace": trace}
    record = group_record(callback, 1)
    at = msgpack.packb(callback.enqueued_at)
    completed = record["head"] + codec.encode_result({"ok": True}) + record["mid"] + at + record["tail"]  # type: ignore[operator]
    assert codec.decode(completed) == dataclasses.replace(callback, args=[[{"ok": True}]])


def test_the_test_mode_runs_chains_and_groups_without_redis() -> None:
    from flume_rx import worker
    from flume_rx.model.registry import unregister
    from flume_rx.testing import FlumeTest

    @worker("wf.test.add")
    def add(n: int, so_far: int = 0) -> int:
        return n + so_far

    @worker("wf.test.fail")
    def fail(n: int) -> None:
        raise LookupError(f"no {n}")

    @worker("wf.test.collect")
    def collect(tag: str, outcomes: list[dict[str, object]]) -> list[dict[str, object]]:
        return outcomes

    try:
        flume = FlumeTest()
        chain = flume.chain([("wf/a", "wf.test.add", [1]), ("wf/a", "wf.test.add", [10])])
        group = flume.group(
            [("wf/a", "wf.test.add", [2]), ("wf/a", "wf.test.fail", [3])],
            then=("wf/a", "wf.test.collect", ["t"]),
        )
        runs = {run.job.id: run for run in flume.drain(raise_errors=False)}
        assert runs[chain.last].result == 11
        assert runs[group.then].result == [
            {"id": group.members[0], "ok": True, "result": 2, "error": None},
            {"id": group.members[1], "ok": False, "result": None, "error": "LookupError: no 3"},
        ]
    finally:
        for name in ("wf.test.add", "wf.test.fail", "wf.test.collect"):
            unregister(name)
