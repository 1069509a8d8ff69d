"""throttle and InProcessWindow: exact virtual-time behaviour and the sliding-window limit as a property."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
import reactivex
from _flowkit import Probe, TimedSource, max_in_window
from hypothesis import given, settings
from hypothesis import strategies as st
from reactivex import operators as ops
from reactivex.testing import ReactiveTest, TestScheduler

from flume_rx.operators import (
    MOST_SLICES,
    Demand,
    Grant,
    InProcessWindow,
    Lease,
    Unused,
    given_back,
    throttle,
)

on_next, on_completed, on_error = ReactiveTest.on_next, ReactiveTest.on_completed, ReactiveTest.on_error
subscribe = ReactiveTest.subscribe


class ScriptedWindow:
    """A TokenWindow that answers takes from a script of (latency, grant), for the send-time rules.

    A take answers with a plain Grant after its latency has passed on the virtual clock, as a window shared
    through Redis answers after its round trip. Once the script is spent, a take is answered with tokens free
    only long after any test here has ended.
    """

    def __init__(self, scheduler: TestScheduler, script: list[tuple[float, Grant]], allowed: int = 5) -> None:
        self.scheduler = scheduler
        self.script = list(script)
        self.takes: list[tuple[float, int, int]] = []
        self.allowed = allowed
        self.period_s = 10.0

    def take(self, tokens: int, min_tokens: int) -> Grant:
        self.takes.append((float(self.scheduler.clock), tokens, min_tokens))
        if not self.script:
            return Grant(tokens, NEVER_IN_A_TEST, 1.0)
        latency, grant = self.script.pop(0)
        self.scheduler.sleep(latency)
        return grant

    def penalize(self) -> float:
        return float(self.allowed)

    def current_rate(self) -> float:
        return float(self.allowed)


NEVER_IN_A_TEST = 1e6
"""A delay, in virtual seconds, past the end of every test here."""


def test_items_wait_for_the_grants_ahead_of_them_to_expire() -> None:
    scheduler = TestScheduler()
    xs = scheduler.create_hot_observable(
        on_next(210, "a"), on_next(220, "b"), on_next(230, "c"), on_completed(300)
    )
    window = InProcessWindow(2, 50.0, 0.0, clock=scheduler)

    results = scheduler.start(lambda: xs.pipe(throttle(window, scheduler=scheduler)))

    assert results.messages == [on_next(210, "a"), on_next(220, "b"), on_next(260, "c"), on_completed(300)]
    assert xs.subscriptions == [subscribe(200, 300)]


def test_hold_time_extends_how_long_a_grant_counts() -> None:
    scheduler = TestScheduler()
    xs = scheduler.create_hot_observable(on_next(210, "a"), on_next(220, "b"), on_next(230, "c"))
    window = InProcessWindow(2, 50.0, 5.0, clock=scheduler)

    results = scheduler.start(lambda: xs.pipe(throttle(window, scheduler=scheduler)))

    assert results.messages == [on_next(210, "a"), on_next(220, "b"), on_next(265, "c")]


def test_completion_waits_for_held_items() -> None:
    scheduler = TestScheduler()
    xs = scheduler.create_hot_observable(on_next(210, 1), on_next(211, 2), on_completed(212))
    window = InProcessWindow(1, 100.0, 0.0, clock=scheduler)

    results = scheduler.start(lambda: xs.pipe(throttle(window, scheduler=scheduler)))

    assert results.messages == [on_next(210, 1), on_next(310, 2), on_completed(310)]


def test_costly_items_take_more_tokens_and_are_clamped_to_allowed() -> None:
    scheduler = TestScheduler()
    xs = scheduler.create_hot_observable(on_next(210, 2), on_next(210, 9), on_next(210, 1))
    window = InProcessWindow(3, 100.0, 0.0, clock=scheduler)

    results = scheduler.start(lambda: xs.pipe(throttle(window, cost=lambda x: x, scheduler=scheduler)))

    # 2 fits the first period; 9 is clamped to 3 and needs the whole next one; 1 goes in the one after.
    assert results.messages == [on_next(210, 2), on_next(310, 9), on_next(410, 1)]


def test_tokens_lapse_when_the_grant_arrives_after_its_hold_measured_from_sending() -> None:
    scheduler = TestScheduler()
    window = ScriptedWindow(scheduler, [(3.0, Grant(1, 0.0, 2.0)), (0.0, Grant(1, 0.0, 2.0))])
    events: list[tuple[str, dict[str, Any]]] = []
    xs = scheduler.create_hot_observable(on_next(210, "a"))

    results = scheduler.start(
        lambda: xs.pipe(throttle(window, scheduler=scheduler, on_event=lambda *e: events.append(e)))
    )

    assert results.messages == [on_next(213, "a")]
    assert [take[0] for take in window.takes] == [210.0, 213.0]
    assert ("lapsed", {"tokens": 1}) in events


def test_a_grant_in_the_future_is_waited_for_and_reported() -> None:
    scheduler = TestScheduler()
    window = ScriptedWindow(scheduler, [(0.0, Grant(2, 7.0, 1.0))])
    events: list[tuple[str, dict[str, Any]]] = []
    xs = scheduler.create_hot_observable(on_next(210, "a"), on_next(210, "b"))

    results = scheduler.start(
        lambda: xs.pipe(throttle(window, scheduler=scheduler, on_event=lambda *e: events.append(e)))
    )

    assert results.messages == [on_next(217, "a"), on_next(217, "b")]
    assert ("waited", {"tokens": 2, "wait_ms": 7000.0}) in events


def test_items_arriving_during_the_hold_use_the_grant_left_over() -> None:
    scheduler = TestScheduler()
    window = ScriptedWindow(scheduler, [(0.0, Grant(3, 0.0, 5.0))])
    xs = scheduler.create_hot_observable(on_next(210, "a"), on_next(213, "b"), on_next(216, "c"))

    results = scheduler.start(lambda: xs.pipe(throttle(window, scheduler=scheduler)), disposed=220)

    # b comes within the hold and uses a spare token; c comes after it and needs a new take (none scripted).
    assert results.messages == [on_next(210, "a"), on_next(213, "b")]
    assert [take[0] for take in window.takes] == [210.0, 216.0]


def test_an_error_of_an_awaited_take_goes_downstream() -> None:
    failure = ConnectionError("redis is down")

    class Failing(ScriptedWindow):
        async def take(self, tokens: int, min_tokens: int) -> Grant:
            raise failure

    async def main() -> list[Any]:
        # The take is awaited on this loop; the virtual clock stands still while it is.
        scheduler = TestScheduler()
        xs = scheduler.create_hot_observable(on_next(210, "a"))
        observer = scheduler.create_observer()
        xs.pipe(throttle(Failing(scheduler, []), scheduler=scheduler)).subscribe(
            observer, scheduler=scheduler
        )
        scheduler.advance_to(210.0)
        for _ in range(10):
            if observer.messages:
                break
            await asyncio.sleep(0)
        return observer.messages

    assert asyncio.run(main()) == [on_error(210, failure)]


def test_a_window_that_raises_sends_its_error_downstream() -> None:
    scheduler = TestScheduler()
    failure = ValueError("tokens must be >= 1")

    class Raising(ScriptedWindow):
        def take(self, tokens: int, min_tokens: int) -> Grant:
            raise failure

    xs = scheduler.create_hot_observable(on_next(210, "a"))
    results = scheduler.start(lambda: xs.pipe(throttle(Raising(scheduler, []), scheduler=scheduler)))

    assert results.messages == [on_error(210, failure)]


def test_a_window_answering_with_a_stream_gets_an_error_saying_what_to_answer() -> None:
    scheduler = TestScheduler()

    class Streaming(ScriptedWindow):
        def take(self, tokens: int, min_tokens: int) -> Any:
            return reactivex.just(Grant(tokens, 0.0, 1.0))

    xs = scheduler.create_hot_observable(on_next(210, "a"))
    results = scheduler.start(lambda: xs.pipe(throttle(Streaming(scheduler, []), scheduler=scheduler)))

    [message] = results.messages
    assert message.time == 210 and message.value.kind == "E"
    assert "answer with the value itself or an awaitable" in str(message.value.exception)


def test_plain_subscription_works_as_an_ordinary_operator() -> None:
    # Real time: the default hold leaves room for the microseconds between a take and its use.
    window = InProcessWindow(1000, 1.0)
    assert reactivex.from_iterable(range(10)).pipe(throttle(window), ops.to_list()).run() == list(range(10))


def test_requests_upstream_only_what_downstream_requested() -> None:
    scheduler = TestScheduler()
    source = TimedSource(scheduler, [0.0] * 10)
    window = InProcessWindow(100, 10.0, 0.0, clock=scheduler)
    demand = Demand()
    seen: list[int] = []
    source.pipe(throttle(window, scheduler=scheduler)).subscribe_with_demand(
        reactivex.Observer(seen.append), demand, scheduler
    )
    demand.request(3)
    scheduler.advance_to(5.0)
    assert seen == [0, 1, 2]
    assert len(source.emitted) == 3
    demand.request(2)
    scheduler.advance_to(6.0)
    assert seen == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_tokens": 0}, "min_tokens"),
        ({"min_tokens": -3}, "-3"),
        ({"slices": 0}, "slices must be from 1 to 3"),
        ({"slices": MOST_SLICES + 1}, "got 4"),
    ],
)
def test_throttle_validates_eagerly(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        throttle(InProcessWindow(1, 1.0), **kwargs)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((0, 1.0), {}, "allowed"),
        ((1, 0.0), {}, "period_s"),
        ((1, 1.0, -1.0), {}, "hold_s"),
        ((1, 1.0), {"burst": 0}, "burst"),
    ],
)
def test_window_validates_eagerly(args: tuple[Any, ...], kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        InProcessWindow(*args, **kwargs)


def test_a_take_for_a_negative_slice_is_refused_and_changes_nothing() -> None:
    window = InProcessWindow(5, 1.0, 0.02, clock=lambda: 0.0)
    with pytest.raises(ValueError, match="slice_tokens must be >= 0 \\(got -1\\)"):
        window.take(3, 1, slice_tokens=-1)
    assert window.take(5, 5).tokens == 5  # nothing was granted by the refused take


def test_window_reserves_instead_of_refusing() -> None:
    now = [0.0]
    window = InProcessWindow(3, 10.0, 1.0, clock=lambda: now[0])
    assert window.grant(5, 1) == Grant(3, 0.0, 1.0)
    now[0] = 2.0
    assert window.grant(2, 2) == Grant(2, 9.0, 1.0)  # the first grant counts until 0 + 1 + 10
    now[0] = 3.0
    # Grants never start before an earlier one; 1 token is left at 11.
    assert window.grant(4, 1) == Grant(1, 8.0, 1.0)


def test_non_adaptive_window_reports_but_keeps_its_rate() -> None:
    window = InProcessWindow(10, 1.0, clock=lambda: 0.0)
    assert window.penalize() == 10.0


@settings(max_examples=150, deadline=None)
@given(
    allowed=st.integers(1, 8),
    period=st.integers(1, 30),
    hold=st.sampled_from([0.0, 0.5, 2.0, 7.0]),
    takes=st.lists(
        st.tuples(
            st.integers(0, 60), st.integers(1, 12), st.integers(1, 12), st.floats(0.0, 1.0), st.integers(0, 5)
        ),
        min_size=1,
        max_size=40,
    ),
)
def test_window_never_lets_more_than_allowed_start_in_any_period(
    allowed: int, period: int, hold: float, takes: list[tuple[int, int, int, float, int]]
) -> None:
    now = [0.0]
    window = InProcessWindow(allowed, float(period), hold, clock=lambda: now[0])
    starts: list[tuple[float, int]] = []
    last_start = 0.0
    for at, tokens, least, where, slice_tokens in sorted(takes):
        now[0] = float(at)
        grant = window.grant(tokens, least, slice_tokens=slice_tokens)
        grants = [grant, *grant.later]
        assert len(grants) <= MOST_SLICES
        assert sum(g.tokens for g in grants) <= min(tokens, allowed)
        assert grant.tokens >= min(tokens, least, allowed)  # sliced or not
        for each in grants:
            assert 1 <= each.tokens <= (max(slice_tokens, least) if slice_tokens else allowed)
            assert each.delay_s >= 0
            start = now[0] + each.delay_s
            # In order, and each slice a hold after the one before: the caller uses them one after another.
            assert start >= last_start + (hold if each is not grant else 0.0)
            last_start = start
            # The caller may start anywhere within the hold: the limit must hold wherever it does.
            starts.append((start + where * hold, each.tokens))
    assert max_in_window(starts, float(period)) <= allowed


@settings(max_examples=300, deadline=None)
@given(
    allowed=st.integers(1, 8),
    period=st.integers(1, 30),
    hold=st.sampled_from([0.0, 0.5, 2.0, 7.0]),
    burst=st.none() | st.integers(1, 4),
    takes=st.lists(
        st.tuples(
            st.integers(0, 60), st.integers(0, 3), st.integers(1, 12), st.integers(0, 12), st.floats(0, 1)
        ),
        min_size=1,
        max_size=40,
    ),
)
def test_tokens_given_back_once_they_cannot_start_keep_the_limit(
    allowed: int,
    period: int,
    hold: float,
    burst: int | None,
    takes: list[tuple[int, int, int, int, float]],
) -> None:
    # Four callers share the window; each starts some of its grant's tokens anywhere in the hold and gives the
    # rest back with its next take, if that comes after the hold ended (when it can no longer start them).
    now = [0.0]
    window = InProcessWindow(allowed, float(period), hold, clock=lambda: now[0], burst=burst)
    starts: list[tuple[float, int]] = []
    last: dict[int, tuple[Grant, float, int]] = {}  # caller -> its last grant, where it started, tokens used
    for at, caller, tokens, used, where in sorted(takes):
        now[0] = float(at)
        unused = None
        if caller in last:
            grant, start, used_before = last[caller]
            if now[0] > start + hold and used_before < grant.tokens:
                unused = Unused(grant, grant.tokens - used_before)
        grant = window.grant(tokens, 1, unused)
        start = now[0] + grant.delay_s
        used = min(used, grant.tokens)
        last[caller] = (grant, start, used)
        starts.append((start + where * hold, used))
    assert max_in_window(starts, float(period)) <= allowed


@settings(max_examples=300, deadline=None)
@given(
    allowed=st.integers(1, 6),
    period=st.integers(1, 20),
    hold=st.sampled_from([0.0, 0.5, 1.0, 3.0]),
    arrivals=st.lists(st.integers(0, 160).map(lambda half_ticks: half_ticks / 2), min_size=1, max_size=25),
    costs=st.lists(st.integers(1, 8), min_size=25, max_size=25),
    min_tokens=st.none() | st.integers(1, 4),
    requests=st.lists(st.tuples(st.integers(0, 120), st.integers(1, 6)), max_size=8),
    plain=st.booleans(),
    prefetch=st.sampled_from([0, 3, 30]),
    slices=st.integers(1, MOST_SLICES),
)
def test_throttle_never_exceeds_the_window_and_keeps_order(
    allowed: int,
    period: int,
    hold: float,
    arrivals: list[float],
    costs: list[int],
    min_tokens: int | None,
    requests: list[tuple[int, int]],
    plain: bool,
    prefetch: int,
    slices: int,
) -> None:
    # Items of different costs, read ahead or not, a take for one hold or several: a slice smaller than the
    # first item held would never release it (and the stream would never end).
    scheduler = TestScheduler()
    window = InProcessWindow(allowed, float(period), hold, clock=scheduler)
    source = TimedSource(scheduler, arrivals)
    emitted: list[tuple[float, int]] = []
    probe = Probe("throttle")
    completed: list[float] = []
    pipeline = source.pipe(
        throttle(
            window,
            cost=lambda i: costs[i],
            min_tokens=min_tokens,
            scheduler=scheduler,
            prefetch=prefetch,
            slices=slices,
        ),
        probe,
    )
    observer = reactivex.Observer(
        lambda i: emitted.append((float(scheduler.clock), i)),
        lambda e: pytest.fail(f"unexpected error {e!r}"),
        lambda: completed.append(float(scheduler.clock)),
    )
    if plain:
        pipeline.subscribe(observer, scheduler=scheduler)
        requested = len(arrivals)
    else:
        demand = Demand()
        pipeline.subscribe_with_demand(observer, demand, scheduler)
        for at, n in requests:
            scheduler.schedule_absolute(float(at), lambda _s, _st, n=n: demand.request(n))
        requested = sum(n for _, n in requests)
    scheduler.advance_to(100_000.0)

    assert probe.violations == []
    assert len(source.emitted) <= requested + prefetch or plain  # what it read ahead, at most prefetch
    assert [i for _, i in emitted] == list(range(len(emitted)))
    assert max_in_window([(t, min(costs[i], allowed)) for t, i in emitted], float(period)) <= allowed
    assert len(emitted) == min(requested, len(arrivals))
    assert bool(completed) == (len(emitted) == len(arrivals))


@settings(max_examples=60, deadline=None)
@given(
    allowed=st.integers(1, 20),
    period=st.sampled_from([0.5, 1.0, 2.0, 5.0]),
    hold=st.sampled_from([0.0, 0.01, 0.02, 0.1, 0.5]),
)
def test_a_steady_backlog_gets_the_promised_utilization(allowed: int, period: float, hold: float) -> None:
    scheduler = TestScheduler()
    window = InProcessWindow(allowed, period, hold, clock=scheduler)
    times: list[float] = []
    count = allowed * 20
    reactivex.from_iterable(range(count)).pipe(throttle(window, scheduler=scheduler)).subscribe(
        lambda _: times.append(float(scheduler.clock)), scheduler=scheduler
    )
    scheduler.advance_to(10_000.0)

    assert len(times) == count
    rate_per_period = (count - allowed) / (times[-1] - times[0]) * period
    assert rate_per_period >= period / (period + hold) * allowed * 0.99
    assert max_in_window([(t, 1) for t in times], period) <= allowed


class CountingWindow(InProcessWindow):
    """An InProcessWindow that counts its takes and keeps what they gave back."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.takes = 0
        self.given_back: list[Unused] = []

    def take(
        self,
        tokens: int,
        min_tokens: int,
        unused: Unused | Sequence[Unused] | None = None,
        slice_tokens: int = 0,
    ) -> Grant:
        self.takes += 1
        self.given_back += given_back(unused)
        return super().take(tokens, min_tokens, unused, slice_tokens)


