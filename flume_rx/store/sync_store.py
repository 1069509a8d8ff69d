"""The blocking store for producers, admin tools and the heartbeat thread."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Final, Literal, cast

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from flume_rx.model.urls import invalid_url
from flume_rx.store.commands import (
    DEAD_RETRY_CHUNK,
    Handoff,
    UniqueEnqueue,
    _hash,
    _ops_abort,
    _ops_cancel,
    _ops_dead_retry,
    _ops_dead_retry_oldest,
    _ops_delete,
    _ops_enqueue,
    _ops_enqueue_unique,
    _ops_heartbeat,
    _ops_schedule,
    _pairs,
    _parse_unique,
    _text,
)
from flume_rx.store.connection import _check_client, _client_kwargs, cluster_url
from flume_rx.store.keys import Keys
from flume_rx.store.queries import (
    _STATS_FIRST,
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
    _parse_consumers,
    _parse_peek,
    _parse_rate_use,
    _parse_rates,
    _parse_stats,
)
from flume_rx.store.scripts import Arg, SyncRunner, _Cmd, _Op

REGISTER_EVERY_S: Final = 60.0
"""How often a producer registers a queue it enqueues to, that is adds it to the namespace's set of queues
(see ``SyncStore._registration_due``)."""


class SyncStore:
    """The blocking store for producers, admin tools and the heartbeat thread.

    It runs the same calls as :class:`RedisStore`; a heartbeat from a thread with its own client keeps
    beating while a worker's event loop is busy.
    """

    def __init__(
        self,
        client: redis.Redis,
        namespace: str = "flume",
        *,
        dead_max: int = 10_000,
        dead_ttl_ms: int = 7 * 24 * 3600 * 1000,
    ) -> None:
        _check_client(client)
        self.client = client
        self.keys = Keys(namespace)
        self.dead_max = dead_max
        self.dead_ttl_ms = dead_ttl_ms
        self._run = SyncRunner(client)
        self._owns_client = False
        self._registered_at: dict[
            str, float
        ] = {}  # queue -> when this store last registered it (monotonic s)

    @classmethod
    def from_url(cls, url: str, namespace: str = "flume", *, socket_timeout_s: float = 30.0) -> SyncStore:
        try:
            plain = cluster_url(url)
            if plain is not None:
                client = cast(
                    redis.Redis,
                    redis.cluster.RedisCluster.from_url(plain, **_client_kwargs(socket_timeout_s)),  # type: ignore[no-untyped-call, unused-ignore]
                )
            else:
                client = redis.Redis.from_url(url, **_client_kwargs(socket_timeout_s))
        except ValueError as exc:
            raise invalid_url(url, str(exc)) from None
        store = cls(client, namespace)
        store._owns_client = True
        return store

    def close(self) -> None:
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> SyncStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def enqueue(self, queue: str, payloads: Sequence[bytes]) -> None:
        if payloads:
            register = self._registration_due(queue)
            self._run.run(_ops_enqueue(self.keys, queue, payloads, register=register), transaction=True)
            self._note_registration(queue, register)

    def enqueue_workflow(
        self,
        jobs: Sequence[tuple[str, bytes]],
        group: tuple[str, str, dict[str, bytes | int], int] | None = None,
        waiting: Sequence[tuple[str, str, Mapping[str, bytes | str | int]]] = (),
        waiting_ms: int = 0,
    ) -> None:
        """Enqueue the first jobs of a workflow, ``(queue, payload)`` each, in one transaction; with ``group``
        ``(callback queue, group id, fields, ttl_ms)``, the group's record is written first, so no member can
        settle before its group exists. ``waiting`` ``(queue, job id, fields)`` are the records of the
        workflow's jobs (later chain steps and a group's callback have ``chained``: they are to come), kept
        ``waiting_ms``, so ``Flume.job`` can say what one waits on and ``Flume.result`` can wait for it before
        it is enqueued."""
        ops: list[_Op] = []
        for queue, job_id, fields in waiting:
            record = self.keys.of(queue).record(job_id)
            pairs: list[Arg] = [part for pair in fields.items() for part in pair]
            ops += [_Cmd(("HSET", record, *pairs)), _Cmd(("PEXPIRE", record, waiting_ms))]
        # Known from now, so a lookup without a queue finds the jobs to come on queues nothing was sent to yet.
        ops += [_Cmd(("SADD", self.keys.queues, queue)) for queue in dict.fromkeys(q for q, _, _ in waiting)]
        if group is not None:
            then_queue, group_id, fields, ttl_ms = group
            key = self.keys.of(then_queue).group(group_id)
            flat: list[Arg] = [part for pair in fields.items() for part in pair]
            ops += [
                _Cmd(("HSET", key, *flat)),
                _Cmd(("PEXPIRE", key, ttl_ms)),
                _Cmd(("SADD", self.keys.queues, then_queue)),
            ]
        by_queue: dict[str, list[bytes]] = {}
        for queue, payload in jobs:
            by_queue.setdefault(queue, []).append(payload)
        for queue, payloads in by_queue.items():
            ops += _ops_enqueue(self.keys, queue, payloads)
        self._run.run(ops, transaction=True)

    def schedule(self, queue: str, items: Sequence[tuple[bytes, float]]) -> None:
        self._schedule(queue, items, "at")

    def schedule_in(self, queue: str, items: Sequence[tuple[bytes, float]]) -> None:
        self._schedule(queue, items, "in")

    def _schedule(self, queue: str, items: Sequence[tuple[bytes, float]], mode: Literal["at", "in"]) -> None:
        if items:
            register = self._registration_due(queue)
            self._run.run(_ops_schedule(self.keys, queue, items, mode, register=register), transaction=True)
            self._note_registration(queue, register)

    def _registration_due(self, queue: str) -> bool:
        """Whether this enqueue should register ``queue`` (again) in the namespace's set of queues.

        The set is read only to list queues (stats, the dashboard, the CLI), so a producer registers each
        queue once every ``REGISTER_EVERY_S`` rather than with every job: its enqueue is then one command, not
        a MULTI of two. Registering again heals a set wiped from outside (a FLUSHDB) within that time.
        """
        registered_at = self._registered_at.get(queue)
        return registered_at is None or time.monotonic() - registered_at >= REGISTER_EVERY_S

    def _note_registration(self, queue: str, register: bool) -> None:
        if register:  # only once Redis took the write: a failed one registers again next time
            self._registered_at[queue] = time.monotonic()

    def cron_last(self, queue: str, schedule: str) -> int | None:
        """The last tick (unix ms) the cron schedule decided, or None if it never ran."""
        last = self._run.one(_Cmd(("GET", self.keys.of(queue).cron_last(schedule))))
        return None if last is None else int(last)

    def enqueue_unique(
        self,
        queue: str,
        jobs: Sequence[UniqueEnqueue],
        unique_for_ms: int,
        mode: Literal["now", "at", "in"] = "now",
    ) -> list[tuple[bool, str]]:
        """Like :meth:`RedisStore.enqueue_unique`."""
        if not jobs:
            return []
        return _parse_unique(
            self._run.run(_ops_enqueue_unique(self.keys, queue, jobs, unique_for_ms, mode), transaction=True)
        )

    def heartbeat(self, queues: Sequence[str], consumer: str) -> None:
        self._run.run(_ops_heartbeat(self.keys, queues, consumer))

    def pause(self, queue: str) -> None:
        self._run.one(_Cmd(("SET", self.keys.of(queue).paused, "1")))

    def resume(self, queue: str) -> None:
        self._run.one(_Cmd(("DEL", self.keys.of(queue).paused)))

    def is_paused(self, queue: str) -> bool:
        return bool(self._run.one(_Cmd(("EXISTS", self.keys.of(queue).paused))))

    def known_queues(self) -> list[str]:
        return sorted(_text(q) for q in self._run.one(_Cmd(("SMEMBERS", self.keys.queues))))

    def stats(
        self, queues: Sequence[str] | None = None, orphan_timeout_s: float = DEFAULT_ORPHAN_TIMEOUT_S
    ) -> dict[str, QueueStats]:
        names = list(queues) if queues is not None else self.known_queues()
        first = self._run.run([op for q in names for op in _ops_stats_first(self.keys, q)])
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
        for q, length in zip(owners, self._run.run(inflight_ops), strict=True):
            result[q]["in_flight"] += int(length)
        return result

    def consumers(
        self, queues: Sequence[str] | None = None, orphan_timeout_s: float = DEFAULT_ORPHAN_TIMEOUT_S
    ) -> list[ConsumerInfo]:
        names = list(queues) if queues is not None else self.known_queues()
        replies = self._run.run([op for q in names for op in _ops_consumers(self.keys, q)])
        found = [
            c
            for i, q in enumerate(names)
            for c in _parse_consumers(q, replies[2 * i : 2 * i + 2], orphan_timeout_s)
        ]
        lengths = self._run.run(
            [_Cmd(("LLEN", self.keys.of(c["queue"]).inflight(c["consumer"]))) for c in found]
        )
        for info, length in zip(found, lengths, strict=True):
            info["in_flight"] = int(length)
        return found

    def rates(
        self, queue: str, resolution: Literal["second", "minute"] = "second", count: int = 60
    ) -> list[RatePoint]:
        return _parse_rates(self._run.run(_ops_rates(self.keys, queue, resolution)), resolution, count)

    def peek(
        self, queue: str, where: PeekWhere = "queued", limit: int = 20, start: int = 0
    ) -> list[tuple[bytes, float | None]]:
        return _parse_peek(where, self._run.one(_ops_peek(self.keys, queue, where, start, limit)))

    def delete(self, queue: str, payloads: Sequence[bytes]) -> int:
        if not payloads:
            return 0
        return sum(int(r) for r in self._run.run(_ops_delete(self.keys, queue, payloads), transaction=True))

    def rate_use(self, key: str, period_ms: float) -> int:
        return _parse_rate_use(self._run.run(_ops_rate_use(self.keys, key, period_ms)), period_ms)

    def window_rate(self, key: str) -> tuple[float, int] | None:
        """The effective rate (tokens per period) of the shared window ``key`` at its last grant or refusal,
        and its allowed; None while the window is quiet (its state expired, so the rate is the configured
        allowed again)."""
        _, meta = self.keys.rate(key)
        rate, allowed = self._run.one(_Cmd(("HMGET", meta, "rate", "allowed")))
        if rate is None or allowed is None:
            return None
        return float(_text(rate)), int(allowed)

    def window_counts(self, key: str) -> tuple[int, int]:
        """Grants and waits (grants that were reservations) of the shared window ``key`` while it is active."""
        _, meta = self.keys.rate(key)
        grants, waits = self._run.one(_Cmd(("HMGET", meta, "seq", "waits")))
        return int(grants or 0), int(waits or 0)

    def dead_list(self, queue: str, limit: int = 100) -> list[tuple[bytes, float]]:
        reply = self._run.one(_Cmd(("ZREVRANGE", self.keys.of(queue).dead, 0, limit - 1, "WITHSCORES")))
        return [(payload, score / 1000) for payload, score in _pairs(reply)]

    def dead_retry(
        self,
        queue: str,
        payloads: Sequence[bytes] | None = None,
        new_payloads: Sequence[bytes] | None = None,
    ) -> int:
        if payloads is not None:
            return int(self._run.one(_ops_dead_retry(self.keys, queue, payloads, new_payloads)))
        total = 0
        while moved := int(self._run.one(_ops_dead_retry_oldest(self.keys, queue, DEAD_RETRY_CHUNK))):
            total += moved
        return total

    def inflight(self, queue: str, consumer: str) -> list[bytes]:
        """The payloads one consumer of ``queue`` has fetched and not settled."""
        return [
            bytes(p) for p in self._run.one(_Cmd(("LRANGE", self.keys.of(queue).inflight(consumer), 0, -1)))
        ]

    def job_record(self, queue: str, job_id: str) -> dict[str, bytes]:
        """The record kept of job ``job_id`` beyond where it waits (a cancelled job's); empty when none."""
        reply = self._run.one(_Cmd(("HGETALL", self.keys.of(queue).record(job_id))))
        return {_text(k): bytes(v) for k, v in _hash(reply).items()}

    def group_count(self, queue: str, group_id: str) -> tuple[int, int] | None:
        """``(members, settled so far)`` of a group whose callback goes to ``queue``; None once its callback
        is enqueued (or it expired)."""
        size, settled = self._run.one(_Cmd(("HMGET", self.keys.of(queue).group(group_id), "size", "settled")))
        return None if size is None else (int(size), int(settled or 0))

    def recent_progress(self, queue: str, limit: int = 20) -> list[tuple[str, float, str, float]]:
        """The jobs of ``queue`` that reported progress in the last minute and are not finished, newest report
        first: ``(job_id, fraction, message, reported_at)``."""
        k = self.keys.of(queue)
        now_s, ids = self._run.run([_Cmd(("TIME",)), _Cmd(("ZREVRANGE", k.progress, 0, limit - 1))])
        since_s = int(now_s[0]) - 60
        job_ids = [_text(i) for i in ids]
        fields = ("progress", "progress_message", "progress_ms", "state")
        records = self._run.run([_Cmd(("HMGET", k.record(i), *fields)) for i in job_ids])
        found = []
        for job_id, (fraction, message, at_ms, state) in zip(job_ids, records, strict=True):
            if fraction is None or state is not None or int(at_ms or 0) / 1000 < since_s:
                continue  # expired, finished (done, dead, cancelled) or quiet for a minute
            found.append((job_id, float(fraction), _text(message or b""), int(at_ms) / 1000))
        return found

    def abort(self, job_id: str, keep_ms: int) -> int:
        """Like :meth:`RedisStore.abort`."""
        replies = self._run.run(
            _ops_abort(self.keys, job_id, keep_ms, round(time.time() * 1000)), transaction=True
        )
        return int(replies[-1])

    def cancel(
        self, queue: str, job_id: str, payload: bytes, keep_ms: int, handoffs: Sequence[Handoff] = ()
    ) -> bool:
        """Take the waiting job ``payload`` off ``queue`` (queued, scheduled or retry) and record it as
        cancelled for ``keep_ms``, making its workflow ``handoffs`` in the same step; False when it was no
        longer waiting."""
        return bool(self._run.one(_ops_cancel(self.keys, queue, job_id, payload, keep_ms, handoffs)))

    def cancel_to_come(
        self, queue: str, job_id: str, record: bytes, keep_ms: int, handoffs: Sequence[Handoff] = ()
    ) -> bool:
        """Cancel the workflow job ``job_id`` to come (a later chain step, a group's callback) while its
        record still says so: the record says cancelled (``record`` its job record) for ``keep_ms``, with
        ``handoffs`` made in the same step, and the hand-off that would enqueue it skips it. False when it
        was enqueued (or settled) meanwhile."""
        op = _ops_cancel(self.keys, queue, job_id, b"", keep_ms, handoffs, record)
        return bool(self._run.one(op))

    def dead_purge(self, queue: str) -> int:
        dead = self.keys.of(queue).dead
        count, _ = self._run.run([_Cmd(("ZCARD", dead)), _Cmd(("DEL", dead))], transaction=True)
        return int(count)
