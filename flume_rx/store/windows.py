"""Token windows shared by every process through Redis."""

from __future__ import annotations

import logging
import math
import secrets
import threading
from collections.abc import Awaitable, Sequence
from typing import TypeVar

from flume_rx.operators import AdaptiveTuning, Grant, Unused, given_back
from flume_rx.store.commands import GiveBack, RefusalReply, TokenReply
from flume_rx.store.outage import through_outage
from flume_rx.store.redis_store import RedisStore

log = logging.getLogger("flume_rx.store")

_T = TypeVar("_T")


class RedisTokenWindow:
    """A :class:`~flume_rx.operators.TokenWindow` shared by every process through Redis.

    At most ``allowed`` items start in any sliding ``period_s``, across all processes and hosts, with time
    from Redis. A grant that cannot start now is a reservation (``delay_s > 0``), so each Redis call hands
    out as many tokens as the caller can use. With ``adaptive=True``, :meth:`penalize` (the downstream
    refused calls) aims the shared rate at what the downstream accepted over the last period, and the rate
    then probes upward, never above ``allowed`` (``flume_rx.operators.probed_rate``; DEVELOPERS.md, "The
    adaptive rate"). Every cut is published on :attr:`cuts_channel`; a listener hands what it hears to
    :meth:`heard_cut`, so a grant another process's refusal made stale is dropped before it starts more calls.

    Args:
        store: the store whose client carries the calls.
        key: the window's name; every window with the same key and namespace shares one limit.
        allowed: items allowed to start per period.
        period_s: the sliding period.
        hold_s: how long after its start a grant may still be used; utilization is period / (period + s), s the
            time a grant's items took to begin (at most the hold; DEVELOPERS.md, "The token window").
        adaptive: aim the rate at the downstream's on :meth:`penalize` and probe upward.
        tuning: how the adaptive rate cuts and probes (``AdaptiveTuning()`` when None).
        burst: pace grants to one token every ``period_s / allowed``, at most ``burst`` at once, so the window
            fills smoothly rather than in one burst per period (None: no pacing, the plain sliding window).

    >>> window = RedisTokenWindow(store, "ses", allowed=400, period_s=1.0)  # doctest: +SKIP
    >>> await window.take_async(10, min_tokens=5)  # doctest: +SKIP
    Grant(tokens=10, delay_s=0.0, hold_s=0.02)
    """

    def __init__(
        self,
        store: RedisStore,
        key: str,
        allowed: int,
        period_s: float,
        *,
        hold_s: float = 0.02,
        adaptive: bool = False,
        tuning: AdaptiveTuning | None = None,
        burst: int | None = None,
    ) -> None:
        # ValueError, as InProcessWindow raises: the two are interchangeable behind TokenWindow.
        if allowed < 1:
            raise ValueError(f"allowed must be >= 1 token per period (got {allowed})")
        if not (period_s > 0 and math.isfinite(period_s)):
            raise ValueError(f"period_s must be a positive number of seconds (got {period_s})")
        if not (hold_s >= 0 and math.isfinite(hold_s)):
            raise ValueError(f"hold_s must be >= 0 seconds (got {hold_s})")
        store.keys.rate(key)  # validates the key now rather than at the first take
        self.store = store
        self.key = key
        self.allowed = allowed
        self.period_s = period_s
        self.hold_s = hold_s
        self.adaptive = adaptive
        self.tuning = tuning or AdaptiveTuning()
        if burst is not None and burst < 1:
            raise ValueError(f"burst must be >= 1 token or None for no pacing (got {burst})")
        self.burst = burst or 0
        self._effective = float(allowed)
        self._lock = threading.Lock()
        self.refusal_reports = 0
        """Refusals this process reported, and cuts it heard of that came after its latest grant (adaptive mode):
        the throttle drops a grant asked for before the latest."""
        self.cuts_elsewhere = 0
        """Cuts of the shared rate that other processes' refusals made, as this window learnt of them
        (adaptive mode): a message of one (:meth:`heard_cut`), or a take's reply naming a cut newer than every
        one it knew of while none of its own reports awaits its reply. A change of the rate seen with a grant
        after one is theirs, not the probe's (``throttle.rate_changed``'s cause)."""
        self._reports_awaited = 0  # this window's refusal reports whose reply (their cut's time) is not back
        self.cuts_channel = store.keys.rate_cuts(key)
        """Where every cut of this window's rate is published (adaptive mode); see :meth:`heard_cut`."""
        self._reporter = secrets.token_hex(6)  # names this window's own cuts, which it has counted already
        self._latest_cut_us = 0  # the newest cut this window knows of, from a reply or a message
        self._penalize_loaded = False

    async def take_async(
        self,
        tokens: int,
        min_tokens: int = 1,
        unused: Unused | Sequence[Unused] | None = None,
        slice_tokens: int = 0,
    ) -> Grant:
        """One grant of between ``min(tokens, min_tokens)`` and ``tokens`` tokens (clamped to the rate), after
        giving back ``unused`` tokens of earlier grants in the same call; with ``slice_tokens``, in up to three
        grants of at most that many, a hold apart (:attr:`~flume_rx.operators.Grant.later`).

        While Redis is unreachable it waits with backoff, as fetch and settle do: an outage must not end the
        pipeline the throttle sits in.
        """
        reply = await through_outage(
            f"rate limiter {self.key!r}", lambda: self.take_reply(tokens, min_tokens, unused, slice_tokens)
        )
        assert reply is not None  # without a stop event it returns only once the call worked
        hold_s = reply.hold_us / 1e6
        return Grant(
            tokens=reply.tokens,
            delay_s=reply.delay_us / 1e6,
            hold_s=hold_s,
            ref=(reply.seq, reply.start_us, reply.tokens),
            later=tuple(
                Grant(part.tokens, part.delay_us / 1e6, hold_s, (part.seq, part.start_us, part.tokens))
                for part in reply.later
            ),
        )

    async def take_reply(
        self,
        tokens: int,
        min_tokens: int = 1,
        unused: Unused | Sequence[Unused] | None = None,
        slice_tokens: int = 0,
    ) -> TokenReply:
        """Like :meth:`take_async`, with the grant's place on the Redis clock (for tests and telemetry)."""
        if tokens < 1:
            raise ValueError(f"tokens must be >= 1 (got {tokens})")
        if min_tokens < 1:
            raise ValueError(f"min_tokens must be >= 1 (got {min_tokens})")
        if slice_tokens < 0:
            raise ValueError(f"slice_tokens must be >= 0 (got {slice_tokens}); 0 asks for one grant")
        if self.adaptive and not self._penalize_loaded:
            # The first refusal is the one that must land at once: while penalize.lua is unknown to Redis, the
            # report costs two more round trips (NOSCRIPT, SCRIPT LOAD), and every take meanwhile is granted at
            # the rate the downstream refuses.
            await self.store.load_scripts(("penalize",))
            self._penalize_loaded = True
        give_back: list[GiveBack] = []
        for each in given_back(unused):
            if each.tells_nothing or len(each.grant.ref) != 3:
                continue
            seq, start_us, granted = each.grant.ref
            within = each.started_within_s
            # The grant's entry counts what is left after earlier give-backs; take_tokens.lua finds it by that.
            # The span is rounded up: the window then counts the grant no shorter than its starts came.
            give_back.append(
                (
                    seq,
                    start_us,
                    granted - each.already,
                    max(0, each.tokens),
                    None if within is None else math.ceil(within * 1e6),
                )
            )
        reply = await self.store.take_tokens(
            self.key,
            allowed=self.allowed,
            period_ms=self.period_s * 1000,
            hold_ms=self.hold_s * 1000,
            want=tokens,
            min_tokens=min(min_tokens, tokens),
            adaptive=self.adaptive,
            tuning=self.tuning,
            burst=self.burst,
            give_back=give_back,
            slice_tokens=slice_tokens,
        )
        with self._lock:
            self._effective = reply.effective_allowed
            if reply.cut_at_us > self._latest_cut_us:
                # Each cut of ours is known once its report's reply is in: with none awaited, it is another's.
                if not self._reports_awaited:
                    self.cuts_elsewhere += 1
                self._latest_cut_us = reply.cut_at_us
        return reply

    def take(
        self,
        tokens: int,
        min_tokens: int = 1,
        unused: Unused | Sequence[Unused] | None = None,
        slice_tokens: int = 0,
    ) -> Awaitable[Grant]:
        """:meth:`take_async`, under the name :class:`~flume_rx.operators.TokenWindow` gives it (giving back
        ``unused`` in the same call); the throttle makes the stream."""
        return self.take_async(tokens, min_tokens, unused, slice_tokens)

    async def penalize_async(self, refused: int = 1, age_s: float = 0.0) -> float:
        """Report ``refused`` refusals by the downstream, the first of a call started ``age_s`` ago; returns the
        new effective allowed per period."""
        if not self.adaptive:
            return self.current_rate()
        return (await self.refuse(refused, age_s)).effective_allowed

    async def refuse(self, refused: int = 1, age_s: float = 0.0) -> RefusalReply:
        """Like :meth:`penalize_async`, with the measurement the new rate was aimed at (adaptive mode only).

        Raises:
            ValueError: when ``refused`` is below 1, ``age_s`` is negative, or the window is not adaptive.
        """
        if refused < 1:
            raise ValueError(f"refused must be >= 1 (got {refused})")
        if not age_s >= 0:
            raise ValueError(f"age_s must be >= 0 seconds (got {age_s})")
        if not self.adaptive:
            raise ValueError(f"rate limiter {self.key!r} is not adaptive; create it with adaptive=True")
        with self._lock:
            self._reports_awaited += 1
        try:
            reply = await self.store.penalize_window(
                self.key,
                allowed=self.allowed,
                period_ms=self.period_s * 1000,
                hold_ms=self.hold_s * 1000,
                refused=refused,
                age_ms=age_s * 1000,
                tuning=self.tuning,
                reporter=self._reporter,
            )
        finally:
            with self._lock:
                self._reports_awaited -= 1
        with self._lock:
            self._effective = reply.effective_allowed
            self._latest_cut_us = max(self._latest_cut_us, reply.at_us)
        accepted = "unmeasured" if reply.accepted is None else f"{reply.accepted:.1f}"
        log.info(
            "rate limiter %s: %d refused, %s accepted per %.3f s; rate now %.1f",
            self.key,
            refused,
            accepted,
            self.period_s,
            reply.effective_allowed,
        )
        return reply

    def penalize(self, refused: int = 1, age_s: float = 0.0) -> Awaitable[float]:
        """:meth:`penalize_async`, under the name :class:`~flume_rx.operators.TokenWindow` gives it.

        Counted in :attr:`refusal_reports` at once, before Redis answers, so this process's throttle stops
        using a grant taken at the rate the downstream just refused.
        """
        if self.adaptive and refused >= 1:
            with self._lock:
                self.refusal_reports += 1
        return self.penalize_async(refused, age_s)

    def heard_cut(self, message: bytes | str) -> bool:
        """Another process's refusal cut the shared rate (a message from :attr:`cuts_channel`,
        ``"<cut_at_us> <reporter>"``); True when it is news: newer than every cut this window's replies knew of,
        so the grant in use, decided before it, is at a rate the downstream refuses (the throttle drops it).

        A cut this window reported itself, or one its latest grant was decided after, is no news.
        """
        text = message.decode("ascii", errors="replace") if isinstance(message, bytes) else message
        cut_at, _, reporter = text.partition(" ")
        if reporter == self._reporter or not cut_at.isdigit():
            return False
        with self._lock:
            if int(cut_at) <= self._latest_cut_us:
                return False
            self._latest_cut_us = int(cut_at)
            self.refusal_reports += 1
            self.cuts_elsewhere += 1
            return True

    def current_rate(self) -> float:
        """The effective allowed per period as of the last reply from Redis (``allowed`` before any)."""
        with self._lock:
            return self._effective