def _drain_one_at_a_time(
    prefetch: int, work: float, items: int = 200, lapsed: list[int] | None = None
) -> tuple[CountingWindow, list[float]]:
    """A consumer with one stage that takes ``work`` ticks per item, behind a throttle of 50 per 10 ticks."""
    scheduler = TestScheduler()
    window = CountingWindow(50, 10.0, 0.2, clock=scheduler, burst=20)
    source = TimedSource(scheduler, [0.0] * items)
    demand = Demand()
    starts: list[float] = []

    def start(_item: int) -> None:
        starts.append(float(scheduler.clock))
        scheduler.schedule_relative(work, lambda _s, _st: demand.request(1))

    def on_event(kind: str, fields: dict[str, Any]) -> None:
        if kind == "lapsed" and lapsed is not None:
            lapsed.append(fields["tokens"])

    limited = throttle(window, min_tokens=1, prefetch=prefetch, scheduler=scheduler, on_event=on_event)
    source.pipe(limited).subscribe_with_demand(reactivex.Observer(start), demand, scheduler)
    demand.request(1)
    scheduler.advance_to(1_000.0)
    return window, starts


def test_prefetch_lets_a_one_stage_consumer_take_tokens_in_batches() -> None:
    plain, plain_starts = _drain_one_at_a_time(0, 0.001)
    ahead, ahead_starts = _drain_one_at_a_time(100, 0.001)
    assert len(plain_starts) == len(ahead_starts) == 200
    assert plain.takes == 200  # one take per item: downstream only ever wants one
    assert ahead.takes <= 200 / 5  # grants grow toward the burst while they are used up
    assert max_in_window([(t, 1) for t in ahead_starts], 10.0) <= 50


