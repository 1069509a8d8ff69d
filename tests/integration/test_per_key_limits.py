"""Per-key rate limits: one window per key, all waiting keys in one Redis call, quiet keys expire."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
import reactivex
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from reactivex.scheduler.eventloop import AsyncIOScheduler

from flume_rx import Flume, from_args, throttle_by_key, worker
from flume_rx import operators as fo
from flume_rx.engine.keyed import key_of
from flume_rx.model import config as config_module
from flume_rx.model.errors import ConfigError
from flume_rx.model.registry import unregister
from flume_rx.operators import Demand, InProcessKeyedWindow
from flume_rx.store import RedisStore
from flume_rx.store.keys import Keys
from flume_rx.surfaces.runtime import WorkerRuntime

QUEUE = "perkey"


def tenant_of(tenant: str, n: int) -> str:
    """The key function the configs below name: a job's tenant."""
    return tenant


# ---- the Lua windows ------------------------------------------------------------------------------------


def test_each_key_has_its_own_window_in_one_call(redis_url: str) -> None:
    async def main() -> tuple[list[Any], list[Any], int]:
        async with RedisStore.from_url(redis_url, "t") as store:
            wants = [("a", 5, 1), ("b", 5, 1), ("c", 1, 1)]
            first = await store.take_tokens_multi("lim", wants, allowed=2, period_ms=60_000, hold_ms=20)
            second = await store.take_tokens_multi("lim", wants[:2], allowed=2, period_ms=60_000, hold_ms=20)
            ttl = int(await store.client.pttl(store.keys.keyed_rate("lim", "a")[0]))
            return first, second, ttl

    first, second, ttl = asyncio.run(main())
    assert [(tokens, delay) for tokens, delay, _ in first] == [(2, 0), (2, 0), (1, 0)]
    # a and b spent their window: the next grant is a reservation one period (+ hold) later.
    assert all(tokens >= 1 and 59_000_000 < delay <= 60_100_000 for tokens, delay, _ in second)
    assert 0 < ttl <= 61_100 + 60_000


def test_quiet_keys_expire(redis_url: str) -> None:
    async def main() -> None:
        async with RedisStore.from_url(redis_url, "t") as store:
            await store.take_tokens_multi("lim", [("quiet", 1, 1)], allowed=5, period_ms=50, hold_ms=0)

    asyncio.run(main())
    client = redis.Redis.from_url(redis_url)
    assert client.exists(*Keys("t").keyed_rate("lim", "quiet")) == 2
    deadline = time.monotonic() + 5
    while client.exists(Keys("t").keyed_rate("lim", "quiet")[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.exists(*Keys("t").keyed_rate("lim", "quiet")) == 0


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(1, 4)), min_size=5, max_size=40))
def test_concurrent_takers_never_exceed_allowed_per_key(
    redis_server: Any, asks: list[tuple[str, int]]
) -> None:
    allowed, period_ms, hold_ms = 4, 40, 5
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()

    async def main() -> list[tuple[str, int, int]]:
        async with RedisStore.from_url(redis_server.url, "t") as store:

            async def one(batch: list[tuple[str, int]]) -> list[tuple[str, int, int]]:
                wants = [(key, n, 1) for key, n in batch]
                replies = await store.take_tokens_multi(
                    "prop", wants, allowed=allowed, period_ms=period_ms, hold_ms=hold_ms
                )
                return [(key, tokens, g) for (key, _), (tokens, _, g) in zip(batch, replies, strict=True)]

            # Several takers at once, each asking for a few keys (a key at most once per call).
            batches = [dict(asks[i : i + 3]) for i in range(0, len(asks), 3)]
            results = await asyncio.gather(*(one(list(b.items())) for b in batches))
            return [grant for result in results for grant in result]

    grants: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for key, tokens, g in asyncio.run(main()):
        grants[key].append((g, tokens))
    span_us = (period_ms + hold_ms) * 1000
    for key_grants in grants.values():
        key_grants.sort()
        for g, _ in key_grants:
            # Every grant counts until g + hold + period, so none that overlap may sum over allowed.
            assert sum(t for other, t in key_grants if g <= other < g + span_us) <= allowed