class RedisKeyedWindow:
    """Per-key windows in Redis, all keys of one batch in one call.

    Args:
        store: the worker's store.
        name: the limiter's name (its windows' shared hash tag).
        allowed: starts (or cost units) per key per period.
        period_s: the sliding period.
        hold_s: how long a grant may still be used after its start.
        lag_s: the most an item may wait between the throttle and its start, e.g. the timeout of a batcher
            placed after the throttle. The window counts each grant that much longer, so starts, not
            releases from the throttle, stay within ``allowed`` per period.
    """

    def __init__(
        self,
        store: RedisStore,
        name: str,
        allowed: int,
        period_s: float,
        hold_s: float = 0.02,
        *,
        lag_s: float = 0.0,
    ) -> None:
        if allowed < 1:
            raise ValueError(f"allowed must be >= 1 token per period (got {allowed})")
        if not period_s > 0:
            raise ValueError(f"period_s must be a positive number of seconds (got {period_s})")
        if not hold_s >= 0 or not lag_s >= 0:
            raise ValueError(f"hold_s and lag_s must be seconds >= 0 (got {hold_s}, {lag_s})")
        store.keys.rate(name)  # validates the name now
        self.store = store
        self.name = name
        self._allowed = allowed
        self.period_s = period_s
        self.hold_s = hold_s
        self.lag_s = lag_s
        self.calls = 0
        """Redis calls made so far (for benchmarks and telemetry)."""

    @property
    def allowed(self) -> int:
        return self._allowed

    async def take_many(self, wants: Sequence[tuple[str, int, int]]) -> list[Grant]:
        self.calls += 1
        replies = await self.store.take_tokens_multi(
            self.name,
            wants,
            allowed=self._allowed,
            period_ms=self.period_s * 1000,
            # A grant's items start within hold (the throttle's deadline) plus lag (downstream of it).
            hold_ms=(self.hold_s + self.lag_s) * 1000,
        )
        return [Grant(tokens, delay_us / 1e6, self.hold_s) for tokens, delay_us, _ in replies]