def test_prefetch_shrinks_its_takes_when_tokens_lapse() -> None:
    # Each item takes longer than the hold: only one token of a grant can ever be used, so a take for the
    # burst (20) would waste 19 tokens per item; the takes shrink back to what was used instead.
    lapsed: list[int] = []
    _window, starts = _drain_one_at_a_time(100, 0.5, items=40, lapsed=lapsed)
    assert len(starts) == 40
    assert max_in_window([(t, 1) for t in starts], 10.0) <= 50
    assert sum(lapsed) <= len(starts)


@settings(max_examples=200, deadline=None)
@given(
    allowed=st.integers(1, 8),
    period=st.integers(1, 20),
    hold=st.sampled_from([0.0, 0.5, 1.0, 3.0]),
    arrivals=st.lists(st.integers(0, 160).map(lambda half_ticks: half_ticks / 2), min_size=1, max_size=25),
    prefetch=st.integers(1, 30),
    requests=st.lists(st.tuples(st.integers(0, 120), st.integers(1, 6)), max_size=8),
    slices=st.integers(1, MOST_SLICES),
)
def test_with_prefetch_the_window_holds_and_nothing_goes_unrequested(
    allowed: int,
    period: int,
    hold: float,
    arrivals: list[float],
    prefetch: int,
    requests: list[tuple[int, int]],
    slices: int,
) -> None:
    scheduler = TestScheduler()
    window = InProcessWindow(allowed, float(period), hold, clock=scheduler)
    source = TimedSource(scheduler, arrivals)
    emitted: list[tuple[float, int]] = []
    probe = Probe("throttle")
    demand = Demand()
    source.pipe(
        throttle(window, min_tokens=1, prefetch=prefetch, scheduler=scheduler, slices=slices), probe
    ).subscribe_with_demand(
        reactivex.Observer(lambda i: emitted.append((float(scheduler.clock), i))), demand, scheduler
    )
    for at, n in requests:
        scheduler.schedule_absolute(float(at), lambda _s, _st, n=n: demand.request(n))
    scheduler.advance_to(100_000.0)

    requested = sum(n for _, n in requests)
    assert probe.violations == []
    assert [i for _, i in emitted] == list(range(len(emitted)))
    assert max_in_window([(t, 1) for t, _ in emitted], float(period)) <= allowed
    assert len(emitted) == min(requested, len(arrivals))
    assert len(source.emitted) <= requested + prefetch  # what went downstream, and at most prefetch held


