"""Multi-queue pipelines: weighted shares, strict priority, one fetch across queues, fairness under load."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from flume_rx import Flume, worker
from flume_rx.engine.priorities import WeightedShares
from flume_rx.model import config as config_module
from flume_rx.model.errors import ConfigError
from flume_rx.model.registry import unregister
from flume_rx.store import Keys
from flume_rx.surfaces.runtime import WorkerRuntime

URGENT, BULK = "mail/urgent", "mail/bulk"

# ---- the shares (no Redis) -------------------------------------------------------------------------


@given(
    st.lists(st.integers(1, 20), min_size=1, max_size=5),
    st.lists(st.integers(1, 50), min_size=1, max_size=60),
)
def test_quotas_sum_to_n_and_follow_the_weights_within_a_bounded_lag(
    weights: list[int], ns: list[int]
) -> None:
    shares = WeightedShares(weights)
    given_so_far = [0] * len(weights)
    total_weight = sum(weights)
    for n in ns:
        quotas = shares.quotas(n)
        assert sum(quotas) == n and min(quotas) >= 0
        given_so_far = [g + q for g, q in zip(given_so_far, quotas, strict=True)]
        served = sum(given_so_far)
        for i, weight in enumerate(weights):
            # Smooth weighted round robin never lets a queue fall more than one slot per queue behind.
            assert abs(given_so_far[i] - served * weight / total_weight) <= len(weights)


def test_strict_order_offers_everything_to_the_first_queue() -> None:
    assert WeightedShares([1, 5], "strict").quotas(7) == [7, 0]
    with pytest.raises(ValueError, match="weights"):
        WeightedShares([1, 0])


def test_grouped_queues_share_one_hash_tag() -> None:
    keys = Keys("t")
    assert keys.of(URGENT).queue == "{t:mail}/urgent:queue"
    assert keys.of(BULK).inflight("c") == "{t:mail}/bulk:inflight:c"
    assert keys.of("mail").queue == "{t:mail}:queue"


@pytest.mark.parametrize(
    ("queues", "message"),
    [
        ([{"name": "urgent", "weight": 10}, {"name": "bulk"}], "must share one group"),
        ([{"name": "a/x"}, {"name": "b/y"}], "must share one group"),
        ([{"name": "a/x"}, {"name": "a/x"}], "twice"),
        ([{"name": "a/x", "weight": 0}], "weight must be a positive integer"),
        ([], "non-empty list"),
        ([{"name": "a/x", "prio": 1}], "unknown config key pipelines.p.queues"),
    ],
)
def test_bad_queue_lists_are_named(queues: list[Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_module.parse({"pipelines": {"p": {"queues": queues}}})


def test_a_queue_list_sets_the_pipeline_queue_and_order() -> None:
    config = config_module.parse(
        {"pipelines": {"p": {"queues": [{"name": URGENT, "weight": 3}, {"name": BULK}], "order": "strict"}}}
    )
    (pipeline,) = config.pipelines
    assert pipeline.queue == URGENT and pipeline.all_queues == (URGENT, BULK) and pipeline.order == "strict"
    assert [q.weight for q in pipeline.queues] == [3, 1]


# ---- on Redis --------------------------------------------------------------------------------------


@pytest.fixture
def starts() -> Iterator[list[str]]:
    seen: list[str] = []
    lock = threading.Lock()

    @worker("PJob")
    def job(kind: str) -> None:
        with lock:
            seen.append(kind)

    yield seen
    unregister("PJob")


def _drain(redis_url: str, **pipeline: Any) -> WorkerRuntime:
    table: dict[str, Any] = {"queues": [{"name": URGENT, "weight": 3}, {"name": BULK, "weight": 1}]}
    table.update(pipeline)
    config = config_module.parse({"redis_url": redis_url, "namespace": "t", "pipelines": {"mail": table}})
    runtime = WorkerRuntime(config, burst=True)

    async def main() -> None:
        await asyncio.wait_for(runtime.run(), 60)

    asyncio.run(main())
    return runtime


def _fill(redis_url: str, urgent: int, bulk: int) -> None:
    with Flume(redis_url, "t") as flume:
        if urgent:
            flume.bulk_enqueue(URGENT, [("PJob", ["urgent"])] * urgent)
        if bulk:
            flume.bulk_enqueue(BULK, [("PJob", ["bulk"])] * bulk)


def test_weights_share_the_pipeline_while_both_queues_are_backlogged(
    redis_url: str, starts: list[str]
) -> None:
    _fill(redis_url, 600, 600)
    _drain(redis_url, max_demand=20, processor={"stages": 4})
    assert sorted(starts) == ["bulk"] * 600 + ["urgent"] * 600
    # In the first 400 starts both queues still had jobs: bulk's share is its weight's, 1 in 4.
    bulk_share = starts[:400].count("bulk") / 400
    assert 0.2 <= bulk_share <= 0.3
    # And bulk is never starved: every stretch of 40 starts holds some of its jobs.
    assert all("bulk" in starts[i : i + 40] for i in range(0, 400, 40))


def test_strict_order_drains_the_first_queue_first(redis_url: str, starts: list[str]) -> None:
    _fill(redis_url, 50, 50)
    _drain(redis_url, order="strict", max_demand=1, processor={"stages": 1})
    assert starts == ["urgent"] * 50 + ["bulk"] * 50


def test_an_empty_or_paused_queue_leaves_its_share_to_the_others(redis_url: str, starts: list[str]) -> None:
    _fill(redis_url, 0, 120)
    _drain(redis_url)
    assert starts == ["bulk"] * 120
    starts.clear()
    _fill(redis_url, 30, 30)
    with Flume(redis_url, "t") as flume:
        flume.pause(BULK)
        _drain(redis_url)
        assert starts == ["urgent"] * 30
        assert flume.stats([BULK])[BULK]["queued"] == 30
        flume.resume(BULK)


def test_one_call_fetches_each_quota_then_fills_from_the_queues_in_order(redis_url: str) -> None:
    from flume_rx.store import RedisStore

    _fill(redis_url, 10, 3)
    client = redis.Redis.from_url(redis_url)

    async def main() -> list[list[tuple[str, bytes]]]:
        async with RedisStore.from_url(redis_url, "t") as store:
            await store.fetch_weighted(["mail/empty"], "c0", 1, [1])  # loads the script
            client.config_resetstat()
            first = await store.fetch_weighted([URGENT, BULK], "c1", 6, [2, 4])
            stats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
            assert stats["cmdstat_evalsha"]["calls"] == 1  # both queues, one round trip
            second = await store.fetch_weighted([URGENT, BULK], "c1", 6, [0, 6])  # bulk has run dry
            return [first, second]

    first, second = asyncio.run(main())
    # Grouped by queue: urgent's quota of 2 plus the 1 bulk could not fill, then bulk's 3.
    assert [q for q, _ in first] == [URGENT] * 3 + [BULK] * 3
    assert [q for q, _ in second] == [URGENT] * 6
    keys = Keys("t")
    assert client.llen(keys.of(URGENT).inflight("c1")) == 9 and client.llen(keys.of(BULK).inflight("c1")) == 3


# ---- pipelines in code -----------------------------------------------------------------------------


def _drain_fluent(redis_url: str, queues: Any, *, order: str = "weighted", **limits: int) -> list[Any]:
    """Runs ``flume.source(queues, ...)`` in burst mode; returns the telemetry events of the run."""
    flume = Flume(redis_url, "t")
    events: list[Any] = []
    flume.telemetry.attach("*", events.append)
    pipeline = flume.source(queues, order=order, max_demand=limits.get("max_demand", 20)).pipe(
        flume.process(stages=limits.get("stages", 4))
    )

    async def main() -> None:
        await asyncio.wait_for(flume.run(pipeline, burst=True), 60)

    asyncio.run(main())
    flume.close()
    return events


def test_a_fluent_source_shares_several_queues_by_weight(redis_url: str, starts: list[str]) -> None:
    _fill(redis_url, 600, 600)
    events = _drain_fluent(redis_url, [(URGENT, 3), (BULK, 1)])
    assert sorted(starts) == ["bulk"] * 600 + ["urgent"] * 600
    bulk_share = starts[:400].count("bulk") / 400
    assert 0.2 <= bulk_share <= 0.3
    assert all("bulk" in starts[i : i + 40] for i in range(0, 400, 40))
    # The runtime serves both queues: heartbeats, promotion, recovery and hand-back cover each of them.
    (joined,) = [e for e in events if e.name == "consumer.joined"]
    assert joined.fields["queues"] == [URGENT, BULK]
    with Flume(redis_url, "t") as flume:
        stats = flume.stats([URGENT, BULK])
    assert stats[URGENT]["processed"] == stats[BULK]["processed"] == 600
    assert stats[URGENT]["in_flight"] == stats[BULK]["in_flight"] == 0


def test_a_fluent_source_in_strict_order_drains_the_first_queue_first(
    redis_url: str, starts: list[str]
) -> None:
    _fill(redis_url, 50, 50)
    _drain_fluent(redis_url, [URGENT, BULK], order="strict", max_demand=1, stages=1)
    assert starts == ["urgent"] * 50 + ["bulk"] * 50


def test_a_fluent_source_settles_each_job_on_its_own_queue(redis_url: str) -> None:
    failed_once: set[str] = set()

    @worker("PFlaky")
    def flaky(kind: str) -> None:
        if kind not in failed_once:
            failed_once.add(kind)
            raise RuntimeError("once")

    try:
        with Flume(redis_url, "t") as flume:
            flume.enqueue(URGENT, "PFlaky", ["u"])
            flume.enqueue(BULK, "PFlaky", ["b"])
        flume = Flume(redis_url, "t")
        retry = config_module.RetryConfig(max_retries=0)
        pipeline = flume.source([URGENT, BULK], retry=retry).pipe(flume.process(stages=2))
        asyncio.run(asyncio.wait_for(flume.run(pipeline, burst=True), 60))
        dead = {q: [j.args for j in flume.dead_list(q)] for q in (URGENT, BULK)}
        flume.close()
    finally:
        unregister("PFlaky")
    # Each job settled on the queue it came from, in one pipeline.
    assert dead == {URGENT: [["u"]], BULK: [["b"]]}


@pytest.mark.parametrize(
    ("queues", "order", "message"),
    [
        (["urgent", "bulk"], "weighted", "must share one group"),
        ([(URGENT, 0)], "weighted", "weight must be a positive integer"),
        ([URGENT, URGENT], "weighted", "twice"),
        ([], "weighted", "non-empty list"),
        ([(URGENT,)], "weighted", r"\(name, weight\) pairs"),
        ([URGENT, BULK], "fastest", 'order=...\\) must be "weighted" or "strict"'),
    ],
)
def test_bad_fluent_queue_lists_are_named(queues: Any, order: str, message: str, redis_url: str) -> None:
    with Flume(redis_url, "t") as flume, pytest.raises(ConfigError, match=message):
        flume.source(queues, order=order)
