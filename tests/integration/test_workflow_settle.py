"""The settle script's hand-offs against a private Redis: a hand-off happens only with the settlement that takes
its job out of the in-flight list, so a stale settlement (its job was recovered meanwhile and settled again by
another worker) hands nothing on, and a group's callback is enqueued once, by the member that completes it."""

from __future__ import annotations

import asyncio

from flume_rx import Flume
from flume_rx.engine.workflows import group_members, group_record
from flume_rx.model import codec
from flume_rx.model.job import Job
from flume_rx.store import Handoff, RedisStore, Settlement


def _payload(token: str) -> bytes:
    return codec.encode(Job(id=token, queue="wf/a", worker="W", args=[token]))


def test_a_stale_settlement_hands_nothing_on(redis_url: str) -> None:
    job, following = _payload("step1"), _payload("step2")

    async def main() -> int:
        async with RedisStore.from_url(redis_url, "t") as store:
            await store.enqueue("wf/a", [job])
            (fetched,) = await store.fetch("wf/a", "c1", 1, 0.0)
            settle = Settlement(fetched, "ack", handoffs=(Handoff("wf/b", following),))
            assert await store.settle("wf/a", "c1", [settle]) == 0
            # The same outcome again (a worker that settles a job already settled elsewhere): stale.
            assert await store.settle("wf/a", "c1", [settle]) == 1
            return len(await store.peek("wf/b", "queued", 10))

    assert asyncio.run(main()) == 1


def test_the_callback_is_enqueued_once_by_the_member_that_completes_the_group(redis_url: str) -> None:
    members, callback = group_members([("wf/a", "W", ["m0"]), ("wf/a", "W", ["m1"])], ("wf/t", "T", []), "g1")
    with Flume(redis_url, "t") as flume:
        flume._store.enqueue_workflow(
            [(m.queue, codec.encode(m)) for m in members], ("wf/t", "g1", group_record(callback, 2), 60_000)
        )

    def joined(member: int, ok: bool) -> Handoff:
        outcome = codec.encode_result({"member": member, "ok": ok})
        return Handoff("wf/t", group="g1", member=member, outcome=outcome)

    async def main() -> list[bytes]:  # the callback payloads enqueued
        async with RedisStore.from_url(redis_url, "t") as store:
            fetched = await store.fetch("wf/a", "c1", 2, 0.0)
            by_id = {codec.decode(p).id: p for p in fetched}
            first = Settlement(by_id[members[0].id], "ack", handoffs=(joined(0, True),))
            second = Settlement(by_id[members[1].id], "dead", handoffs=(joined(1, False),))
            await store.settle("wf/a", "c1", [first])
            assert await store.peek("wf/t", "queued", 10) == []  # one member still out
            await store.settle("wf/a", "c1", [second])
            # Both again, stale: nothing is recorded or enqueued twice.
            assert await store.settle("wf/a", "c1", [first, second]) == 2
            return [p for p, _ in await store.peek("wf/t", "queued", 10)]

    queued = asyncio.run(main())
    assert len(queued) == 1
    done = codec.decode(queued[0])
    assert done.id == callback.id
    assert done.args == [[{"member": 0, "ok": True}, {"member": 1, "ok": False}]]