def _shared_limit_with_slow_stages(
    window: InProcessWindow,
    scheduler: TestScheduler,
    job_s: tuple[float, ...],
    lag_s: float = 0.0,
    begin_through_leases: bool = False,
    slices: int = 1,
) -> tuple[list[float], list[int]]:
    """The demo's shape in virtual time: three throttles with prefetch share ``window``; each feeds five stages
    whose calls take ``job_s`` in turn (the 10 ms a fake SES call takes and a little more). With
    ``begin_through_leases`` each item begins through its lease (Lease.begin), as the job processor does;
    ``slices`` is each throttle's. Returns the starts and the tokens that lapsed."""
    starts: list[float] = []
    lapsed: list[int] = []

    def on_event(kind: str, fields: dict[str, Any]) -> None:
        if kind == "lapsed":
            lapsed.append(fields["tokens"])

    for process in range(3):
        demand = Demand()
        finished = [0]
        leases: dict[int, Lease] = {}

        def start(
            item: int,
            demand: Demand = demand,
            finished: list[int] = finished,
            leases: dict[int, Lease] = leases,
        ) -> None:
            lease = leases.pop(item, None)
            if lease is not None and not lease.begin():
                lease.hand_back(item)
                demand.request(1)
                return
            starts.append(float(scheduler.clock))
            finished[0] += 1
            took = job_s[finished[0] % len(job_s)]
            scheduler.schedule_relative(took, lambda _s, _st: demand.request(1))

        options: dict[str, Any] = {"lag_s": lag_s} if lag_s else {}
        if begin_through_leases:
            options["on_release"] = leases.__setitem__
        limited = throttle(
            window,
            min_tokens=5,
            prefetch=50,
            scheduler=scheduler,
            on_event=on_event,
            slices=slices,
            **options,
        )
        TimedSource(scheduler, [0.0] * 1000).pipe(limited).subscribe_with_demand(
            reactivex.Observer(start), demand, scheduler
        )
        scheduler.schedule_absolute(process * 0.003, lambda _s, _st, demand=demand: demand.request(5))
    scheduler.advance_to(60.0)
    return starts, lapsed


