"""throttle: start items only with tokens from a sliding-window limiter, exact across processes and hosts.

A :class:`TokenWindow` hands out :class:`Grant` s; :class:`InProcessWindow` is the in-memory one (tests,
single-process pipelines), flume_rx's store holds the Redis one shared by a cluster. Both follow the
algorithm of DEVELOPERS.md "The token window".

(Longer than the ~600 lines flume_rx keeps its modules to, on purpose: the operator, the grant it consumes and
the in-process window that mirrors take_tokens.lua change together; a property test holds that window and the
Lua script to the same decisions.)
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable, Disposable, SerialDisposable
from reactivex.observer import Observer
from reactivex.scheduler import TimeoutScheduler, VirtualTimeScheduler

from ._adaptive import AdaptiveTuning, accepted_per_period, ceiling_after_refusal, probed_rate, recovery_s
from ._async_bridge import from_result
from ._flow import Demand, Flowable, StreamEnd, drain_loop, subscribe_upstream

_T = TypeVar("_T")

EventHook = Callable[[str, dict[str, Any]], None]
"""Told ``("granted", {"tokens", "wait_ms"})``, ``("waited", {"tokens", "wait_ms"})`` when a grant starts in
the future, ``("lapsed", {"tokens"})`` when granted tokens expire unused, and ``("late", {"tokens"})`` when a
released item comes back unstarted (:meth:`Lease.hand_back`)."""


@dataclass(frozen=True, slots=True)
class Grant:
    """Tokens a :class:`TokenWindow` handed out.

    Attributes:
        tokens: how many items (or cost units) may start (>= 1).
        delay_s: the caller may start them this long after it asked (0 = now).
        hold_s: and must start them within ``hold_s`` after that; tokens not used by then lapse.
    """

    tokens: int
    delay_s: float
    hold_s: float
    ref: tuple[int, ...] = field(default=(), compare=False, repr=False)
    """Which grant of its window this is, so a later take can give back the tokens it left unused; empty when
    the window takes nothing back."""
    later: tuple[Grant, ...] = field(default=(), compare=False, repr=False)
    """Grants of the same take that start after this one, in order, each at least a hold after the one before
    (asked for with ``slice_tokens``): each has its own ``delay_s`` from the same asking, its own hold and
    ``ref``, and counts in the window as a grant of its own."""


@dataclass(frozen=True, slots=True)
class Unused:
    """Tokens of an earlier grant that its caller will never start (they lapsed, or the next item did not fit),
    and, when known, how soon after the grant's start its items that did start had all started.

    Given to :meth:`TokenWindow.take` only once the caller can no longer start them (DEVELOPERS.md, "The token
    window", giving back), so the window may stop counting them.
    """

    grant: Grant
    tokens: int
    already: int = 0
    """Tokens of the same grant given back before: its entry in the window now counts ``grant.tokens -
    already``. A grant gives back more than once when an item released under it comes back after its rest
    lapsed (:meth:`Lease.hand_back`)."""
    started_within_s: float | None = None
    """When known, every item of the grant that started did so within this long after the grant's start (at
    most its hold): the window may stop counting the grant that long after its start plus a period, instead of
    a whole hold after, since none of it starts later (``tokens`` may then be 0). Known only once no item of
    the grant can start any more."""

    @property
    def tells_nothing(self) -> bool:
        """No token to give back and no span: a window has nothing to do with it."""
        return self.tokens < 1 and self.started_within_s is None


class Lease:
    """What a released item holds of its grant: the item must begin by :attr:`start_by`, or go back.

    The window counts a grant's starts within its hold, so an item whose first line runs after the hold (a
    CPU-starved process, a thread that woke late) would start outside what the window counted. A consumer
    that calls :meth:`begin` where the item really begins, and :meth:`hand_back` instead of starting it when
    that says no, keeps the limit exact for starts. One lease is shared by every item of a grant.

    When every item released under it was begun or refused through :meth:`begin`, the lease also knows when
    the last of them started: the throttle tells the window, which then stops counting the grant that much
    sooner than a whole hold after its start (:attr:`Unused.started_within_s`).

    Attributes:
        start_by: the last moment on the throttle's clock an item of this grant may begin (the end of the
            grant's hold, measured from when its take was sent, so never after the window's).
    """

    __slots__ = (
        "_begun",
        "_closed",
        "_hand_back",
        "_last_start",
        "_lock",
        "_now",
        "_refused",
        "begins_at",
        "grant",
        "released",
        "start_by",
    )

    def __init__(
        self,
        grant: Grant,
        start_by: float,
        now: Callable[[], float],
        hand_back: Callable[[Lease, Any], None],
        begins_at: float | None = None,
    ) -> None:
        self.grant = grant
        self.start_by = start_by
        # The earliest the grant's start can lie on the throttle's clock (its take's sending plus its delay).
        self.begins_at = start_by - grant.hold_s if begins_at is None else begins_at
        self.released = 0  # items released under it (counted by the throttle, on its own thread)
        self._now = now
        self._hand_back = hand_back
        self._lock = threading.Lock()
        self._begun = 0
        self._refused = 0
        self._last_start = -math.inf
        self._closed = False

    def late(self) -> bool:
        """Whether an item of this grant beginning now would begin after the hold (safe from any thread)."""
        return self._now() > self.start_by

    def begin(self) -> bool:
        """Where an item really begins: whether it may (False: it would begin after the hold; hand it back).
        Safe from any thread; counts the item either way."""
        with self._lock:
            now = self._now()
            if self._closed or now > self.start_by:
                self._refused += 1
                return False
            self._begun += 1
            self._last_start = max(self._last_start, now)
            return True

    def settled(self) -> bool:
        """Whether every item released under it has begun or been refused through :meth:`begin`."""
        with self._lock:
            return self._begun + self._refused == self.released

    def close(self) -> float | None:
        """No item of it begins from now on (:meth:`begin` refuses); how long after :attr:`begins_at` its last
        item began, within ``[0, hold]``. Call it once nothing more will be released under it and it is
        :meth:`settled`, or once past :attr:`start_by`. None when an item released under it was never begun
        or refused through :meth:`begin` (a consumer that does not call it), or none began."""
        with self._lock:
            self._closed = True
            if not self._begun or self._begun + self._refused != self.released:
                return None
            return min(self.grant.hold_s, max(0.0, self._last_start - self.begins_at))

    def hand_back(self, item: Any) -> None:
        """Give ``item`` back to the throttle unstarted: it goes first in line for the next grant, and its
        tokens are given back to the window with the next take. Call it where the throttle emits (the
        pipeline's loop), once, for an item this lease was released with, and never start that item.

        The throttle must still be live: once its upstream has completed and it held nothing, it completed
        too, and an item handed back after that is left to whoever handed it out (a JobSource completes only
        once every job it fetched is settled, so a pipeline's jobs always find it live)."""
        self._hand_back(self, item)


class TokenWindow(Protocol):
    """A sliding-window rate limit: no more than ``allowed`` starts in any ``period_s``."""

    @property
    def allowed(self) -> int:
        """Tokens per period: the configured maximum."""
        ...

    @property
    def period_s(self) -> float:
        """The length of the sliding window, in seconds."""
        ...

    def take(
        self,
        tokens: int,
        min_tokens: int,
        unused: Unused | Sequence[Unused] | None = None,
        slice_tokens: int = 0,
    ) -> Grant | Awaitable[Grant]:
        """Ask for up to ``tokens``: one Grant of at least ``min(tokens, min_tokens)``, or an awaitable of it
        (a window shared through Redis answers after a round trip). Never a stream: the throttle makes that
        (:func:`~flume_rx.operators.from_result`).

        ``unused`` gives back, in the same call, tokens of earlier grants (ones with a ``ref``) that will
        never start; a window that cannot find such a grant any more ignores it. Callers pass it only for
        grants whose ``ref`` is set, so a window whose grants have none need not accept it.

        ``slice_tokens`` (when >= 1) lets the window answer with at most that many tokens in the grant and the
        rest in :attr:`Grant.later`, each a hold after the one before: one call for what a consumer starts in
        several holds. Callers pass it only when they ask for more than that, so a window that never slices
        need not accept it.
        """
        ...

    def penalize(self, refused: int = 1, age_s: float = 0.0) -> float | Awaitable[float]:
        """Report ``refused`` calls the limited service refused, the first of them started ``age_s`` ago; in
        adaptive mode the shared rate is aimed at what it accepted (see :mod:`._adaptive`). Returns the new
        effective rate, or an awaitable of it."""
        ...

    def current_rate(self) -> float:
        """The last known effective tokens per period."""
        ...


MOST_SLICES = 3
"""The most grants one take is answered with (:attr:`Grant.later`): enough that a consumer whose stages start
only a few items a hold takes tokens for several holds in one call, few enough that what it reserves ahead
(and gives back, if its items run out) stays small."""


def given_back(unused: Unused | Sequence[Unused] | None) -> tuple[Unused, ...]:
    """What a take gives back, as a tuple: ``unused`` may be one :class:`Unused`, several, or None."""
    if unused is None:
        return ()
    if isinstance(unused, Unused):
        return (unused,)
    return tuple(unused)


def _refusal_reports(window: TokenWindow) -> int:
    """How many refusals were reported to ``window`` so far; 0 for a window that does not count them (one that is
    not adaptive never cuts its rate, so its grants stay good)."""
    return int(getattr(window, "refusal_reports", 0))


def _now_s(scheduler: abc.SchedulerBase) -> float:
    # Virtual schedulers keep a float clock; their datetime `now` would round it to microseconds.
    if isinstance(scheduler, VirtualTimeScheduler):
        return scheduler.to_seconds(scheduler.clock)
    return scheduler.to_seconds(scheduler.now)


class InProcessWindow:
    """A :class:`TokenWindow` in this process's memory, on a clock of your choice.

    Each grant is recorded at its start time ``g`` (non-decreasing from grant to grant) and counts until
    ``g + hold_s + period_s``, or ``g + s + period_s`` once its taker said its starts all came within ``s``
    (:attr:`Unused.started_within_s`); a take that cannot have ``min_tokens`` now is given a reservation at
    the earliest time they are free. So any ``period_s`` of starts holds at most ``allowed`` tokens, and a
    steady backlog gets ``period_s / (period_s + s)`` of the rate, ``s`` at most the hold.

    Adaptive mode: :meth:`penalize` sets the rate from what the downstream accepted over the last period
    (tokens started minus calls refused) and then probes upward, never above ``allowed`` (see
    :func:`probed_rate` and :func:`ceiling_after_refusal`).

    Args:
        allowed: tokens per period (>= 1).
        period_s: the sliding window, in seconds (> 0).
        hold_s: how long after its start a grant may be used, in seconds (>= 0).
        clock: seconds as a float: a function, or a scheduler (use the pipeline's, so virtual time works);
            ``time.monotonic`` when None.
        adaptive: whether :meth:`penalize` lowers the rate (otherwise it only reports it).
        tuning: how the adaptive rate cuts and probes (:class:`AdaptiveTuning` defaults when None).
        burst: pace grants to one token every ``period_s / allowed``, at most ``burst`` at once (GCRA), so a
            backlog is served smoothly rather than in one burst per period; None for the plain window.

    ::

        take(3, 1) at t=0  -> Grant(3, 0, hold)             (allowed=3, period=10)
        take(3, 1) at t=1  -> Grant(3, 9 + hold, hold)      (a reservation once the first expires)

    >>> window = InProcessWindow(3, 10.0, 0.0, clock=lambda: 0.0)
    >>> window.take(2, 1)
    Grant(tokens=2, delay_s=0.0, hold_s=0.0)
    >>> window.take(5, 1)
    Grant(tokens=1, delay_s=0.0, hold_s=0.0)
    >>> window.take(5, 2)
    Grant(tokens=3, delay_s=10.0, hold_s=0.0)
    """

    def __init__(
        self,
        allowed: int,
        period_s: float,
        hold_s: float = 0.02,
        *,
        clock: Callable[[], float] | abc.SchedulerBase | None = None,
        adaptive: bool = False,
        tuning: AdaptiveTuning | None = None,
        burst: int | None = None,
    ) -> None:
        if burst is not None and burst < 1:
            raise ValueError(f"burst must be >= 1 token or None for no pacing (got {burst})")
        if allowed < 1:
            raise ValueError(f"allowed must be >= 1 token per period (got {allowed})")
        if not period_s > 0:
            raise ValueError(f"period_s must be a positive number of seconds (got {period_s})")
        if not hold_s >= 0:
            raise ValueError(f"hold_s must be >= 0 seconds (got {hold_s})")
        self._allowed = allowed
        self._period_s = period_s
        self.hold_s = hold_s
        self.adaptive = adaptive
        self.tuning = tuning or AdaptiveTuning()
        if clock is None:
            self._clock: Callable[[], float] = time.monotonic
        elif isinstance(clock, abc.SchedulerBase):
            scheduler = clock
            self._clock = lambda: _now_s(scheduler)
        else:
            self._clock = clock
        self._lock = threading.Lock()
        # (expires_at, tokens, g) in grant order; expires_at = g + hold + period, or less once shortened
        # (Unused.started_within_s), so only g is in order: the walk sorts by expires_at.
        self._grants: deque[tuple[float, int, float]] = deque()
        self._first_seq = 1  # the sequence number (Grant.ref) of _grants[0]; grants are numbered from 1
        self._last_start = -math.inf
        self.burst = burst
        self._paced_until = -math.inf  # GCRA's theoretical arrival time of the next token
        # The adaptive state: the ceiling the last refusal measured and when (None: never refused).
        self._ceiling: float | None = None
        self._cut_at = 0.0
        self._refusals: deque[tuple[float, int]] = deque()  # (when, how many) within the last period
        self.refusal_reports = 0
        """Refusals reported to this window so far (adaptive mode): a throttle stops using a grant taken before
        the latest one."""

    @property
    def allowed(self) -> int:
        return self._allowed

    @property
    def period_s(self) -> float:
        return self._period_s

    def _rate_at(self, now: float, asked: int = 0) -> float:
        # Called with the lock held. `asked`: the tokens of the take being decided, in use as much as those
        # granted (take_tokens.lua adds them too; see AdaptiveTuning.headroom).
        if self._ceiling is None:
            return float(self._allowed)
        # Tokens of the grants still counted: those of the last period (and hold), as take_tokens.lua's sum.
        used = sum(count for expires_at, count, _g in self._grants if expires_at > now)
        if not used and now - self._cut_at >= recovery_s(
            self._ceiling, self._allowed, self._period_s, self.tuning
        ):
            # Quiet since the probe would be back at allowed: forgotten, as the Redis window's state expires.
            self._ceiling = None
            return float(self._allowed)
        return probed_rate(
            self._ceiling, now - self._cut_at, self._allowed, self._period_s, self.tuning, used=used + asked
        )

    def current_rate(self) -> float:
        """The effective tokens per period now (``allowed`` unless refused and not yet probed back up)."""
        with self._lock:
            return self._rate_at(self._clock())

    def grant(
        self,
        tokens: int,
        min_tokens: int,
        unused: Unused | Sequence[Unused] | None = None,
        slice_tokens: int = 0,
    ) -> Grant:
        """The synchronous core of :meth:`take`: up to ``tokens``, at least ``min(tokens, min_tokens)``,
        after giving back ``unused`` (see :meth:`give_back`); with ``slice_tokens``, in at most
        :data:`MOST_SLICES` grants of at most that many (or ``min_tokens``, if more), each a hold after the one
        before, and later ones only when a slice's tokens take at least a hold to pace out (DEVELOPERS.md, "The
        token window", slices).

        Raises:
            ValueError: when ``tokens`` or ``min_tokens`` is below 1, or ``slice_tokens`` below 0.
        """
        if tokens < 1:
            raise ValueError(f"tokens must be >= 1 (got {tokens})")
        if min_tokens < 1:
            raise ValueError(f"min_tokens must be >= 1 (got {min_tokens})")
        if slice_tokens < 0:
            raise ValueError(f"slice_tokens must be >= 0 (got {slice_tokens}); 0 asks for one grant")
        with self._lock:
            now = self._clock()
            grants = self._grants
            while grants and grants[0][0] <= now:
                grants.popleft()
                self._first_seq += 1
            for each in given_back(unused):
                self._give_back(each)
            wanted = min(tokens, self._allowed)
            capacity = max(1, math.floor(self._rate_at(now, wanted)))
            wanted = min(wanted, capacity)
            least = min(min_tokens, wanted)
            # A slice is never smaller than the take's least: its first item may need that many.
            per_slice = max(slice_tokens, least) if slice_tokens else wanted
            first = self._grant_one(now, max(now, self._last_start), min(wanted, per_slice), least, capacity)
            later: list[Grant] = []
            left = wanted - first.tokens
            # Later slices only when a slice's tokens take at least a hold to pace out: grants start in order,
            # so a slice a hold after the one before holds every other caller's grants back that long, and
            # smaller slices would hand out the window's time faster than its tokens.
            keeps_pace = per_slice * self._period_s / capacity >= self.hold_s
            while slice_tokens and keeps_pace and left > 0 and len(later) + 1 < MOST_SLICES:
                size = min(left, per_slice)
                if size < least:
                    break  # a remainder smaller than a take would ask for: not worth reserving a hold for
                # A hold after the slice before: the consumer has started that one by then.
                grant = self._grant_one(now, self._last_start + self.hold_s, size, least, capacity)
                later.append(grant)
                left -= grant.tokens
            return replace(first, later=tuple(later)) if later else first

    def _grant_one(self, now: float, start: float, wanted: int, min_tokens: int, capacity: int) -> Grant:
        # Called with the lock held: one grant of up to `wanted` tokens starting no earlier than `start`.
        grants = self._grants
        need = min(wanted, min_tokens, capacity)
        used = sum(count for expires_at, count, _g in grants if expires_at > start)
        at = start
        if capacity - used < need:
            for expires_at, count, _g in sorted(grants):
                if expires_at <= start:
                    continue
                used -= count
                at = expires_at
                if capacity - used >= need:
                    break
        # Grants expiring at the same instant as `at` are free too: include them all.
        used = sum(count for expires_at, count, _g in grants if expires_at > at)
        granted = max(1, min(wanted, capacity - used))
        if self.burst is not None:
            # Pacing only ever moves a start later, which the sliding window always allows.
            most = max(self.burst, need)
            granted = min(granted, most)
            interval = self._period_s / capacity
            at = max(at, self._paced_until + (granted - most) * interval)
            self._paced_until = max(self._paced_until, at) + granted * interval
        grants.append((at + self.hold_s + self._period_s, granted, at))
        self._last_start = at
        return Grant(granted, at - now, self.hold_s, (self._first_seq + len(grants) - 1,))

    def give_back(self, unused: Unused) -> None:
        """Stop counting ``unused.tokens`` of ``unused.grant``, which its caller will never start, and count
        the rest only until ``unused.started_within_s`` after its start (plus a period) when that is given.

        Safe for the limit only once the caller can no longer start them (DEVELOPERS.md, "The token window"):
        every later grant then sees the tokens that really start, when they started. A grant no longer
        counted, or not of this window, is left alone, and one is shortened once. Pacing is given the tokens
        back too, as if the grant had been smaller.
        """
        with self._lock:
            self._give_back(unused)

    def _give_back(self, unused: Unused) -> None:
        # Called with the lock held.
        if len(unused.grant.ref) != 1 or unused.tells_nothing:
            return
        within = unused.started_within_s
        index = unused.grant.ref[0] - self._first_seq
        if not 0 <= index < len(self._grants):
            return  # expired already: it counts no more
        expires_at, count, g = self._grants[index]
        if expires_at <= max(self._clock(), self._last_start):
            return  # counts for no later grant: nothing to give back, pacing included (as take_tokens.lua)
        if count != unused.grant.tokens - unused.already:
            return  # given back since, or never given back as the caller thinks: left alone, as take_tokens.lua
        back = min(max(0, unused.tokens), count)
        if within is not None and expires_at >= g + self.hold_s + self._period_s:
            expires_at = g + max(0.0, min(self.hold_s, within)) + self._period_s
        self._grants[index] = (expires_at, count - back, g)
        if back and self.burst is not None:
            capacity = max(1, math.floor(self._rate_at(self._clock())))
            self._paced_until -= back * self._period_s / capacity

    def take(
        self,
        tokens: int,
        min_tokens: int,
        unused: Unused | Sequence[Unused] | None = None,
        slice_tokens: int = 0,
    ) -> Grant:
        """:meth:`grant`, under the name :class:`TokenWindow` gives it."""
        return self.grant(tokens, min_tokens, unused, slice_tokens)

    def refuse(self, refused: int = 1, age_s: float = 0.0) -> float:
        """The synchronous core of :meth:`penalize`: record ``refused`` refusals, the first of them of a call
        started ``age_s`` ago; returns the new rate.

        Raises:
            ValueError: when ``refused`` is below 1 or ``age_s`` is negative.
        """
        if refused < 1:
            raise ValueError(f"refused must be >= 1 (got {refused})")
        if not age_s >= 0:
            raise ValueError(f"age_s must be >= 0 seconds (got {age_s})")
        with self._lock:
            now = self._clock()
            current = self._rate_at(now)
            if not self.adaptive:
                return current
            self.refusal_reports += 1
            period = self._period_s
            refusals = self._refusals
            # The period that ended when the refused call started, as penalize.lua measures: what the downstream
            # had accepted when it refused. Calls started since are still under way (after a refusal, most will
            # be refused too) and do not count.
            until = now - age_s
            since = until - period
            refusals.append((until, refused))
            while refusals and refusals[0][0] <= since - period:
                refusals.popleft()
            # A grant's calls start within [g, g + hold], so those of a grant from up to a hold before the period
            # may lie in it, and count. The downstream refuses just before a burst leaves its period (that is when
            # it is full): counting from the period's start alone missed that burst whenever its calls started a
            # moment after g or the age read a tick long (a 70/s downstream raised to 83/s read 73, and the rate
            # kept under 90% of 83 for 3.3 s more). At worst a burst too many instead, and a refusal never raises
            # the rate.
            # Grants stay in the deque until g + hold + period, so all of these are there; one shortened
            # (Unused.started_within_s) may leave sooner, once all its calls lie before the period.
            started = sum(count for _expires_at, count, g in self._grants if since - self.hold_s < g <= until)
            refused_then = sum(count for at, count in refusals if since < at <= until)
            accepted = accepted_per_period(started, refused_then, period, period)
            self._ceiling = ceiling_after_refusal(current, accepted, self.tuning)
            self._cut_at = now
            return self._rate_at(now)

    def penalize(self, refused: int = 1, age_s: float = 0.0) -> float:
        """:meth:`refuse`, under the name :class:`TokenWindow` gives it."""
        return self.refuse(refused, age_s)


def throttle(
    window: TokenWindow,
    *,
    cost: Callable[[_T], int] = lambda _item: 1,
    min_tokens: int | None = None,
    prefetch: int = 0,
    lag_s: float = 0.0,
    scheduler: abc.SchedulerBase | None = None,
    on_event: EventHook | None = None,
    on_release: Callable[[_T, Lease], None] | None = None,
    slices: int = 1,
) -> Callable[[Observable[_T]], Flowable[_T]]:
    """Emit items only as tokens of ``window`` allow: never more than ``window.allowed`` per sliding period.

    Items that downstream has requested are held while one take for the sum of their costs is out; the
    grant's items are emitted in order after its ``delay_s``, and none later than ``delay_s + hold_s`` after
    the take was *sent* (measured from sending, not from the answer, so a slow window errs on the safe
    side). Tokens not used in time lapse and the items wait for the next grant. Items arriving while a grant
    still has tokens use them. Waiting never errors; an error from ``window.take`` goes downstream.

    Demand-aware: requests from upstream only as many items as downstream has requested, so it never holds
    more than that, unless ``prefetch`` lets it hold more. Subscribed plainly it is an ordinary
    rate-limiting operator.

    With ``prefetch``, it holds up to that many items (or downstream's demand, if more), asking upstream
    again when they fall to half, and a take may ask tokens for more items than downstream wants right
    now: the rest are emitted as downstream asks, within the grant's hold, and lapse after it. A take covers
    as many items as the consumer starts in one hold, measured from its grants (a grant that lapsed counts
    them exactly; one used up early says at least that many), so a fast consumer makes few takes and a slow
    one leaves few tokens to lapse. Items still go downstream only as requested, so a consumer that starts
    what it receives keeps the window exact.

    Tokens that lapse (or that the next item's cost does not fit) are given back to the window with the next
    take, in the same call, when its grants carry a ``ref``: by then the throttle can no longer release them,
    so the window may stop counting them (DEVELOPERS.md, "The token window").

    Args:
        window: the token window, shared by every throttle that must stay under one limit.
        cost: tokens an item needs, clamped to ``[1, window.allowed]``.
        min_tokens: the fewest tokens worth a grant (fewer means more takes per item, more means waiting
            for a bigger grant); the first item's cost when None, and never less than it.
        prefetch: items held even when downstream asks for fewer, so a take can cover more than downstream
            asks for at once (0: hold only what downstream requested).
        lag_s: how long an item may take from its release to its real start (a job's first line runs on a
            stage thread, after a thread switch): items are released no later than ``hold_s - lag_s`` into a
            grant (at most half the hold is given up), so they start within the hold the window counted.
        scheduler: where delays run and time is read (else the subscriber's, else TimeoutScheduler).
        on_event: optional telemetry hook, see :data:`EventHook`.
        on_release: told each item with its grant's :class:`Lease` just before the item goes downstream, so
            the consumer can check at the item's real start that it is not late, and hand it back if it is
            (without it, a start later than ``lag_s`` after its release may fall outside the hold).
        slices: with ``prefetch``, how many holds' worth of items one take may ask tokens for (at most
            :data:`MOST_SLICES`): the window answers with one grant per hold (:attr:`Grant.later`), each
            counted as its own, so a consumer that starts few items a hold makes one take for several holds
            and the window counts each slice only until its own last start. 1 asks for one grant a take.

    Returns:
        An operator from an Observable to a Flowable of the same items.

    ::

        source:  abcd|                     (allowed=2 per 10 ticks, hold=0)
        result:  ab--------cd|             c and d wait until the grants of a and b expire at 10

    >>> import reactivex
    >>> from reactivex.testing import TestScheduler
    >>> scheduler = TestScheduler()
    >>> window = InProcessWindow(2, 10.0, 0.0, clock=scheduler)
    >>> times = []
    >>> _ = reactivex.from_iterable("abcd").pipe(throttle(window, scheduler=scheduler)).subscribe(
    ...     lambda item: times.append((item, float(scheduler.clock))))
    >>> _ = scheduler.start()
    >>> times
    [('a', 0.0), ('b', 0.0), ('c', 10.0), ('d', 10.0)]
    """
    if min_tokens is not None and min_tokens < 1:
        raise ValueError(f"min_tokens must be >= 1 (got {min_tokens}); None means the first item's cost")
    if not 0 <= lag_s < math.inf:
        raise ValueError(f"lag_s must be a finite number of seconds >= 0 (got {lag_s})")
    if prefetch < 0:
        raise ValueError(f"prefetch must be >= 0 items (got {prefetch}); 0 holds only what was requested")
    if not 1 <= slices <= MOST_SLICES:
        raise ValueError(f"slices must be from 1 to {MOST_SLICES} grants a take (got {slices})")
    allowed = window.allowed
    if allowed < 1:
        raise ValueError(f"window.allowed must be >= 1 (got {allowed})")

    def operator(source: Observable[_T]) -> Flowable[_T]:
        def subscribe(
            observer: abc.ObserverBase[_T], demand: Demand, scheduler_: abc.SchedulerBase | None
        ) -> abc.DisposableBase:
            clock = scheduler or scheduler_ or TimeoutScheduler.singleton()
            lock = threading.Lock()
            upstream = Demand.unlimited() if demand.unbounded else Demand()
            held: deque[tuple[_T, int]] = deque()
            phase = _IDLE
            tokens = 0  # of the active grant
            deadline = 0.0
            cost_cap = allowed
            upstream_done = False
            requested = 0  # items asked of upstream and not yet received
            end = StreamEnd()
            take_subscription = SerialDisposable()
            delay_timer = SerialDisposable()
            granted_tokens = 0  # of the active grant, to tell how many were used when it ends
            # The window's refusal reports when the take of the active grant (or of the one awaited) was sent:
            # a grant asked for before a refusal was reported is at the rate the downstream has just refused,
            # however late it arrives.
            reports_at_grant = 0
            reports_at_take = 0
            active: Grant | None = None
            activated_at = 0.0
            # With prefetch, a take covers the items the consumer starts in a hold, as measured (at least the
            # demand); the first covers min_tokens.
            starts = _StartsPerHold(max(1, min_tokens or 1), prefetch)
            give_backs = _GiveBacks()  # tokens of past grants that will never start, for the next takes
            lease: Lease | None = None  # of the active grant, told to on_release with each item
            # Leases not closed yet, oldest first: each grant tells the window when its items began (and what
            # lapsed) once it releases no more and they have all begun or gone back, or its hold is over.
            open_grants: deque[_OpenGrant] = deque()
            # The later grants of the last take (Grant.later), each activated in turn once the one before ends;
            # when that take was sent and when its answer came (their delays count from the window's decision,
            # which lies between the two).
            later: deque[Grant] = deque()
            later_sent_at = later_answered_at = 0.0

            def event(name: str, **fields: Any) -> None:
                if on_event is not None:
                    on_event(name, fields)

            def next_signal() -> Callable[[], None] | None:
                # Called with the lock held, once drain_loop found the stream going: what to do next outside
                # the lock, or None.
                nonlocal phase, tokens, cost_cap, reports_at_take
                if phase == _ACTIVE:
                    lapsed = 0
                    if _refusal_reports(window) != reports_at_grant:
                        # The downstream refused a call since this grant was asked for, and the adaptive rate
                        # is being cut: the rest of the grant would start calls it is refusing (its limit is
                        # full for now), so they lapse, and the next take waits for the lower rate.
                        lapsed, tokens = tokens, 0
                    elif _now_s(clock) > deadline:
                        lapsed, tokens = tokens, 0
                        if prefetch and activated_at < deadline:
                            # The consumer had tokens all its hold: what it used is exactly what it starts in one.
                            # (A grant that arrived after its deadline says nothing about the consumer.)
                            starts.lapsed(granted_tokens - lapsed)
                    elif held and min(held[0][1], cost_cap) <= tokens:
                        if demand.take(1):
                            item, item_cost = held.popleft()
                            tokens -= min(item_cost, cost_cap)
                            if tokens == 0 and prefetch:
                                took = _now_s(clock) - activated_at
                                starts.used_up(granted_tokens, took, deadline - activated_at)
                            if on_release is not None and lease is not None:
                                return functools.partial(release, item, lease)
                            return lambda: observer.on_next(item)
                        return None
                    elif held:
                        # The next item does not fit: keeping the rest would only delay the next take.
                        lapsed, tokens = tokens, 0
                    if tokens == 0:
                        phase = _IDLE
                    if lapsed:
                        if active is not None:
                            # Past the deadline (or dropped above), so none of them can start any more.
                            never_start(active, lapsed)
                        return lambda: event("lapsed", tokens=lapsed)
                if phase == _IDLE and later:
                    now = _now_s(clock)
                    refused = _refusal_reports(window) != reports_at_take
                    while later and (refused or now > release_by(later[0], later_sent_at)):
                        # Its time went by while nothing was held to start, or the downstream refused calls
                        # since it was asked for (see above): none of it will start.
                        stale = later.popleft()
                        give_backs.add(stale, stale.tokens)
                    if later and held and demand.pending > 0:
                        phase = _TAKING  # waits for the grant a take already brought
                        upcoming = later.popleft()
                        return functools.partial(await_slice, upcoming, later_sent_at, later_answered_at)
                if phase == _IDLE and held and demand.pending > 0 and not later:
                    cap = max(1, min(allowed, math.floor(window.current_rate())))
                    covered = max(demand.pending, starts.goal * slices) if prefetch else demand.pending
                    wanted = 0
                    for index, (_item, item_cost) in enumerate(held):
                        if index >= covered or wanted >= allowed:
                            break
                        wanted += min(item_cost, cap)
                    first = min(held[0][1], cap)
                    least = min(wanted, max(first, min_tokens or first))
                    # Sliced by what the consumer starts in a hold, when it asks for more than that.
                    # (Never smaller than the take's least, so a slice always fits the first item held.)
                    per_slice = max(starts.goal, least)
                    per_slice = per_slice if prefetch and slices > 1 and wanted > per_slice else 0
                    phase = _TAKING
                    cost_cap = cap
                    sent_at = _now_s(clock)
                    reports_at_take = _refusal_reports(window)
                    close_settled(sent_at)
                    back = give_backs.take_all()
                    return lambda: send_take(wanted, least, sent_at, back, per_slice)
                if upstream_done and not held and phase != _TAKING:
                    end.stopped = True
                    return observer.on_completed
                return None

            def send_take(
                wanted: int, least: int, sent_at: float, back: tuple[Unused, ...], per_slice: int
            ) -> None:
                got: list[Grant] = []

                def on_grant(grant: Grant) -> None:
                    nonlocal later_sent_at, later_answered_at
                    got.append(grant)
                    if grant.later:
                        with lock:
                            later.extend(grant.later)
                            later_sent_at, later_answered_at = sent_at, _now_s(clock)
                        for upcoming in grant.later:
                            event("granted", tokens=upcoming.tokens, wait_ms=upcoming.delay_s * 1000.0)
                    granted(grant, sent_at)

                def on_take_completed() -> None:
                    if not got:
                        on_error(RuntimeError("the token window completed a take without granting tokens"))

                # Passed only when there is something to give back, or to slice: a window whose grants carry
                # no ref, or a throttle that asks for one grant a take, need not know the arguments.
                def take() -> Grant | Awaitable[Grant]:
                    if per_slice:
                        return window.take(wanted, least, back, slice_tokens=per_slice)
                    return window.take(wanted, least, back) if back else window.take(wanted, least)

                take_subscription.disposable = from_result(take).subscribe(
                    on_grant, on_error, on_take_completed, scheduler=scheduler_
                )

            def granted(grant: Grant, sent_at: float) -> None:
                wait_ms = grant.delay_s * 1000.0
                event("granted", tokens=grant.tokens, wait_ms=wait_ms)
                if grant.delay_s > 0:
                    event("waited", tokens=grant.tokens, wait_ms=wait_ms)
                    delay_timer.disposable = clock.schedule_relative(
                        grant.delay_s, lambda _s, _st: activate(grant, sent_at)
                    )
                else:
                    activate(grant, sent_at)

            def release_by(grant: Grant, sent_at: float) -> float:
                # The last moment an item of `grant` (of a take sent at `sent_at`) may be released: the end of
                # its hold as measured from the sending, less the lag an item may take to begin (at most half).
                return sent_at + grant.delay_s + grant.hold_s - min(lag_s, grant.hold_s / 2)

            def await_slice(grant: Grant, sent_at: float, answered_at: float) -> None:
                # A later grant of the last take, active from its delay after the answer came, as the first one
                # is (granted): the window decided it between the sending and the answer, so no item of it is
                # released before its start (a start just before it, where a full window placed the grant,
                # counts in a second the window did not count it for). Its hold ends a hold after its delay
                # from the sending (activate), so no item is released after that either.
                wait = answered_at + grant.delay_s - _now_s(clock)
                if wait > 0:
                    delay_timer.disposable = clock.schedule_relative(
                        wait, lambda _s, _st: activate(grant, sent_at)
                    )
                else:
                    activate(grant, sent_at)

            def activate(grant: Grant, sent_at: float) -> None:
                nonlocal phase, tokens, deadline, granted_tokens, active, activated_at, reports_at_grant
                nonlocal lease
                with lock:
                    phase = _ACTIVE
                    reports_at_grant = reports_at_take
                    activated_at = _now_s(clock)
                    active = grant
                    tokens = granted_tokens = grant.tokens
                    # The window counts the grant's starts until g + hold, and g is no earlier than sent_at +
                    # delay_s: an item that begins by then begins within what the window counted.
                    start_by = sent_at + grant.delay_s + grant.hold_s
                    # Released by then, an item still starts within the hold if it takes at most lag_s.
                    deadline = release_by(grant, sent_at)
                    if on_release is not None:
                        lease = Lease(
                            grant,
                            start_by,
                            functools.partial(_now_s, clock),
                            functools.partial(take_back, cost_cap),
                            begins_at=sent_at + grant.delay_s,
                        )
                        if grant.ref:
                            open_grants.append(_OpenGrant(lease))
                drain()

            def never_start(grant: Grant, unused: int) -> None:
                # Called with the lock held: tokens of `grant` that will never start go back with a next take,
                # told with when the rest began while its lease is still open.
                record = next((r for r in reversed(open_grants) if r.lease.grant is grant), None)
                if record is not None:
                    record.lapsed += unused
                else:
                    give_backs.add(grant, unused)

            def close_settled(now: float) -> None:
                # Called with the lock held. A grant closes once it releases nothing more and every item it
                # released has begun or gone back (Lease.begin), or once its hold is over; what it tells the
                # window rides the next take. Grants close in order: a later one waits for an earlier one.
                while open_grants:
                    record = open_grants[0]
                    closing = record.lease
                    releasing = phase == _ACTIVE and closing is lease
                    if now <= closing.start_by and (releasing or not closing.settled()):
                        return
                    open_grants.popleft()
                    give_backs.report(closing.grant, record.lapsed, closing.close())

            def release(item: _T, lease: Lease) -> None:
                assert on_release is not None  # released with a lease only when someone is told
                lease.released += 1
                on_release(item, lease)
                observer.on_next(item)

            def take_back(cap: int, lease: Lease, item: _T) -> None:
                # Lease.hand_back: the item was released under lease's grant and never began (it would have
                # begun after the hold). First in line again; the tokens it took go back with the next take.
                try:
                    item_cost = min(allowed, max(1, int(cost(item))))
                except Exception as error:
                    on_error(error)
                    return
                with lock:
                    if end.stopped:
                        return  # disposed or ended: whoever handed it out takes back what never began
                    held.appendleft((item, item_cost))
                    never_start(lease.grant, min(item_cost, cap))
                event("late", tokens=min(item_cost, cap))
                drain()

            def request_more() -> int:
                # Called with the lock held. Counts what it asks for itself: the upstream Demand's pending
                # drops before its item reaches on_next, and a request racing in between would overshoot.
                nonlocal requested
                if upstream.unbounded:
                    return 0
                wanted = max(0, demand.pending - len(held) - requested)
                if prefetch and len(held) + requested <= prefetch // 2:
                    # Read ahead in batches, as the processor does: refill once half is gone.
                    wanted = max(wanted, prefetch - len(held) - requested)
                requested += wanted
                return wanted

            drain = drain_loop(lock, next_signal, request_more, upstream, end, observer)

            def on_next(item: _T) -> None:
                try:
                    item_cost = min(allowed, max(1, int(cost(item))))
                except Exception as error:
                    on_error(error)
                    return
                nonlocal requested
                with lock:
                    held.append((item, item_cost))
                    requested = max(0, requested - 1)
                drain()

            def on_error(error: Exception) -> None:
                with lock:
                    end.fail(error)
                drain()

            def on_completed() -> None:
                nonlocal upstream_done
                with lock:
                    upstream_done = True
                drain()

            def stop() -> None:
                with lock:
                    end.stopped = True

            subscription = CompositeDisposable(take_subscription, delay_timer, Disposable(stop))
            subscription.add(demand.on_request(drain))
            subscription.add(
                subscribe_upstream(source, Observer(on_next, on_error, on_completed), upstream, scheduler_)
            )
            drain()
            return subscription

        # A grant's tokens lapse after its hold: whatever consumes these items must start them at once.
        return Flowable(subscribe, prompt=True)

    return operator


_IDLE, _TAKING, _ACTIVE = "idle", "taking", "active"


class _GiveBacks:
    """Tokens of past grants that will never start, and when their starts came, given back with the next take
    (a take carries an :class:`Unused` per grant), and how many of each grant went back before, since a grant
    gives back again when an item released under it comes back late after the rest of it lapsed."""

    __slots__ = ("_pending", "_sent")

    def __init__(self) -> None:
        self._pending: dict[tuple[int, ...], tuple[Grant, int, float | None]] = {}
        self._sent: dict[tuple[int, ...], int] = {}

    def add(self, grant: Grant, tokens: int) -> None:
        if tokens >= 1:
            self.report(grant, tokens, None)

    def report(self, grant: Grant, tokens: int, started_within_s: float | None) -> None:
        """``tokens`` of ``grant`` will never start, and (when not None) the rest all began within
        ``started_within_s`` of its start; merged with what is pending for it."""
        if not grant.ref or (tokens < 1 and started_within_s is None):
            return  # a window that takes nothing back, or nothing to tell
        _grant, pending, within = self._pending.get(grant.ref, (grant, 0, None))
        self._pending[grant.ref] = (
            grant,
            pending + max(0, tokens),
            within if started_within_s is None else started_within_s,
        )
        if len(self._pending) > _GIVE_BACKS_KEPT:
            del self._pending[next(iter(self._pending))]  # the oldest: long expired from the window

    def take_all(self) -> tuple[Unused, ...]:
        """The reports to send with the take about to be sent, oldest first, at most :data:`_SENT_AT_ONCE`."""
        reports: list[Unused] = []
        while self._pending and len(reports) < _SENT_AT_ONCE:
            ref = next(iter(self._pending))
            grant, tokens, within = self._pending.pop(ref)
            already = self._sent.pop(ref, 0)
            self._sent[ref] = already + tokens
            if len(self._sent) > _GIVE_BACKS_KEPT:
                del self._sent[next(iter(self._sent))]  # the oldest: long expired from the window
            reports.append(Unused(grant, tokens, already, within))
        return tuple(reports)


@dataclass(slots=True)
class _OpenGrant:
    """A grant whose lease is not closed yet, and the tokens of it that lapsed meanwhile (told with its span)."""

    lease: Lease
    lapsed: int = 0


_GIVE_BACKS_KEPT = 64

_SENT_AT_ONCE = 2 * MOST_SLICES
"""The most reports one take carries: a take brings up to MOST_SLICES grants, each closing with a report, and a
late hand-back may add one more per grant."""


class _StartsPerHold:
    """How many items the consumer starts within one grant's hold, measured from its grants: what a take with
    ``prefetch`` asks for.

    Each grant is a sample: the tokens it used, over the share of its hold it was active. A grant whose tokens
    lapsed was active all its hold, so it measures the consumer exactly. One used up sooner says the consumer
    could start at least that many; its share is counted as no less than ``_LEAST_SHARE``, since free stages
    start a burst at once and the rest only as calls finish (a rate taken from the burst overshoots, and each
    overshoot is a lapse). Samples are averaged with weights halving from grant to grant, and a grant used up
    never lowers the goal.
    """

    __slots__ = ("_share", "_used", "goal", "most")

    def __init__(self, first: int, most: int) -> None:
        self._used = 0.0  # decayed sum of tokens used
        self._share = 0.0  # decayed sum of the share of the hold the grants were active
        self.goal = max(1, min(first, most) if most else first)
        self.most = most

    def _sample(self, used: int, share: float) -> int:
        self._used = self._used / 2 + used
        self._share = self._share / 2 + share
        return max(1, min(self.most, round(self._used / self._share)))

    def lapsed(self, used: int) -> None:
        """A grant ended with tokens unused after its hold: the consumer started ``used`` in a whole hold."""
        self.goal = self._sample(used, 1.0)

    def used_up(self, used: int, took_s: float, hold_s: float) -> None:
        """A grant's ``used`` tokens all went ``took_s`` after it began, of the ``hold_s`` it had."""
        share = max(_LEAST_SHARE, took_s / hold_s) if hold_s > 0 else 1.0
        self.goal = max(self.goal, self._sample(used, min(1.0, share)))


_LEAST_SHARE = 2 / 3
