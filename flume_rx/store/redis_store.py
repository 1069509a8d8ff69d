"""The asyncio store used by workers.

About 600 lines, on purpose: one class with one short method per Lua script and verb a worker uses (fetch,
the idle wait, settle, heartbeats, recovery, promotion, windows, results), each a few lines around the
operations and parsers of :mod:`flume_rx.store.commands`. Splitting it would split one Redis connection's
lifecycle (connect, script loading, outage retries, close) across modules.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any, Literal, cast

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from flume_rx.model.codec import DEFAULT_MAX_PAYLOAD_BYTES
from flume_rx.model.errors import ConfigError
from flume_rx.model.urls import invalid_url
from flume_rx.operators import AdaptiveTuning
from flume_rx.store.commands import (
    DEAD_RETRY_CHUNK,
    DEFAULT_DEAD_MAX,
    DEFAULT_DEAD_TTL_MS,
    GiveBack,
    RefusalReply,
    Settlement,
    TokenReply,
    UniqueEnqueue,
    _hash,
    _ops_abort,
    _ops_aborts_asked,
    _ops_cron_tick,
    _ops_dead_retry,
    _ops_dead_retry_oldest,
    _ops_delete,
    _ops_enqueue,
    _ops_enqueue_unique,
    _ops_fetch,
    _ops_fetch_weighted,
    _ops_heartbeat,
    _ops_requeue,
    _ops_schedule,
    _ops_settle,
    _pairs,
    _parse_aborts_asked,
    _parse_token_reply,
    _parse_unique,
    _redis_ms,
    _text,
)
from flume_rx.store.connection import (
    _check_client,
    _client_kwargs,
    _connection_kwargs,
    cluster_url,
)
from flume_rx.store.keys import Keys
from flume_rx.store.queries import (
    _STATS_FIRST,
    _WORK_LEFT_FIRST,
    DEFAULT_ORPHAN_TIMEOUT_S,
    ConsumerInfo,
    PeekWhere,
    QueueStats,
    RatePoint,
    _ops_consumers,
    _ops_peek,
    _ops_rate_use,
    _ops_rates,
    _ops_stats_first,
    _ops_work_left_first,
    _ops_work_left_then,
    _parse_consumers,
    _parse_peek,
    _parse_rate_use,
    _parse_rates,
    _parse_stats,
)
from flume_rx.store.scripts import Arg, AsyncRunner, _Cmd, _Eval, _Op

log = logging.getLogger("flume_rx.store")
_DEFAULT_TUNING = AdaptiveTuning()


class RedisStore:
    """The asyncio store used by workers: fetch, settle, promote, heartbeat, recover, plus producer verbs.

    Args:
        client: a ``redis.asyncio.Redis`` made with ``decode_responses=False``; its socket timeout must
            exceed the ``block_s`` of :meth:`fetch`.
        namespace: prefix of every key, so several apps can share one Redis.
        dead_max: the dead letters kept per queue; the oldest go first.
        dead_ttl_ms: dead letters older than this are dropped.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        namespace: str = "flume",
        *,
        dead_max: int = DEFAULT_DEAD_MAX,
        dead_ttl_ms: int = DEFAULT_DEAD_TTL_MS,
    ) -> None:
        _check_client(client)
        if dead_max < 1:
            raise ConfigError(f"dead_max must be >= 1 (got {dead_max}); set it to the dead letters to keep")
        if dead_ttl_ms < 1:
            raise ConfigError(f"dead_ttl_ms must be >= 1 (got {dead_ttl_ms}); set how long dead letters stay")
        self.client = client
        self.keys = Keys(namespace)
        self.dead_max = dead_max
        self.dead_ttl_ms = dead_ttl_ms
        self._run = AsyncRunner(client)
        self._owns_client = False

    @classmethod
    def from_url(
        cls,
        url: str,
        namespace: str = "flume",
        *,
        socket_timeout_s: float = 30.0,
        dead_max: int = DEFAULT_DEAD_MAX,
        dead_ttl_ms: int = DEFAULT_DEAD_TTL_MS,
    ) -> RedisStore:
        """A store with its own client; :meth:`aclose` closes it.

        Args:
            url: ``redis://[:password@]host:port/db`` or ``rediss://`` for TLS.
            socket_timeout_s: how long any reply may take; blocking fetches must wait less than this.
        """
        try:
            plain = cluster_url(url)
            if plain is not None:
                # The cluster client answers every command the store sends; it routes each by its keys.
                client = cast(
                    redis.asyncio.Redis,
                    redis.asyncio.cluster.RedisCluster.from_url(plain, **_client_kwargs(socket_timeout_s)),
                )
            else:
                client = redis.asyncio.Redis.from_url(url, **_client_kwargs(socket_timeout_s))
        except ValueError as exc:
            raise invalid_url(url, str(exc)) from None
        store = cls(client, namespace, dead_max=dead_max, dead_ttl_ms=dead_ttl_ms)
        store._owns_client = True
        return store

    async def aclose(self) -> None:
        """Close the client if this store made it."""
        if self._owns_client:
            await self.client.aclose()

    async def __aenter__(self) -> RedisStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # producer verbs

    async def enqueue(self, queue: str, payloads: Sequence[bytes]) -> None:
        """Push payloads onto the queue, in order, in one round trip however many there are."""
        if payloads:
            await self._run.run(_ops_enqueue(self.keys, queue, payloads), transaction=True)

    async def schedule(self, queue: str, items: Sequence[tuple[bytes, float]]) -> None:
        """Hold each payload until its due time (unix seconds), then :meth:`promote_due` queues it."""
        if items:
            await self._run.run(_ops_schedule(self.keys, queue, items, "at"), transaction=True)

    async def schedule_in(self, queue: str, items: Sequence[tuple[bytes, float]]) -> None:
        """Hold each payload for a delay in seconds, counted on the Redis clock (immune to client skew)."""
        if items:
            await self._run.run(_ops_schedule(self.keys, queue, items, "in"), transaction=True)

    async def enqueue_unique(
        self,
        queue: str,
        jobs: Sequence[UniqueEnqueue],
        unique_for_ms: int,
        mode: Literal["now", "at", "in"] = "now",
    ) -> list[tuple[bool, str]]:
        """Add each job unless another job holds its ``unique_key`` on this queue, atomically per job.

        A claim lives ``unique_for_ms`` from the job's due time (``mode`` ``now``, or each job's ``due_s`` as
        unix seconds for ``at`` or seconds from Redis TIME for ``in``); settling the job releases it earlier,
        as its ``unique_until`` says. Jobs go to Redis in one round trip.

        Returns:
            Per job, in order: ``(True, its id)`` when added, else ``(False, id of the job holding the key)``.
        """
        if not jobs:
            return []
        return _parse_unique(
            await self._run.run(
                _ops_enqueue_unique(self.keys, queue, jobs, unique_for_ms, mode), transaction=True
            )
        )

    async def cron_tick(
        self,
        queue: str,
        schedule: str,
        tick_ms: int,
        payload: bytes,
        *,
        claim_ttl_ms: int,
        on_time_ms: int,
        missed: Literal["run_once", "skip"],
    ) -> tuple[str, int]:
        """Decide one tick of a cron schedule once for every process: enqueue ``payload`` or skip it.

        Returns:
            ``(status, last tick ms)``; status is ``enqueued``, ``skipped``, ``taken`` (another process
            decided it) or ``old`` (a later tick was decided already).
        """
        ops = _ops_cron_tick(
            self.keys, queue, schedule, tick_ms, payload,
            claim_ttl_ms=claim_ttl_ms, on_time_ms=on_time_ms, missed=missed,
        )  # fmt: skip
        status, last = (await self._run.run(ops))[-1]
        return _text(status), int(last)

    async def fetch_weighted(
        self,
        queues: Sequence[str],
        consumer: str,
        n: int,
        quotas: Sequence[int],
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> list[tuple[str, bytes]]:
        """Move up to ``n`` payloads from several queues into the consumer's in-flight lists, in one call.

        Each queue first gives up to its quota, then the rest of ``n`` comes from the queues in the order
        given (see ``fetch_weighted.lua``). The queues must share a cluster slot (``group/name`` names).

        Returns:
            ``(queue, payload)`` pairs, grouped by queue in the order given; ``[]`` when all are empty or
            paused (this call never blocks).
        """
        if n < 1:
            raise ValueError(f"fetch n must be >= 1 (got {n})")
        op = _ops_fetch_weighted(
            self.keys, queues, consumer, n, quotas, max_payload_bytes, self.dead_max, self.dead_ttl_ms
        )  # fmt: skip
        reply = await self._run.one(op)
        counts, oversized, payloads = reply[: len(queues)], reply[len(queues)], reply[len(queues) + 1 :]
        self._log_oversized(", ".join(queues), int(oversized), max_payload_bytes)
        out: list[tuple[str, bytes]] = []
        position = 0
        for queue, count in zip(queues, counts, strict=True):
            out += [(queue, bytes(p)) for p in payloads[position : position + int(count)]]
            position += int(count)
        return out

    async def time_ms(self) -> int:
        """Redis's clock in unix ms (schedules tick by it, not by this host's clock)."""
        return _redis_ms(await self._run.one(_Cmd(("TIME",))))

    # consumer verbs

    async def fetch(
        self,
        queue: str,
        consumer: str,
        n: int,
        block_s: float,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> list[bytes]:
        """Move up to ``n`` payloads into the consumer's in-flight list and return them, oldest first.

        When the queue is empty, waits up to ``block_s`` on one blocking move, so a new job starts within
        milliseconds without polling; the fetch script runs the moment it ends, in the same round trip.
        Returns ``[]`` when nothing came, and while the queue is paused (after waiting ``block_s``).
        Payloads over ``max_payload_bytes`` never come back: Redis moves them to the dead letters.
        """
        if n < 1:
            raise ValueError(f"fetch n must be >= 1 (got {n})")
        self._check_block(block_s)
        k = self.keys.of(queue)
        op = _ops_fetch(
            self.keys, queue, consumer, n, max_payload_bytes, self.dead_max, self.dead_ttl_ms
        )  # fmt: skip
        paused, payloads = self._fetched(queue, await self._run.one(op), max_payload_bytes)
        if payloads or block_s <= 0:
            return payloads
        if paused:
            await asyncio.sleep(block_s)
            return []
        # The wait moves the job that ends it into our arrivals list and sends nothing back: the fetch script
        # checks its size like any other before it reaches us.
        wait = _Cmd(("BLMOVE", k.queue, k.arrivals(consumer), "RIGHT", "LEFT", block_s))
        _, payloads = self._fetched(queue, await self._run.after_wait(wait, op), max_payload_bytes)
        return payloads

    def _fetched(self, queue: str, reply: Sequence[Any], max_payload_bytes: int) -> tuple[bool, list[bytes]]:
        paused, oversized, *payloads = reply
        self._log_oversized(queue, int(oversized), max_payload_bytes)
        return bool(int(paused)), payloads

    def _log_oversized(self, queues: str, count: int, max_payload_bytes: int) -> None:
        if count:
            log.error(
                "%d payload(s) over max_payload_bytes (%d) on %s went to the dead letters unread",
                count,
                max_payload_bytes,
                queues,
            )

    def _check_block(self, block_s: float) -> None:
        timeout = _connection_kwargs(self.client).get("socket_timeout")
        if block_s > 0 and timeout is not None and block_s + 1.0 > timeout:
            raise ConfigError(
                f"fetch block_s={block_s} must be at least 1 s below the Redis socket timeout ({timeout} s); "
                "lower block_s or raise socket_timeout_s"
            )

    async def settle(self, queue: str, consumer: str, settlements: Sequence[Settlement]) -> int:
        """Apply a batch of outcomes in one round trip.

        Returns:
            How many outcomes were stale: their payload had already left the in-flight list (orphan
            recovery gave it back to the queue), so nothing was moved for them.
        """
        if not settlements:
            return 0
        op = _ops_settle(self.keys, queue, consumer, settlements, self.dead_max, self.dead_ttl_ms)
        # One script call: the outcomes, the counters (the script knows the stale) and the latency samples.
        return int(await self._run.one(op))

    async def promote_due(self, queue: str, limit: int = 1000) -> int:
        """Move scheduled and retry payloads that are due onto the queue; safe from any number of workers."""
        k = self.keys.of(queue)
        return int(await self._run.one(_Eval("promote", (k.scheduled, k.retry, k.queue), (limit,))))

    async def heartbeat(self, queues: Sequence[str], consumer: str) -> None:
        """Record the consumer as alive (Redis TIME) in each queue it serves."""
        await self._run.run(_ops_heartbeat(self.keys, queues, consumer))

    async def recover_orphans(self, queue: str, timeout_ms: int) -> int:
        """Give back the in-flight jobs of consumers silent for ``timeout_ms``; returns how many came back."""
        k = self.keys.of(queue)
        now, beats = await self._run.run(
            [_Cmd(("TIME",)), _Cmd(("ZRANGE", k.consumers, 0, -1, "WITHSCORES"))]
        )
        stale = [_text(c) for c, beat in _pairs(beats) if _redis_ms(now) - beat >= timeout_ms]
        if not stale:
            return 0
        ops: list[_Op] = [
            _Eval("recover", (k.consumers, k.queue, k.inflight(c), k.arrivals(c)), (c, timeout_ms))
            for c in stale
        ]
        moved = sum(max(0, int(r)) for r in await self._run.run(ops))
        if moved:
            log.warning("recovered %d job(s) of %d silent consumer(s) on queue %s", moved, len(stale), queue)
        return moved

    async def inflight(self, queue: str, consumer: str) -> list[bytes]:
        """Every payload in the consumer's in-flight list of ``queue``, newest fetched first."""
        reply = await self._run.one(_Cmd(("LRANGE", self.keys.of(queue).inflight(consumer), 0, -1)))
        return [bytes(p) for p in reply]

    async def requeue_all(self, queue: str, consumer: str, payloads: Sequence[bytes] | None = None) -> int:
        """Give the consumer's in-flight jobs (all, or only ``payloads``) back to the queue, unspent."""
        return int(await self._run.one(_ops_requeue(self.keys, queue, consumer, payloads)))

    # admin verbs

    async def pause(self, queue: str) -> None:
        """Stop every consumer of the queue from fetching, until :meth:`resume`."""
        await self._run.one(_Cmd(("SET", self.keys.of(queue).paused, "1")))

    async def resume(self, queue: str) -> None:
        await self._run.one(_Cmd(("DEL", self.keys.of(queue).paused)))

    async def is_paused(self, queue: str) -> bool:
        return bool(await self._run.one(_Cmd(("EXISTS", self.keys.of(queue).paused))))

    async def known_queues(self) -> list[str]:
        """Names of every queue ever enqueued to in this namespace."""
        return sorted(_text(q) for q in await self._run.one(_Cmd(("SMEMBERS", self.keys.queues))))

    async def stats(
        self, queues: Sequence[str] | None = None, orphan_timeout_s: float = DEFAULT_ORPHAN_TIMEOUT_S
    ) -> dict[str, QueueStats]:
        """Counts per queue (all known queues by default), in two round trips.

        ``consumers`` counts only those heard from within ``orphan_timeout_s`` (the workers' orphan_timeout);
        ``consumers_silent`` the others, which orphan recovery takes for dead. ``in_flight`` counts the jobs
        of both (a dead consumer's jobs are in flight until they come back).
        """
        names = list(queues) if queues is not None else await self.known_queues()
        first = await self._run.run([op for q in names for op in _ops_stats_first(self.keys, q)])
        result: dict[str, QueueStats] = {}
        inflight_ops: list[_Op] = []
        owners: list[str] = []
        for i, q in enumerate(names):
            stats, consumers = _parse_stats(
                first[i * _STATS_FIRST : (i + 1) * _STATS_FIRST], orphan_timeout_s
            )
            result[q] = stats
            inflight_ops += [_Cmd(("LLEN", self.keys.of(q).inflight(c))) for c in consumers]
            owners += [q] * len(consumers)
        for q, length in zip(owners, await self._run.run(inflight_ops), strict=True):
            result[q]["in_flight"] += int(length)
        return result

    async def work_left(self, queues: Sequence[str]) -> bool:
        """Whether any of ``queues`` has work a worker could still get: jobs queued, due scheduled jobs, jobs
        waiting to retry (due or not), or jobs in any consumer's in-flight list (running, or coming back from a
        dead consumer). A paused queue counts as having none. Two round trips."""
        first = await self._run.run([op for q in queues for op in _ops_work_left_first(self.keys, q)])
        then: list[_Op] = []
        for i, q in enumerate(queues):
            found = _ops_work_left_then(
                self.keys, q, first[i * _WORK_LEFT_FIRST : (i + 1) * _WORK_LEFT_FIRST]
            )
            if found is True:
                return True
            if found is not False:
                then += found
        return any(int(n) for n in await self._run.run(then))

    async def consumers(
        self, queues: Sequence[str] | None = None, orphan_timeout_s: float = DEFAULT_ORPHAN_TIMEOUT_S
    ) -> list[ConsumerInfo]:
        """Every consumer of the queues (all known by default) with its last heartbeat and in-flight count;
        ``alive`` is False for one silent for ``orphan_timeout_s`` or longer (taken for dead)."""
        names = list(queues) if queues is not None else await self.known_queues()
        replies = await self._run.run([op for q in names for op in _ops_consumers(self.keys, q)])
        found = [
            c
            for i, q in enumerate(names)
            for c in _parse_consumers(q, replies[2 * i : 2 * i + 2], orphan_timeout_s)
        ]
        lengths = await self._run.run(
            [_Cmd(("LLEN", self.keys.of(c["queue"]).inflight(c["consumer"]))) for c in found]
        )
        for info, length in zip(found, lengths, strict=True):
            info["in_flight"] = int(length)
        return found

    async def rates(
        self, queue: str, resolution: Literal["second", "minute"] = "second", count: int = 60
    ) -> list[RatePoint]:
        """Jobs processed and failed per complete bucket, oldest first, cluster-wide.

        Args:
            resolution: ``second`` (:data:`RATE_SECONDS` kept) or ``minute`` (:data:`RATE_MINUTES` kept).
            count: how many buckets, ending with the last complete one.
        """
        return _parse_rates(await self._run.run(_ops_rates(self.keys, queue, resolution)), resolution, count)

    async def peek(
        self, queue: str, where: PeekWhere = "queued", limit: int = 20, start: int = 0
    ) -> list[tuple[bytes, float | None]]:
        """Jobs of a queue without taking them: ``queued`` in the order they will run, ``scheduled`` and
        ``retry`` by due time, ``dead`` oldest first; each with its due or death time (unix s) or None."""
        return _parse_peek(where, await self._run.one(_ops_peek(self.keys, queue, where, start, limit)))

    async def delete(self, queue: str, payloads: Sequence[bytes]) -> int:
        """Remove these payloads from the queue, scheduled, retry and dead; in-flight jobs are not touched."""
        if not payloads:
            return 0
        return sum(
            int(r) for r in await self._run.run(_ops_delete(self.keys, queue, payloads), transaction=True)
        )

    async def rate_use(self, key: str, period_ms: float) -> int:
        """Tokens of the shared window ``key`` granted within the last period (compare with its allowed)."""
        return _parse_rate_use(await self._run.run(_ops_rate_use(self.keys, key, period_ms)), period_ms)

    async def dead_list(self, queue: str, limit: int = 100) -> list[tuple[bytes, float]]:
        """The newest ``limit`` dead letters as ``(payload, died_at unix s)``."""
        reply = await self._run.one(_Cmd(("ZREVRANGE", self.keys.of(queue).dead, 0, limit - 1, "WITHSCORES")))
        return [(payload, score / 1000) for payload, score in _pairs(reply)]

    async def dead_retry(
        self,
        queue: str,
        payloads: Sequence[bytes] | None = None,
        new_payloads: Sequence[bytes] | None = None,
    ) -> int:
        """Move dead letters back onto the queue (all when ``payloads`` is None), optionally rewritten.

        Args:
            payloads: the dead letters to move, as :meth:`dead_list` returned them.
            new_payloads: what to enqueue instead of each (same length), e.g. with the attempt count reset.
        """
        if payloads is not None:
            return int(await self._run.one(_ops_dead_retry(self.keys, queue, payloads, new_payloads)))
        total = 0
        while moved := int(await self._run.one(_ops_dead_retry_oldest(self.keys, queue, DEAD_RETRY_CHUNK))):
            total += moved
        return total

    async def set_progress(
        self, queue: str, job_id: str, fraction: float, message: str, keep_ms: int
    ) -> None:
        """Record how far a running job is, readable for ``keep_ms`` (``Flume.job``)."""
        k = self.keys.of(queue)
        await self._run.one(
            _Eval("progress", (k.record(job_id), k.progress), (job_id, repr(fraction), message, keep_ms))
        )

    async def abort(self, job_id: str, keep_ms: int) -> int:
        """Ask whichever worker runs job ``job_id`` to abort it; the number of worker processes told now.

        The ask is recorded for ``keep_ms`` as well (:meth:`aborts_asked`): a worker that was not listening
        finds it when it subscribes, and one that fetches the job later aborts it before it begins."""
        ops = _ops_abort(self.keys, job_id, keep_ms, round(time.time() * 1000))
        return int((await self._run.run(ops, transaction=True))[-1])

    async def aborts_asked(self) -> list[tuple[str, float]]:
        """The aborts asked and not lapsed: (job id, when the ask lapses in epoch seconds)."""
        reply = await self._run.one(_ops_aborts_asked(self.keys, round(time.time() * 1000)))
        return _parse_aborts_asked(reply)

    async def job_record(self, queue: str, job_id: str) -> dict[str, bytes]:
        """Like :meth:`SyncStore.job_record`."""
        reply = await self._run.one(_Cmd(("HGETALL", self.keys.of(queue).record(job_id))))
        return {_text(k): bytes(v) for k, v in _hash(reply).items()}

    async def dead_purge(self, queue: str) -> int:
        """Delete every dead letter of the queue; returns how many there were."""
        dead = self.keys.of(queue).dead
        count, _ = await self._run.run([_Cmd(("ZCARD", dead)), _Cmd(("DEL", dead))], transaction=True)
        return int(count)

    # token window

    async def take_tokens(
        self,
        key: str,
        *,
        allowed: int,
        period_ms: float,
        hold_ms: float,
        want: int,
        min_tokens: int = 1,
        adaptive: bool = False,
        tuning: AdaptiveTuning = _DEFAULT_TUNING,
        burst: int = 0,
        give_back: Sequence[GiveBack] = (),
        slice_tokens: int = 0,
    ) -> TokenReply:
        """One grant from the shared sliding window ``key`` (see DEVELOPERS.md, "The token window"); with
        ``slice_tokens``, up to three of at most that many each, a hold apart (:attr:`TokenReply.later`).

        Each of ``give_back`` is ``(seq, start_us, tokens, unused, started_within_us)`` of an earlier grant of
        this window (its reply's fields), how many of its tokens will never start, and within how many
        microseconds of its start every one that started did (None: not known): the window stops counting the
        unused first, and counts the rest only until then (plus a period). Give back only once no item of the
        grant can start any more.
        """
        log_key, meta_key = self.keys.rate(key)
        args: tuple[Arg, ...] = (
            allowed,
            repr(float(period_ms)),
            repr(float(hold_ms)),
            want,
            min_tokens,
            1 if adaptive else 0,
            repr(float(tuning.margin)),
            repr(float(tuning.probe)),
            burst,
            "" if tuning.headroom is None else repr(float(tuning.headroom)),
            max(0, int(slice_tokens)),
            *_give_back_args(give_back),
        )
        return _parse_token_reply(await self._run.one(_Eval("take_tokens", (log_key, meta_key), args)))

    async def take_tokens_multi(
        self,
        key: str,
        wants: Sequence[tuple[str, int, int]],
        *,
        allowed: int,
        period_ms: float,
        hold_ms: float,
    ) -> list[tuple[int, int, int]]:
        """One grant per ``(sub key, want, min_tokens)`` from the windows of per-key limiter ``key``.

        Returns:
            ``(tokens, delay_us, start_us)`` per entry of ``wants``, in order (see ``take_tokens_multi.lua``).
        """
        if not wants:
            return []
        flat_keys: list[str] = []
        args: list[Arg] = [allowed, repr(float(period_ms)), repr(float(hold_ms))]
        for sub, want, min_tokens in wants:
            flat_keys += self.keys.keyed_rate(key, sub)
            args += [max(1, int(want)), max(1, int(min_tokens))]
        reply = await self._run.one(_Eval("take_tokens_multi", tuple(flat_keys), tuple(args)))
        return [(int(reply[i]), int(reply[i + 1]), int(reply[i + 2])) for i in range(0, len(reply), 3)]

    async def load_scripts(self, names: Sequence[str]) -> None:
        """Have Redis know these scripts before a call of one is urgent: a call that finds its script missing
        loads it and runs again, two more round trips."""
        await self._run.load(names)

    async def penalize_window(
        self,
        key: str,
        *,
        allowed: int,
        period_ms: float,
        hold_ms: float,
        refused: int = 1,
        age_ms: float = 0.0,
        tuning: AdaptiveTuning = _DEFAULT_TUNING,
        reporter: str = "",
    ) -> RefusalReply:
        """Record ``refused`` refusals of the downstream behind window ``key``, the first of a call started
        ``age_ms`` ago, and aim its shared adaptive rate at what the downstream accepted (see ``penalize.lua``).

        With a ``reporter``, the cut is published on :meth:`Keys.rate_cuts` as ``"<cut_at_us> <reporter>"``.
        """
        log_key, meta_key = self.keys.rate(key)
        args: tuple[Arg, ...] = (
            allowed,
            repr(float(period_ms)),
            repr(float(hold_ms)),
            max(1, int(refused)),
            repr(float(tuning.margin)),
            repr(float(tuning.probe)),
            repr(float(tuning.most_cut)),
            repr(max(0.0, float(age_ms))),
            "" if tuning.headroom is None else repr(float(tuning.headroom)),
            self.keys.rate_cuts(key) if reporter else "",
            reporter,
        )
        keys = (log_key, meta_key, self.keys.rate_refusals(key))
        effective, ceiling, accepted, at_us = await self._run.one(_Eval("penalize", keys, args))
        measured = _text(accepted)
        return RefusalReply(
            float(_text(effective)), float(_text(ceiling)), float(measured) if measured else None, int(at_us)
        )


def _give_back_args(give_back: Sequence[GiveBack]) -> tuple[Arg, ...]:
    """take_tokens.lua's ARGV[12..], five a grant: '' for a span not known."""
    args: list[Arg] = []
    for *fields, within in give_back:
        args += [*fields, "" if within is None else within]
    return tuple(args)