def test_five_slow_stages_per_process_still_use_the_shared_limit() -> None:
    # Five stages whose calls take 10-13 ms start about ten items in a 20 ms hold. A take sized past that
    # leaves tokens to lapse; counted until they expire, they cost the window a fifth of its rate (81% of the
    # limit before lapsed tokens were given back). Given back with the next take, the window stays used.
    scheduler = TestScheduler()
    window = InProcessWindow(400, 1.0, 0.02, clock=scheduler, burst=20)
    starts, lapsed = _shared_limit_with_slow_stages(window, scheduler, (0.010, 0.011, 0.012, 0.013))

    assert len(starts) == 3000
    assert max_in_window([(t, 1) for t in starts], 1.0) <= 400
    # Starts per second over the run, after the first second: the pacing promises 1000/1020 of the limit.
    in_steady = [t for t in starts if t >= starts[0] + 1.0]
    rate = (len(in_steady) - 1) / (in_steady[-1] - in_steady[0])
    assert rate >= 0.97 * 400
    # Takes are sized from what the stages start in a hold, so few tokens lapse at all.
    assert sum(lapsed) <= len(starts) // 20


def test_grants_that_tell_when_their_items_began_leave_more_of_the_limit_used() -> None:
    # Counted until a hold after its start, each grant costs the window hold / period of its rate (98% with a
    # 20 ms hold). Five stages begin a grant's items in waves, and its last one well before the hold ends:
    # told when that was (Lease.begin, then Unused.started_within_s), the window counts the grant only that
    # long, and no sliding second has more than the limit.
    rates = {}
    for through_leases in (False, True):
        scheduler = TestScheduler()
        window = InProcessWindow(400, 1.0, 0.02, clock=scheduler, burst=20)
        starts, _ = _shared_limit_with_slow_stages(
            window, scheduler, (0.010, 0.011, 0.012, 0.013), begin_through_leases=through_leases
        )
        assert len(starts) == 3000
        assert max_in_window([(t, 1) for t in starts], 1.0) <= 400
        in_steady = [t for t in starts if t >= starts[0] + 1.0]
        rates[through_leases] = (len(in_steady) - 1) / (in_steady[-1] - in_steady[0])
    assert rates[True] >= 0.985 * 400
    assert rates[True] > rates[False]


def test_takes_for_several_holds_cut_the_calls_and_keep_the_limit_used() -> None:
    # The demo's shape with calls of 13 ms (what the demo's SES job took in real runs): five stages start about
    # eight items in the 15 ms a grant releases, so a take a hold cost 0.13 calls per item. Answered with up to
    # three grants a hold apart, each counted as its own, a take covers about three times as many, and the
    # window is used as much as before.
    results = {}
    for slices in (1, MOST_SLICES):
        scheduler = TestScheduler()
        window = CountingWindow(400, 1.0, 0.02, clock=scheduler, burst=20)
        starts, _ = _shared_limit_with_slow_stages(
            window,
            scheduler,
            (0.0117, 0.013, 0.0143, 0.0156),
            lag_s=0.005,
            begin_through_leases=True,
            slices=slices,
        )
        assert len(starts) == 3000
        assert max_in_window([(t, 1) for t in starts], 1.0) <= 400
        in_steady = [t for t in starts if t >= starts[0] + 1.0]
        rate = (len(in_steady) - 1) / (in_steady[-1] - in_steady[0])
        results[slices] = (window.takes / len(starts), rate / 400)
    assert results[1][0] > 0.1  # a take for each hold
    assert results[MOST_SLICES][0] <= 0.07
    assert results[MOST_SLICES][1] >= 0.98
    assert results[MOST_SLICES][1] >= results[1][1] - 0.01