# ---- the operator ---------------------------------------------------------------------------------------


def test_a_waiting_key_does_not_hold_up_the_others() -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        window = InProcessKeyedWindow(2, 0.2, 0.05, clock=loop.time)
        items = ["a1", "a2", "a3", "a4", "b1", "a5", "c1"]
        seen: list[str] = []
        done = asyncio.Event()
        first_letter: Any = lambda item: item[0]  # noqa: E731
        reactivex.from_iterable(items).pipe(throttle_by_key(window, key=first_letter)).subscribe(
            seen.append, lambda e: done.set(), done.set
        )
        await asyncio.wait_for(done.wait(), 10)
        return seen

    seen = asyncio.run(main())
    assert sorted(seen) == sorted(["a1", "a2", "a3", "a4", "a5", "b1", "c1"])
    assert [s for s in seen if s[0] == "a"] == ["a1", "a2", "a3", "a4", "a5"]
    # a3 must wait a period for a's window; b1 and c1 have their own and go first.
    assert seen.index("b1") < seen.index("a3") and seen.index("c1") < seen.index("a3")


def test_no_tokens_are_taken_for_items_downstream_withdrew() -> None:
    class Counting(InProcessKeyedWindow):
        calls = 0

        async def take_many(self, wants: Any) -> list[Any]:
            Counting.calls += 1
            return await super().take_many(wants)

    async def main() -> list[list[str]]:
        loop = asyncio.get_running_loop()
        window = Counting(1, 0.05, 0.01, clock=loop.time)
        batches: list[list[str]] = []
        first_letter: Any = lambda item: item[0]  # noqa: E731
        # One batch of 3 is asked for; a's window lets one item go, the batch leaves alone on its timer and
        # withdraws the other two requests. Grants for a2.. would lapse unused, each spending a's window.
        graph = reactivex.from_iterable(["a1", "a2", "a3", "a4"]).pipe(
            throttle_by_key(window, key=first_letter),
            fo.buffer_with_time_or_count(0.01, 3, scheduler=AsyncIOScheduler(loop)),
        )
        graph.subscribe_with_demand(reactivex.Observer(batches.append), Demand(1))
        async with asyncio.timeout(30):
            while not batches:  # the batch leaves on its timer, however late a busy machine runs it
                await asyncio.sleep(0.01)
        # Not a wait for anything: a few more of a's periods, in which a throttle that kept asking for the
        # withdrawn requests would call the window again.
        await asyncio.sleep(4 * 0.05)
        return batches

    assert asyncio.run(main()) == [["a1"]]
    assert Counting.calls <= 2  # the first grant, and at most one asked before the withdrawal


# ---- end to end -----------------------------------------------------------------------------------------


def _drain_keyed(redis_url: str, processor: dict[str, Any], limiter: dict[str, Any], **pipeline: Any) -> None:
    """Run a pipeline on QUEUE in burst mode, limited per tenant (``key_from`` = :func:`tenant_of`)."""
    rate_limiter = {"key": "tenants", "key_from": f"{__name__}:tenant_of", **limiter}
    table = {
        "queue": QUEUE,
        "max_demand": 20,
        "processor": processor,
        **pipeline,
        "rate_limiter": rate_limiter,
    }
    config = config_module.parse({"redis_url": redis_url, "namespace": "t", "pipelines": {"p": table}})

    async def main() -> None:
        await asyncio.wait_for(WorkerRuntime(config, burst=True).run(), 60)

    asyncio.run(main())


@pytest.fixture
def starts() -> Iterator[list[tuple[str, float]]]:
    seen: list[tuple[str, float]] = []
    lock = threading.Lock()

    @worker("KJob")
    def job(tenant: str, n: int) -> None:
        with lock:
            seen.append((tenant, time.time()))

    yield seen
    unregister("KJob")


