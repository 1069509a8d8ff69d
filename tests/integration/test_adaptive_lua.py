"""take_tokens.lua and penalize.lua compute the adaptive rate with the formulas of operators/_adaptive.py:
Hypothesis drives both with the same state and compares the numbers."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flume_rx.operators import (
    AdaptiveTuning,
    InProcessWindow,
    Unused,
    accepted_per_period,
    ceiling_after_refusal,
    probed_rate,
)
from flume_rx.store import RedisStore, RedisTokenWindow

tunings = st.builds(
    AdaptiveTuning,
    margin=st.floats(0.005, 0.2),
    probe=st.floats(0.002, 0.2),
    most_cut=st.floats(0.1, 1.0),
    headroom=st.none() | st.floats(0.0, 1.0),
)


def _set_state(url: str, store: RedisStore, key: str, ceiling: float, ago_s: float) -> int:
    """Write an adaptive state as if a refusal ``ago_s`` before Redis's now set ``ceiling``; returns cut_at."""
    client = redis.Redis.from_url(url)
    try:
        seconds, micros = client.time()
        cut_at = seconds * 1_000_000 + micros - round(ago_s * 1_000_000)
        client.hset(store.keys.rate(key)[1], mapping={"ceiling": repr(ceiling), "cut_at": cut_at})
        return cut_at
    finally:
        client.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    allowed=st.integers(1, 5000),
    period_ms=st.sampled_from([50, 1000, 60_000]),
    ceiling=st.floats(1.0, 6000.0),
    ago_periods=st.floats(0.0, 20.0),
    tuning=tunings,
)
def test_take_tokens_probes_as_probed_rate_does(
    redis_url: str, allowed: int, period_ms: int, ceiling: float, ago_periods: float, tuning: AdaptiveTuning
) -> None:
    period_s = period_ms / 1000

    async def run() -> None:
        store = RedisStore.from_url(redis_url)
        try:
            key = uuid.uuid4().hex
            window = RedisTokenWindow(store, key, allowed, period_s, adaptive=True, tuning=tuning)
            cut_at = _set_state(redis_url, store, key, ceiling, ago_periods * period_s)
            reply = await window.take_reply(1, 1)  # an empty log and no pacing: the grant starts now
            elapsed_s = (reply.start_us - cut_at) / 1e6
            # The log held nothing before this grant: in use, only the token it asks for.
            expected = probed_rate(ceiling, elapsed_s, allowed, period_s, tuning, used=1.0)
            assert reply.effective_allowed == pytest.approx(expected, rel=1e-9)
        finally:
            await store.aclose()

    asyncio.run(run())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    allowed=st.integers(1, 500),
    before=st.integers(0, 500),
    want=st.integers(1, 1000),
    ceiling=st.floats(1.0, 600.0),
    ago_periods=st.floats(0.0, 0.5),
)
def test_the_usage_cap_counts_the_tokens_asked_for_as_probed_rate_is_told(
    redis_url: str, allowed: int, before: int, want: int, ceiling: float, ago_periods: float
) -> None:
    # A period of a minute: the tokens granted first are still counted when the second take is decided.
    period_s = 60.0
    tuning = AdaptiveTuning(headroom=0.1)

    async def run() -> None:
        store = RedisStore.from_url(redis_url)
        try:
            key = uuid.uuid4().hex
            window = RedisTokenWindow(store, key, allowed, period_s, adaptive=True, tuning=tuning)
            counted = 0
            if before:
                counted = (await window.take_reply(min(before, allowed), 1)).tokens
            cut_at = _set_state(redis_url, store, key, ceiling, ago_periods * period_s)
            reply = await window.take_reply(want, 1)
            elapsed_s = (reply.start_us - cut_at) / 1e6 if reply.delay_us == 0 else None
            used = float(counted + min(want, allowed))
            if elapsed_s is not None:
                expected = probed_rate(ceiling, elapsed_s, allowed, period_s, tuning, used=used)
                assert reply.effective_allowed == pytest.approx(expected, rel=1e-9)
            # Whatever the clock: never above the cap of what is in use, nor above allowed.
            assert reply.effective_allowed <= max(ceiling, used * 1.1, 1.0) * (1 + 1e-9)
            assert reply.effective_allowed <= allowed
        finally:
            await store.aclose()

    asyncio.run(run())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    allowed=st.integers(1, 500),
    grants=st.lists(st.integers(1, 50), max_size=6),
    refused=st.lists(st.integers(1, 20), min_size=1, max_size=3),
    state=st.none() | st.tuples(st.floats(1.0, 600.0), st.floats(0.0, 10.0)),
    tuning=tunings,
)
def test_penalize_aims_as_ceiling_after_refusal_does(
    redis_url: str,
    allowed: int,
    grants: list[int],
    refused: list[int],
    state: tuple[float, float] | None,
    tuning: AdaptiveTuning,
) -> None:
    period_s = 60.0  # everything below happens well within one period

    async def run() -> None:
        store = RedisStore.from_url(redis_url)
        try:
            key = uuid.uuid4().hex
            window = RedisTokenWindow(store, key, allowed, period_s, adaptive=True, tuning=tuning)
            started = 0
            for want in grants:
                # Within allowed, so every grant starts now (reservations, which start later, do not count).
                if allowed - started > 0:
                    started += (await window.take_reply(min(want, allowed - started), 1)).tokens
            ceiling, cut_at = float(allowed), None
            if state is not None:
                ceiling, ago_periods = state
                cut_at = _set_state(redis_url, store, key, ceiling, ago_periods * period_s)
            refused_so_far = 0
            for count in refused:
                answer = await window.refuse(count)
                refused_so_far += count
                current = float(allowed)
                if cut_at is not None:
                    elapsed_s = (answer.at_us - cut_at) / 1e6
                    current = probed_rate(ceiling, elapsed_s, allowed, period_s, tuning, used=started)
                accepted = accepted_per_period(started, refused_so_far, period_s, period_s)
                assert answer.accepted == pytest.approx(accepted)
                expected = ceiling_after_refusal(current, accepted, tuning)
                assert answer.ceiling == pytest.approx(expected, rel=1e-9)
                assert answer.effective_allowed == pytest.approx(
                    probed_rate(expected, 0.0, allowed, period_s, tuning), rel=1e-9
                )
                ceiling, cut_at = answer.ceiling, answer.at_us
        finally:
            await store.aclose()

    asyncio.run(run())


