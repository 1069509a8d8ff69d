"""Every Redis key name of flume_rx; nothing else in the package spells one.

Every key of a queue shares the hash tag ``{<ns>:<queue>}``, so one queue lives on one cluster slot and each
Lua script sees all its keys through ``KEYS[]``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from flume_rx.model.job import check_name


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """The keys of one queue; all share the hash tag ``{<ns>:<queue>}`` (``{<ns>:<group>}`` for group/name).

    ``tag`` is the prefix of every key of the queue (the hash tag, then ``/name`` for a grouped queue).
    """

    tag: str
    queue: str
    scheduled: str
    retry: str
    dead: str
    consumers: str
    stats: str
    paused: str
    seconds: str = ""
    minutes: str = ""
    latency: str = ""
    progress: str = ""

    def inflight(self, consumer: str) -> str:
        """The in-flight list of one consumer of this queue."""
        return f"{self.tag}:inflight:{consumer}"

    def arrivals(self, consumer: str) -> str:
        """Where one consumer's blocking wait moves the job that ended it; its next fetch script takes it from
        there, so the job never travels to the worker unchecked. Empty (so absent) between calls."""
        return f"{self.tag}:arrivals:{consumer}"

    def unique(self, key: str) -> str:
        """The claim of a unique job key on this queue (its value is the holder's job id)."""
        return f"{self.tag}:unique:{key}"

    def record(self, job_id: str) -> str:
        """What is known of one job beyond where it waits: a cancelled job's reason and time (a hash with a TTL)."""
        return f"{self.tag}:job:{job_id}"

    def group(self, group_id: str) -> str:
        """The record of a workflow group whose callback goes to this queue: the members' outcomes by place,
        and the callback's job around them (a hash with a TTL)."""
        return f"{self.tag}:group:{group_id}"

    @property
    def hash_tag(self) -> str:
        """The ``{...}`` part of the keys, which picks the cluster slot: equal tags, one slot."""
        return self.tag.partition("}")[0] + "}"

    def cron_tick(self, schedule: str, tick_ms: int) -> str:
        """The claim of one tick of a cron schedule that enqueues to this queue."""
        return f"{self.tag}:cron:{schedule}:{tick_ms}"

    def cron_last(self, schedule: str) -> str:
        """The last tick (unix ms) a cron schedule decided, enqueued or skipped."""
        return f"{self.tag}:cron:{schedule}:last"


@dataclass(frozen=True, slots=True)
class Keys:
    """Builds every Redis key name of a namespace; nothing else in flume_rx spells one.

    >>> Keys("flume").of("email").queue
    '{flume:email}:queue'

    A queue named ``group/name`` hashes by its group, so the queues of one multi-queue pipeline
    (``email/urgent``, ``email/bulk``) share a cluster slot and one Lua call can fetch from all of them:

    >>> Keys("flume").of("email/urgent").queue
    '{flume:email}/urgent:queue'
    """

    namespace: str = "flume"

    def __post_init__(self) -> None:
        check_name(self.namespace, "namespace")

    @property
    def queues(self) -> str:
        """The SET of queue names ever enqueued to (for stats and the dashboard)."""
        return f"{self.namespace}:queues"

    @property
    def abort_channel(self) -> str:
        """The pub/sub channel on which ``Flume.cancel`` asks the workers to abort a running job (by id)."""
        return f"{self.namespace}:abort"

    @property
    def aborts(self) -> str:
        """The ZSET of aborts asked (``Flume.cancel`` of a running job): job id, scored by when the ask lapses
        (ms), so a worker that missed the message on :attr:`abort_channel` finds it here."""
        return f"{self.namespace}:aborts"

    def of(self, queue: str) -> QueueKeys:
        """The keys of ``queue``.

        Raises:
            ConfigError: the name is empty or holds a brace (it would break the hash tag).
        """
        if not isinstance(queue, str):  # before the cache, which would raise TypeError on an unhashable one
            check_name(queue, "queue name")
        return _queue_keys(self.namespace, queue)

    def rate(self, key: str) -> tuple[str, str]:
        """The ``(log, meta)`` keys of the token window named ``key``."""
        check_name(key, "rate limiter key")
        tag = f"{{{self.namespace}:rate:{key}}}"
        return f"{tag}:log", f"{tag}:meta"

    def rate_refusals(self, key: str) -> str:
        """The zset of recent refusals an adaptive token window ``key`` measures its accepted rate with."""
        check_name(key, "rate limiter key")
        return f"{{{self.namespace}:rate:{key}}}:refusals"

    def rate_cuts(self, key: str) -> str:
        """The pub/sub channel on which ``penalize.lua`` tells every process of adaptive window ``key`` that
        its rate was just aimed lower (the message: the cut's Redis time in us and who reported it)."""
        check_name(key, "rate limiter key")
        return f"{{{self.namespace}:rate:{key}}}:cuts"

    def keyed_rate(self, key: str, sub: str) -> tuple[str, str]:
        """The ``(log, meta)`` keys of window ``sub`` of the per-key limiter ``key`` (all in one slot)."""
        check_name(key, "rate limiter key")
        tag = f"{{{self.namespace}:rate:{key}}}"
        return f"{tag}:k:{sub}:log", f"{tag}:k:{sub}:meta"


@functools.lru_cache(maxsize=1024)
def _queue_keys(namespace: str, queue: str) -> QueueKeys:
    """The keys of ``queue`` in ``namespace``, built once: every enqueue, fetch and settle asks, and building
    twelve names each time cost a producer that wakes to enqueue one job about 45 µs of its cold start.

    Raises:
        ConfigError: the name is empty or holds a brace (it would break the hash tag).
    """
    check_name(queue, "queue name")
    group, _, rest = queue.partition("/")
    grouped = bool(group and rest)
    tag = f"{{{namespace}:{group}}}/{rest}" if grouped else f"{{{namespace}:{queue}}}"
    return QueueKeys(
        tag=tag,
        queue=f"{tag}:queue",
        scheduled=f"{tag}:scheduled",
        retry=f"{tag}:retry",
        dead=f"{tag}:dead",
        consumers=f"{tag}:consumers",
        stats=f"{tag}:stats",
        paused=f"{tag}:paused",
        seconds=f"{tag}:rate_s",
        minutes=f"{tag}:rate_m",
        latency=f"{tag}:latency",
        progress=f"{tag}:progress",
    )
