"""The sliding window is written twice, in Lua for the shared window (take_tokens.lua) and in Python for the
in-process one (operators.InProcessWindow). Fed the same takes at the same instants, they must grant alike.

Each take goes to Redis first; its reply says when Redis's clock stood (start - delay), and the Python window
is asked the same at that instant (its clock in microseconds, like the script's). Hypothesis draws the limits
and the takes; short periods and small pauses make grants expire, wait and reserve, and takes give back and
shorten the grant before them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flume_rx.operators import Grant, InProcessWindow, Unused
from flume_rx.store.keys import Keys
from flume_rx.store.scripts import lua_source


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


takes = st.lists(
    st.tuples(st.integers(1, 12), st.integers(1, 12), st.sampled_from([0.0, 0.0, 0.0005, 0.002, 0.006])),
    min_size=1,
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    allowed=st.integers(1, 10),
    period_ms=st.integers(1, 20),
    hold_ms=st.integers(0, 4),
    burst=st.sampled_from([0, 0, 1, 2, 5]),
    trace=takes,
)
def test_the_lua_and_the_python_window_grant_alike(
    client: redis.Redis,
    allowed: int,
    period_ms: int,
    hold_ms: int,
    burst: int,
    trace: list[tuple[int, int, float]],
) -> None:
    script = client.script_load(lua_source("take_tokens"))
    log_key, meta_key = Keys("parity").rate(uuid.uuid4().hex)
    now_us = [0.0]
    period_us, hold_us = period_ms * 1000.0, hold_ms * 1000.0
    python = InProcessWindow(allowed, period_us, hold_us, clock=lambda: now_us[0], burst=burst or None)
    last: tuple[Grant, tuple[int, int, int]] | None = None  # the previous grant, in Python and in Redis
    for want, least, pause_s in trace:
        if pause_s:
            time.sleep(pause_s)
        # Every third take gives back half the tokens of the one before (rounded up), as a lapse does; every
        # other take says the one before began all it started within least / 12 of its hold (a shortening).
        back: tuple[Unused, tuple[int, int, int, int, int | str]] | None = None
        if last is not None and (want % 3 == 0 or least % 2 == 0):
            unused = (last[0].tokens + 1) // 2 if want % 3 == 0 else 0
            within_us = round(hold_us * least / 12) if least % 2 == 0 else None
            back = (
                Unused(last[0], unused, started_within_s=within_us),
                (*last[1], unused, "" if within_us is None else within_us),
            )
        # Not adaptive: margin and probe are unused but must be numbers; headroom '' is none.
        args = (allowed, repr(period_ms * 1.0), repr(hold_ms * 1.0), want, least, 0, "0.03", "0.4", burst, "")
        args += back[1] if back is not None else ("", "", "", "", "")
        reply = client.evalsha(script, 2, log_key, meta_key, *args)  # type: ignore[misc]
        tokens, delay_us, _, _, start_us, seq, _ = reply
        now_us[0] = float(int(start_us) - int(delay_us))
        grant = python.grant(want, least, None if back is None else back[0])
        last = grant, (int(seq), int(start_us), int(tokens))
        assert grant.tokens == int(tokens), (want, least, grant, tokens, delay_us)
        # The script replies in whole microseconds (a paced start can fall between two).
        assert abs(grant.delay_s - int(delay_us)) <= (2 if burst else 0), (want, least, grant, delay_us)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    allowed=st.integers(1, 10),
    period_ms=st.integers(1, 20),
    hold_ms=st.integers(0, 4),
    trace=st.lists(
        st.tuples(
            st.lists(
                st.tuples(st.sampled_from("abc"), st.integers(1, 12), st.integers(1, 12)),
                min_size=1,
                max_size=3,
            ),
            st.sampled_from([0.0, 0.0, 0.002, 0.006]),
        ),
        min_size=1,
        max_size=15,
    ),
)
def test_the_keyed_lua_windows_grant_as_one_python_window_per_key(
    client: redis.Redis,
    allowed: int,
    period_ms: int,
    hold_ms: int,
    trace: list[tuple[list[tuple[str, int, int]], float]],
) -> None:
    """take_tokens_multi.lua walks the same window (the shared _window.lua) once per key of a call."""
    script = client.script_load(lua_source("take_tokens_multi"))
    keys = Keys("parity")
    limiter = uuid.uuid4().hex
    now_us = [0.0]
    windows: dict[str, InProcessWindow] = {}
    for wants, pause_s in trace:
        if pause_s:
            time.sleep(pause_s)
        flat_keys = [name for sub, _, _ in wants for name in keys.keyed_rate(limiter, sub)]
        args: list[object] = [allowed, repr(period_ms * 1.0), repr(hold_ms * 1.0)]
        for _, want, least in wants:
            args += [want, least]
        reply = client.evalsha(script, len(flat_keys), *flat_keys, *args)  # type: ignore[misc]
        for i, (sub, want, least) in enumerate(wants):
            tokens, delay_us, start_us = (int(x) for x in reply[3 * i : 3 * i + 3])
            now_us[0] = float(start_us - delay_us)
            window = windows.setdefault(
                sub, InProcessWindow(allowed, period_ms * 1000.0, hold_ms * 1000.0, clock=lambda: now_us[0])
            )
            grant = window.grant(want, least)
            assert (grant.tokens, grant.delay_s) == (tokens, delay_us), (sub, want, least)