def test_penalize_counts_only_the_tokens_that_started(redis_url: str) -> None:
    # 100 granted, 40 of them given back with the next take (they lapsed): the downstream was offered 61
    # calls and refused 1, so penalize.lua measures 60 accepted, not the 100 granted.
    async def run() -> None:
        store = RedisStore.from_url(redis_url)
        try:
            window = RedisTokenWindow(store, uuid.uuid4().hex, 100, 60.0, adaptive=True)
            grant = await window.take_async(100, 100)
            await window.take_async(1, 1, Unused(grant, 40))
            answer = await window.refuse(1)
            assert answer.accepted == pytest.approx(60.0)
            assert answer.ceiling == pytest.approx(60.0)
        finally:
            await store.aclose()

    asyncio.run(run())


def test_penalize_counts_a_grant_from_a_hold_before_the_period_as_refuse_does(redis_url: str) -> None:
    # A grant's calls start within [g, g + hold]: one from 5 s before the period measured (hold 10 s) may have
    # started in it and counts, one from 15 s before does not. Period 60 s, so the few ms between writing the
    # log and penalize.lua reading TIME never move a grant across an edge.
    period_s, hold_s = 60.0, 10.0
    grants = [(-75.0, 4), (-65.0, 10), (-30.0, 8)]  # (g relative to now, tokens)

    async def run() -> None:
        store = RedisStore.from_url(redis_url)
        client = redis.Redis.from_url(redis_url)
        try:
            key = uuid.uuid4().hex
            window = RedisTokenWindow(store, key, 100, period_s, hold_s=hold_s, adaptive=True)
            log, meta = store.keys.rate(key)
            seconds, micros = client.time()
            now_us = seconds * 1_000_000 + micros
            for seq, (at_s, tokens) in enumerate(grants, start=1):
                client.zadd(log, {f"{seq}:{tokens}": now_us + round((at_s + hold_s) * 1_000_000)})
            last_g = now_us + round(grants[-1][0] * 1_000_000)
            client.hset(meta, mapping={"sum": 22, "last_g": last_g, "seq": len(grants)})
            answer = await window.refuse(1)
            assert answer.accepted == pytest.approx(10 + 8 - 1)
            # The in-process window, given the same grants, measures the same.
            now = [0.0]
            local = InProcessWindow(100, period_s, hold_s, clock=lambda: now[0], adaptive=True)
            for at_s, tokens in grants:
                now[0] = 100.0 + at_s
                assert local.grant(tokens, tokens).tokens == tokens
            now[0] = 100.0
            assert local.refuse(1) == pytest.approx(answer.effective_allowed)
        finally:
            client.close()
            await store.aclose()

    asyncio.run(run())