def test_slices_too_small_to_fill_a_hold_of_pacing_are_not_taken() -> None:
    # The demo's own shape (its fake SES answers in 10 ms; with the HTTP client a call took about 18 ms): five
    # stages start five jobs a hold, and slices of five a hold apart asked for the window's time at 250 a
    # second for 400 tokens a second. Grants start in order, so every other process waited behind each train:
    # 91.8% of the limit used in this shape. Such takes get one grant, as before slices: the limit stays used.
    scheduler = TestScheduler()
    window = CountingWindow(400, 1.0, 0.02, clock=scheduler, burst=20)
    starts, _ = _shared_limit_with_slow_stages(
        window, scheduler, (0.0162, 0.018, 0.0198, 0.0216), lag_s=0.005, begin_through_leases=True, slices=3
    )
    assert len(starts) == 3000
    assert max_in_window([(t, 1) for t in starts], 1.0) <= 400
    in_steady = [t for t in starts if t >= starts[0] + 1.0]
    assert (len(in_steady) - 1) / (in_steady[-1] - in_steady[0]) >= 0.99 * 400
    # The window's rule: a slice of 5 paces out in 12.5 ms, under the 20 ms hold; one of 8 in 20 ms.
    window = CountingWindow(400, 1.0, 0.02, clock=lambda: 100.0, burst=20)
    assert window.take(24, 5, slice_tokens=5).later == ()
    assert [g.tokens for g in window.take(24, 5, slice_tokens=8).later] == [8, 8]


def test_a_sliced_take_grants_a_hold_apart_each_counted_as_its_own() -> None:
    now = [0.0]
    window = InProcessWindow(100, 1.0, 0.02, clock=lambda: now[0])
    grant = window.take(30, 5, slice_tokens=8)
    grants = [grant, *grant.later]
    assert [g.tokens for g in grants] == [8] * MOST_SLICES  # at most MOST_SLICES grants of 8
    assert [g.delay_s for g in grants] == pytest.approx([0.0, 0.02, 0.04])
    assert [g.ref for g in grants] == [(1,), (2,), (3,)]
    # Each is a grant of the window's own: the last slice gives back 6 of its 8, and only 2 stay counted.
    window.take(1, 1, Unused(grants[2], 6))
    assert window.take(100, 1).tokens == 100 - 8 - 8 - 2 - 1
    now[0] = 5.0  # all expired
    # A remainder smaller than min_tokens is not worth a hold: 12 asked, 8 and then 4 < 5, not granted.
    grant = window.take(12, 5, slice_tokens=8)
    assert (grant.tokens, [g.tokens for g in grant.later]) == (8, [])
    # Asked for no more than one slice, a take is one grant.
    assert window.take(8, 1, slice_tokens=8).later == ()
    # And a slice is never smaller than min_tokens, which the first item held may need.
    grant = window.take(12, 6, slice_tokens=2)
    assert (grant.tokens, [g.tokens for g in grant.later]) == (6, [6])


def _one_stage(
    window: InProcessWindow, scheduler: TestScheduler, call_s: float, items: int, **options: Any
) -> list[float]:
    """One stage whose calls take ``call_s``, behind a throttle of ``window`` with ``options`` and every slice
    a take may ask for; returns the list the start of each of ``items`` items goes to as the caller advances the
    clock."""
    demand = Demand()
    starts: list[float] = []

    def start(_item: int) -> None:
        starts.append(float(scheduler.clock))
        scheduler.schedule_relative(call_s, lambda _s, _st: demand.request(1))

    limited = throttle(window, scheduler=scheduler, slices=MOST_SLICES, **options)
    TimedSource(scheduler, [0.0] * items).pipe(limited).subscribe_with_demand(
        reactivex.Observer(start), demand, scheduler
    )
    scheduler.schedule_absolute(0.0, lambda _s, _st: demand.request(1))
    return starts


def test_slices_whose_time_went_by_unused_are_given_back() -> None:
    # One stage and a long call: the take brought three slices, the stage starts an item of the first and
    # is busy through the others' holds, so they lapse without ever being active, and the next take gives their
    # tokens back to the window.
    scheduler = TestScheduler()
    # (40 a second: a slice of one token takes a hold to pace out, so the window slices.)
    window = CountingWindow(40, 1.0, 0.02, clock=scheduler, burst=20)
    starts = _one_stage(window, scheduler, 0.2, 40, min_tokens=1, prefetch=40)
    scheduler.advance_to(0.5)
    assert starts == pytest.approx([0.0, 0.2, 0.4])
    backs = [(unused.grant.ref, unused.grant.tokens, unused.tokens) for unused in window.given_back]
    # The second take gives back the first take's later slices (grants 2 and 3) whole: none of them started.
    assert backs[:2] == [((2,), 1, 1), ((3,), 1, 1)]
    assert max_in_window([(t, 1) for t in starts], 1.0) <= 40