def test_the_runtime_limits_each_tenant_on_its_own(
    redis_url: str, starts: list[tuple[str, float]], grants: list[tuple[str, int, int, float]]
) -> None:
    allowed, period_s = 3, 0.5
    with Flume(redis_url, "t") as flume:
        flume.bulk_enqueue(QUEUE, [("KJob", ["hot", i]) for i in range(9)] + [("KJob", ["cold", 0])])
    _drain_keyed(redis_url, {"stages": 10}, {"allowed": allowed, "period": period_s * 1000})
    hot = [at for tenant, at in starts if tenant == "hot"]
    assert len(hot) == 9 and [t for t, _ in starts].count("cold") == 1
    # The cold tenant does not queue behind the hot one's window: it starts before hot's fourth job.
    assert [t for t, _ in starts].index("cold") <= allowed
    # At most `allowed` hot hand-offs in any period, as hot's window counted them.
    assert most_tokens_counted_at_once(grants, "hot", period_s) <= allowed
    assert sum(tokens for key, tokens, _, _ in grants if key == "hot") >= 9


@pytest.mark.parametrize(
    ("limiter", "message"),
    [
        ({"allowed": 1, "key_from": "nocolon"}, "key_from must name a function"),
        ({"allowed": 1, "key_from": "m:f", "adaptive": True}, "with adaptive, which sets one rate shared"),
        (
            {"key_from": "m:f", "from_ses": 0.9},
            "with from_ses, which sets one rate shared .* not a rate per key",
        ),
    ],
)
def test_bad_key_from_configs_are_named(limiter: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_module.parse({"pipelines": {"p": {"rate_limiter": limiter}}})


# ---- starts stamped by Redis's clock, grants as the windows recorded them --------------------------------


@pytest.fixture
def stamped(redis_url: str) -> Iterator[list[tuple[str, int]]]:
    """Each job's (tenant, start in Redis TIME microseconds), and the size of each batch in ``sizes``."""
    seen: list[tuple[str, int]] = []
    lock = threading.Lock()
    client = redis.Redis.from_url(redis_url)

    def now_us() -> int:
        seconds, micros = client.time()
        return int(seconds) * 1_000_000 + int(micros)

    @worker("KStamp")
    def one(tenant: str, n: int) -> None:
        at = now_us()
        with lock:
            seen.append((tenant, at))

    @worker("KStampBatch", batch=True)
    def batch(items: list[list[Any]]) -> None:
        at = now_us()
        with lock:
            seen.extend((tenant, at) for tenant, _ in items)
            BATCH_SIZES.append(len(items))

    yield seen
    unregister("KStamp")
    unregister("KStampBatch")
    BATCH_SIZES.clear()
    client.close()


BATCH_SIZES: list[int] = []


@pytest.fixture
def grants(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int, float]]:
    """Every grant of the per-key windows: (key, tokens, start in Redis microseconds, hold_ms counted)."""
    recorded: list[tuple[str, int, int, float]] = []
    take = RedisStore.take_tokens_multi

    async def spy(self: RedisStore, key: str, wants: Any, **kwargs: Any) -> list[tuple[int, int, int]]:
        replies = await take(self, key, wants, **kwargs)
        for (sub, _, _), (tokens, _, start_us) in zip(wants, replies, strict=True):
            recorded.append((sub, tokens, start_us, kwargs["hold_ms"]))
        return replies

    monkeypatch.setattr(RedisStore, "take_tokens_multi", spy)
    return recorded


def most_tokens_counted_at_once(grants: list[tuple[str, int, int, float]], key: str, period_s: float) -> int:
    """The most tokens ``key``'s window held counted at once, from the grants it recorded.

    A grant starting at ``g`` counts until ``g + hold + period`` (hold includes a batcher's timeout), and grants
    go out in order of start, so at each grant this sums every grant of the key that started no later and
    still counted. Jobs start within their grant's hold, so this bounds the starts in any sliding period.
    It is computed from Redis's clock as the window saw it, so a busy machine cannot change it: only the
    moment a worker's first line runs after its hand-off can lag (``benchmarks/per_key_limits.py`` measures
    that lag; a test cannot assert on it).
    """
    period_us = period_s * 1_000_000
    mine = [(start, tokens, hold_ms * 1000) for k, tokens, start, hold_ms in grants if k == key and tokens]
    return max(
        (sum(t for s, t, hold_us in mine if s <= g and s + hold_us + period_us > g) for g, _, _ in mine),
        default=0,
    )


