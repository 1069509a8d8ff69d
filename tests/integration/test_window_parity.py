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
    st.tuples(
        st.integers(1, 12),
        st.integers(1, 12),
        st.sampled_from([0.0, 0.0, 0.0005, 0.002, 0.006]),
        st.sampled_from([0, 0, 1, 2, 3, 5]),
    ),
    min_size=1,
    max_size=25,
)


def _grants_of(grant: Grant) -> list[Grant]:
    return [grant, *grant.later]


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
    trace: list[tuple[int, int, float, int]],
) -> None:
    script = client.script_load(lua_source("take_tokens"))
    log_key, meta_key = Keys("parity").rate(uuid.uuid4().hex)
    now_us = [0.0]
    period_us, hold_us = period_ms * 1000.0, hold_ms * 1000.0
    python = InProcessWindow(allowed, period_us, hold_us, clock=lambda: now_us[0], burst=burst or None)
    # The grants of the previous take (more than one when sliced), in Python and their names in Redis.
    last: list[tuple[Grant, tuple[int, int, int]]] = []
    for want, least, pause_s, slice_tokens in trace:
        if pause_s:
            time.sleep(pause_s)
        # Each grant of the take before gives back half its tokens (rounded up) when its place and the take
        # make a multiple of three, as a lapse does, and says it began all it started within least / 12 of
        # its hold when they make an even number (a shortening).
        backs: list[Unused] = []
        back_args: list[int | str] = []
        for place, (grant, name) in enumerate(last):
            if (want + place) % 3 and (least + place) % 2:
                continue
            unused = (grant.tokens + 1) // 2 if (want + place) % 3 == 0 else 0
            within_us = round(hold_us * least / 12) if (least + place) % 2 == 0 else None
            backs.append(Unused(grant, unused, started_within_s=within_us))
            back_args += [*name, unused, "" if within_us is None else within_us]
        # Not adaptive: margin and probe are unused but must be numbers; headroom '' is none.
        args = (allowed, repr(period_ms * 1.0), repr(hold_ms * 1.0), want, least, 0, "0.03", "0.4", burst, "")
        args += (slice_tokens, *back_args)
        reply = client.evalsha(script, 2, log_key, meta_key, *args)  # type: ignore[misc]
        tokens, delay_us, start_us, seq = (int(reply[i]) for i in (0, 1, 4, 5))
        now_us[0] = float(start_us - delay_us)
        names = [(seq, start_us, tokens)]
        answered = [(tokens, delay_us)]
        for i in range(7, len(reply), 4):
            later_tokens, later_delay_us, later_start_us, later_seq = (
                int(field) for field in reply[i : i + 4]
            )
            names.append((later_seq, later_start_us, later_tokens))
            answered.append((later_tokens, later_delay_us))
        grants = _grants_of(python.grant(want, least, backs, slice_tokens))
        case = (want, least, slice_tokens, grants, answered)
        assert [grant.tokens for grant in grants] == [tokens for tokens, _ in answered], case
        last = list(zip(grants, names, strict=True))
        for grant, (_, delay) in zip(grants, answered, strict=True):
            # The script replies in whole microseconds (a paced start can fall between two).
            assert abs(grant.delay_s - delay) <= (2 if burst else 0), case


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