def test_a_slice_always_fits_the_first_item_held() -> None:
    # Items of cost 3 and a consumer that has started nothing yet (it measured no hold): slices of what it
    # starts in a hold would be 1 token each, which no item fits. A slice is never less than the take's least.
    scheduler = TestScheduler()
    window = InProcessWindow(30, 1.0, 0.02, clock=scheduler, burst=6)
    starts = _one_stage(window, scheduler, 0.01, 20, cost=lambda _i: 3, prefetch=20)
    scheduler.advance_to(5.0)
    assert len(starts) == 20
    assert max_in_window([(t, 3) for t in starts], 1.0) <= 30


class RoundTripWindow(InProcessWindow):
    """An InProcessWindow reached over a network: a take is decided half a round trip after it is sent, as a
    script runs in Redis, and answered half a round trip later; it keeps where each grant starts (its ref's g)."""

    def __init__(self, *args: Any, scheduler: TestScheduler, round_trip_s: float, **kwargs: Any) -> None:
        super().__init__(*args, clock=scheduler, **kwargs)
        self.scheduler, self.round_trip_s = scheduler, round_trip_s
        self.starts_at: dict[tuple[int, ...], float] = {}
        self.answered: list[Grant] = []

    def take(
        self,
        tokens: int,
        min_tokens: int,
        unused: Unused | Sequence[Unused] | None = None,
        slice_tokens: int = 0,
    ) -> Grant:
        self.scheduler.sleep(self.round_trip_s / 2)
        grant = super().take(tokens, min_tokens, unused, slice_tokens)
        decided_at = float(self.scheduler.clock)
        self.answered.append(grant)
        for each in (grant, *grant.later):
            self.starts_at[each.ref] = decided_at + each.delay_s
        self.scheduler.sleep(self.round_trip_s / 2)
        return grant


def test_no_item_is_released_outside_its_grant_over_a_round_trip() -> None:
    # The window decides a take between its sending and its answer: a later slice's delay counted from the
    # sending would release its items before its start (where a full window placed it, at the moment the
    # grants before expire, a start a little early counts in a second the window did not count it for).
    scheduler = TestScheduler()
    window = RoundTripWindow(40, 1.0, 0.02, scheduler=scheduler, round_trip_s=0.004, burst=4)
    releases: list[tuple[float, Lease]] = []
    demand = Demand()

    def start(_item: int) -> None:
        scheduler.schedule_relative(0.003, lambda _s, _st: demand.request(1))

    def on_release(_item: int, lease: Lease) -> None:
        releases.append((float(scheduler.clock), lease))

    limited = throttle(
        window, min_tokens=2, prefetch=30, scheduler=scheduler, on_release=on_release, slices=MOST_SLICES
    )
    TimedSource(scheduler, [0.0] * 200).pipe(limited).subscribe_with_demand(
        reactivex.Observer(start), demand, scheduler
    )
    scheduler.schedule_absolute(0.0, lambda _s, _st: demand.request(3))
    scheduler.advance_to(20.0)

    assert len(releases) == 200
    later_slices = {part.ref for grant in window.answered for part in grant.later}
    assert sum(lease.grant.ref in later_slices for _, lease in releases) >= 100  # most went in later slices
    for released_at, lease in releases:
        start_at = window.starts_at[lease.grant.ref]
        assert start_at <= released_at <= start_at + lease.grant.hold_s, (lease.grant, released_at, start_at)


def test_a_lease_tells_when_its_last_item_began() -> None:
    now = [0.0]
    grant = Grant(3, 0.0, 1.0)
    lease = Lease(grant, 11.0, lambda: now[0], lambda _lease, _item: None, begins_at=10.0)
    lease.released = 3
    now[0] = 10.2
    assert lease.begin()
    now[0] = 10.5
    assert lease.begin()
    assert not lease.settled()  # the third is still on its way
    now[0] = 11.5
    assert not lease.begin()  # after the hold: refused, and counted
    assert lease.settled()
    assert lease.close() == pytest.approx(0.5)
    # A consumer that does not begin every item through the lease tells nothing: its starts are not known.
    other = Lease(grant, 11.0, lambda: now[0], lambda _lease, _item: None, begins_at=10.0)
    other.released = 2
    now[0] = 10.1
    assert other.begin()
    assert other.close() is None
    now[0] = 10.2
    assert not other.begin()  # closed: nothing begins under it any more


def test_a_grant_shortened_to_its_starts_frees_its_tokens_sooner() -> None:
    now = [0.0]
    window = InProcessWindow(3, 10.0, 5.0, clock=lambda: now[0])
    first = window.grant(3, 3)
    now[0] = 6.0
    window.give_back(Unused(first, 0, started_within_s=1.0))
    assert window.grant(3, 3).delay_s == pytest.approx(11.0 - 6.0)  # g + 1 + period, not g + 5 + period
    # Shortened once, and never longer than its hold nor before its start.
    second = window.grant(3, 3)
    assert second.delay_s == pytest.approx(16.0 + 10.0 - 6.0)  # after the grant at 11 (not shortened)
    window.give_back(Unused(second, 0, started_within_s=-3.0))
    window.give_back(Unused(second, 0, started_within_s=4.0))
    now[0] = 30.0
    assert window.grant(3, 3).delay_s == pytest.approx(36.0 - 30.0)  # 26 + 0 + 10


