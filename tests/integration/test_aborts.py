"""``Flume.cancel`` of a running job is recorded in Redis as well as told, so no timing loses it.

Before, the abort was only a PUBLISH: a worker whose listener had not subscribed yet (it subscribes after its
pipelines start), whose link was down, or which had fetched the job without having begun it yet, never learned
of it, and the job ran to its end. (The end-to-end case of a dead worker's job is in test_follow.py.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import reactivex
from reactivex.disposable import Disposable

from flume_rx.engine import source as source_module
from flume_rx.engine.source import Delivery, JobSource
from flume_rx.model import codec
from flume_rx.model import config as config_module
from flume_rx.model.job import Job
from flume_rx.model.telemetry import Telemetry
from flume_rx.operators import Demand
from flume_rx.store import RedisStore
from flume_rx.surfaces import runtime as runtime_module
from flume_rx.surfaces.runtime import WorkerRuntime, _Running

QUEUE = "jobs"
NS = "aborts"
KEEP_MS = 60_000


def _payload(job_id: str) -> bytes:
    return codec.encode(Job(id=job_id, queue=QUEUE, worker="W", args=[]))


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(30):
        while not condition():
            await asyncio.sleep(0.01)


async def _fetched(store: RedisStore, job_ids: list[str], source: JobSource) -> list[Delivery]:
    """Fetch ``job_ids`` into ``source`` as a pipeline would, without starting them."""
    await store.enqueue(QUEUE, [_payload(i) for i in job_ids])
    seen: list[Delivery] = []
    demand = Demand()
    source.flowable.subscribe_with_demand(reactivex.Observer(seen.append), demand)
    demand.request(len(job_ids))
    await _until(lambda: len(seen) == len(job_ids))
    return seen


def _source(store: RedisStore) -> JobSource:
    return JobSource(store, QUEUE, "c1", max_demand=10, telemetry=Telemetry(), burst_mode="ready")


def test_an_abort_asked_before_the_fetch_marks_the_job_when_it_comes(redis_url: str) -> None:
    async def main() -> None:
        async with RedisStore.from_url(redis_url, NS) as store:
            source = _source(store)
            assert source.abort_asked("asked", time.time() + 60) == []  # not held: kept
            assert source.abort_asked("lapsed", time.time() - 1) == []  # lapsed already: dropped
            deliveries = await _fetched(store, ["asked", "lapsed", "other"], source)
            assert {d.job.id: d.aborted for d in deliveries} == {
                "asked": True,
                "lapsed": False,
                "other": False,
            }
            # Held now: the ask returns it, for the caller to abort.
            (held,) = [d for d in deliveries if d.job.id == "other"]
            assert source.abort_asked("other", time.time() + 60) == [held]

    asyncio.run(main())


def test_the_aborts_a_source_keeps_are_bounded_and_the_oldest_go_first(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(source_module, "ABORTS_WAITING_MAX", 3)

    async def main() -> None:
        async with RedisStore.from_url(redis_url, NS) as store:
            source = _source(store)
            for job_id in ("a", "b", "c", "d"):
                source.abort_asked(job_id, time.time() + 60)
            source.abort_asked("b", time.time() + 60)  # asked again: now the newest
            source.abort_asked("e", time.time() + 60)
            deliveries = await _fetched(store, ["a", "b", "c", "d", "e"], source)
            assert sorted(d.job.id for d in deliveries if d.aborted) == ["b", "d", "e"]

    asyncio.run(main())


def test_an_abort_is_recorded_until_it_lapses(redis_url: str) -> None:
    async def main() -> None:
        async with RedisStore.from_url(redis_url, NS) as store:
            before = time.time()
            assert await store.abort("j1", KEEP_MS) == 0  # nobody listens
            assert await store.abort("j2", 1) == 0
            await asyncio.sleep(0.01)
            ((job_id, until_s),) = await store.aborts_asked()
            assert job_id == "j1" and before + 59 < until_s < time.time() + 61
            await store.abort("j3", KEEP_MS)  # each ask drops the lapsed ones
            assert await store.client.zcard(store.keys.aborts) == 2

    asyncio.run(main())


class _NoPubSub:
    """A Redis client as the worker sees Redis Cluster's: everything but pub/sub."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        if name == "pubsub":
            raise AttributeError(name)
        return getattr(self._client, name)


@pytest.mark.parametrize("pubsub", [True, False], ids=["subscribed", "polled"])
def test_a_worker_applies_the_aborts_asked_before_it_listened(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, pubsub: bool
) -> None:
    monkeypatch.setattr(runtime_module, "ABORTS_POLL_S", 0.05)
    config = config_module.parse(
        {"redis_url": redis_url, "namespace": NS, "pipelines": {"m": {"queue": QUEUE}}}
    )

    async def main() -> None:
        async with RedisStore.from_url(redis_url, NS) as store:
            source = _source(store)
            held, later = await _fetched(store, ["held", "later-ok"], source)
            await store.abort("held", KEEP_MS)  # asked while no listener is subscribed
            await store.abort("to-come", KEEP_MS)
            runtime = WorkerRuntime(config)
            told: list[str] = []
            abort = runtime_module.abort
            monkeypatch.setattr(
                runtime_module, "abort", lambda found: (told.extend(d.job.id for d in found), abort(found))
            )
            runtime.running.append(_Running(config.pipelines[0], source, Disposable(), asyncio.Event()))
            if not pubsub:
                monkeypatch.setattr(store, "client", _NoPubSub(store.client))
            listener = asyncio.create_task(runtime._abort_forever(store))
            try:
                await _until(lambda: held.aborted)
                assert not later.aborted
                if not pubsub:  # read again each poll, told once
                    await asyncio.sleep(0.2)
                    assert told.count("held") == 1
                (to_come,) = await _fetched(store, ["to-come"], _source(store))
                assert not to_come.aborted  # another source: only the listener's sources keep asks
                (to_come,) = await _fetched(store, ["to-come"], source)
                assert to_come.aborted
            finally:
                listener.cancel()
                await asyncio.gather(listener, return_exceptions=True)

    asyncio.run(main())