def _by_tenant(stamped: list[tuple[str, int]]) -> dict[str, list[int]]:
    starts: dict[str, list[int]] = defaultdict(list)
    for tenant, at in stamped:
        starts[tenant].append(at)
    return starts


def test_key_from_with_a_batcher_limits_each_tenant_and_still_batches(
    redis_url: str, stamped: list[tuple[str, int]], grants: list[tuple[str, int, int, float]]
) -> None:
    # A config that was refused before: per-key tokens are taken per job, before the batcher.
    allowed, period_s, hold_ms, timeout_ms = 3, 0.4, 30, 60
    with Flume(redis_url, "t") as flume:
        flume.bulk_enqueue(
            QUEUE,
            [("KStampBatch", ["hot", i]) for i in range(12)]
            + [("KStampBatch", ["warm", i]) for i in range(6)]
            + [("KStampBatch", ["cold", 0])],
        )
    _drain_keyed(
        redis_url,
        {"stages": 2},
        {"allowed": allowed, "period": period_s * 1000, "hold": hold_ms},
        batcher={"size": 4, "timeout": timeout_ms},
    )
    starts = _by_tenant(stamped)
    assert {tenant: len(at) for tenant, at in starts.items()} == {"hot": 12, "warm": 6, "cold": 1}
    assert all(most_tokens_counted_at_once(grants, tenant, period_s) <= allowed for tenant in starts)
    assert max(BATCH_SIZES) > 1  # jobs released together still go out in batches
    # The windows count each grant for the batcher's timeout too, so starts (not releases) stay exact.
    assert grants and {hold for *_, hold in grants} == {hold_ms + timeout_ms}
    for tenant, at in starts.items():
        assert sum(tokens for key, tokens, _, _ in grants if key == tenant) >= len(at)


# ---- in code ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("batched", [False, True], ids=["per-job", "batched"])
def test_a_fluent_keyed_throttle_limits_each_tenant_on_its_own(
    redis_url: str, stamped: list[tuple[str, int]], grants: list[tuple[str, int, int, float]], batched: bool
) -> None:
    allowed, period_s, timeout_s = 3, 0.4, 0.05
    worker_name = "KStampBatch" if batched else "KStamp"
    flume = Flume(redis_url, "t")
    flume.bulk_enqueue(QUEUE, [(worker_name, ["hot", i]) for i in range(9)] + [(worker_name, ["cold", 0])])
    per_tenant = flume.keyed_window(
        "tenants", allowed, period_s, hold_s=0.03, lag_s=timeout_s if batched else 0
    )
    batcher = [fo.buffer_with_time_or_count(timeout_s, 4)] if batched else []
    pipeline = flume.source(QUEUE, max_demand=20).pipe(
        throttle_by_key(per_tenant, key=from_args(tenant_of)),
        *batcher,
        flume.process(stages=2 if batched else 10),
    )
    asyncio.run(asyncio.wait_for(flume.run(pipeline, burst=True), 60))
    flume.close()

    starts = _by_tenant(stamped)
    assert {tenant: len(at) for tenant, at in starts.items()} == {"hot": 9, "cold": 1}
    assert all(most_tokens_counted_at_once(grants, tenant, period_s) <= allowed for tenant in starts)
    assert all(sum(t for k, t, _, _ in grants if k == tenant) >= len(at) for tenant, at in starts.items())
    # The cold tenant has its own window: it starts before hot's fourth job, which waits a period.
    order = sorted((at, tenant) for tenant, ats in starts.items() for at in ats)
    assert [t for _, t in order].index("cold") <= allowed
    # Tokens for every waiting tenant come in one call: far fewer calls than jobs.
    assert 1 <= per_tenant.calls < 10


def test_key_functions_can_read_the_job_args_or_the_delivery() -> None:
    from flume_rx.engine.source import Delivery
    from flume_rx.model.job import Job

    delivery = Delivery(Job("id", QUEUE, "KStamp", ["acme", 7]), b"", None)  # type: ignore[arg-type]
    assert from_args(tenant_of)(delivery) == "acme"
    assert key_of(f"{__name__}:tenant_of")(delivery) == "acme"