@pytest.mark.parametrize(("lag_s", "released"), [(0.0, ["a", "b", "c"]), (2.0, ["a", "b"]), (9.0, ["a"])])
def test_items_are_released_a_lag_before_the_hold_ends(lag_s: float, released: list[str]) -> None:
    # A start may follow its release by up to lag_s (a thread switch to the stage): released no later than
    # hold - lag into the grant, it still starts within the hold the window counted. At most half the hold
    # is given up, so a grant is always usable.
    scheduler = TestScheduler()
    window = ScriptedWindow(scheduler, [(0.0, Grant(3, 0.0, 5.0))])
    xs = scheduler.create_hot_observable(on_next(210, "a"), on_next(212.8, "b"), on_next(213.5, "c"))

    results = scheduler.start(
        lambda: xs.pipe(throttle(window, lag_s=lag_s, scheduler=scheduler)), disposed=220
    )

    assert [message.value.value for message in results.messages] == released


def _begin_after_release(
    window: InProcessWindow,
    scheduler: TestScheduler,
    items: int,
    stages: int,
    waits: list[float],
    job_s: float,
    hand_back_late: bool,
    begin_through_lease: bool = False,
) -> tuple[list[tuple[float, int]], list[int]]:
    """A consumer whose items begin ``waits[...]`` after their release (a thread that wakes late, a starved
    process): ``stages`` at once, each running ``job_s``. With ``hand_back_late`` it looks at the item's lease
    where it begins and hands a late one back. Returns (when, item) of each begin and the late hand-backs."""
    begun: list[tuple[float, int]] = []
    late: list[int] = []
    releases: dict[int, int] = {}
    demand = Demand()

    def free_stage() -> None:
        demand.request(1)

    def begin(item: int, lease: Lease) -> None:
        refused = not lease.begin() if begin_through_lease else lease.late()
        if hand_back_late and refused:
            late.append(item)
            lease.hand_back(item)
            free_stage()
            return
        begun.append((float(scheduler.clock), item))
        scheduler.schedule_relative(job_s, lambda _s, _st: free_stage())

    def on_release(item: int, lease: Lease) -> None:
        releases[item] = releases.get(item, 0) + 1
        # The k-th release of an item begins after waits[(item + k) % len]; from its third on, at once.
        wait = waits[(item + releases[item]) % len(waits)] if releases[item] <= 2 else 0.0
        scheduler.schedule_relative(wait, lambda _s, _st: begin(item, lease))

    limited = throttle(window, min_tokens=1, prefetch=20, scheduler=scheduler, on_release=on_release)
    # One more item that never comes, so the source stays open while items may come back (as a JobSource does
    # until every job it fetched is settled).
    TimedSource(scheduler, [0.0] * items + [1e9]).pipe(limited).subscribe_with_demand(
        reactivex.Observer(lambda _item: None), demand, scheduler
    )
    scheduler.schedule_absolute(0.0, lambda _s, _st: demand.request(stages))
    scheduler.advance_to(10_000.0)
    return begun, late


@settings(max_examples=150, deadline=None)
@given(
    allowed=st.integers(1, 8),
    period=st.sampled_from([1.0, 2.0, 5.0]),
    hold=st.sampled_from([0.1, 0.5, 1.0]),
    items=st.integers(1, 40),
    stages=st.integers(1, 6),
    waits=st.lists(st.sampled_from([0.0, 0.05, 0.3, 0.6, 1.5]), min_size=1, max_size=8),
    job_s=st.sampled_from([0.0, 0.2, 1.0]),
    through_lease=st.booleans(),
)
def test_items_handed_back_when_late_begin_within_the_limit_once_each(
    allowed: int,
    period: float,
    hold: float,
    items: int,
    stages: int,
    waits: list[float],
    job_s: float,
    through_lease: bool,
) -> None:
    # Released in time, an item may still begin after its grant's hold; the window counted the hold only.
    # Looked at where it begins, a late item goes back: it begins once, with a later grant, and every
    # period still holds at most `allowed` begins (the tokens it gave back never started). Begun through its
    # lease, a grant also tells the window when its last item began, and is counted only until then.
    scheduler = TestScheduler()
    window = InProcessWindow(allowed, period, hold, clock=scheduler)
    begun, _ = _begin_after_release(
        window, scheduler, items, stages, waits, job_s, hand_back_late=True, begin_through_lease=through_lease
    )

    assert sorted(item for _, item in begun) == list(range(items))
    assert max_in_window([(at, 1) for at, _ in begun], period) <= allowed


def test_items_that_begin_after_the_hold_break_the_limit_unless_handed_back() -> None:
    # Three items a period; each grant's items begin 0.6 s into a 0.5 s hold. Begun anyway, a period holds the
    # late begins of one grant and the prompt ones of the next; handed back, they begin with a grant of their
    # own, and the tokens they left are given back.
    begins = {}
    for hand_back_late in (False, True):
        scheduler = TestScheduler()
        window = InProcessWindow(3, 2.0, 0.5, clock=scheduler)
        begun, late = _begin_after_release(window, scheduler, 9, 3, [0.6, 0.0], 0.1, hand_back_late)
        assert sorted(item for _, item in begun) == list(range(9))
        begins[hand_back_late] = max_in_window([(at, 1) for at, _ in begun], 2.0)
        if hand_back_late:
            assert late
    assert begins[False] > 3
    assert begins[True] <= 3


def test_a_grant_gives_back_again_what_came_back_after_its_first_give_back() -> None:
    now = [0.0]
    window = InProcessWindow(10, 10.0, 1.0, clock=lambda: now[0])
    grant = window.grant(6, 1)
    now[0] = 2.0
    window.give_back(Unused(grant, 2))  # the rest lapsed: 4 counted
    window.give_back(Unused(grant, 1))  # as if never given back before: not this grant's entry any more
    assert window.grant(10, 1).tokens == 6
    window.give_back(Unused(grant, 1, already=2))  # a late item came back: 3 counted
    assert window.grant(10, 1).tokens == 1
