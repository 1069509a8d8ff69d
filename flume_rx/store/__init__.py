"""The Redis store: the only package that knows key names and Lua.

Every key of a queue shares the hash tag ``{<ns>:<queue>}``, so one queue lives on one cluster slot and each
Lua script sees all its keys through ``KEYS[]``. Time always comes from Redis ``TIME``, never from a client's
clock. :class:`RedisStore` (asyncio) serves workers; :class:`SyncStore` serves producers, admin tools and the
heartbeat thread. Both build every call with the same functions and read replies with the same parsers, so
they cannot drift apart.

Modules, each with one concern:

- :mod:`~flume_rx.store.keys`: every key name.
- :mod:`~flume_rx.store.scripts`: the Lua scripts and the one runner (one round trip, one NOSCRIPT rule).
- :mod:`~flume_rx.store.commands`: the operations of each verb, the parsers of their replies, public types.
- :mod:`~flume_rx.store.connection`: Redis URLs and clients (cluster URLs, redaction, endpoint names).
- :mod:`~flume_rx.store.outage`: the backoff through an outage and its one log line.
- :mod:`~flume_rx.store.redis_store` and :mod:`~flume_rx.store.sync_store`: the two stores.
- :mod:`~flume_rx.store.windows`: the token windows shared through Redis (one window, or one per key).

>>> store = RedisStore.from_url("redis://127.0.0.1:6380/0")  # doctest: +SKIP
>>> await store.enqueue("email", [payload])  # doctest: +SKIP
>>> await store.fetch("email", "host-1:4242", n=10, block_s=5.0)  # doctest: +SKIP
[payload]
"""

# The underscored names are imported from here by tests and benchmarks written against the single module.
from flume_rx.model.urls import redact_url
from flume_rx.store.commands import (  # noqa: F401
    DEAD_RETRY_CHUNK,
    LATENCY_SAMPLES,
    RATE_MINUTES,
    RATE_SECONDS,
    Handoff,
    RefusalReply,
    Settlement,
    TokenReply,
    UniqueEnqueue,
    _ops_enqueue,
    _ops_fetch,
    _ops_requeue,
    _ops_settle,
)
from flume_rx.store.connection import CLUSTER_SCHEMES, cluster_url, describe_endpoint, is_cluster
from flume_rx.store.keys import Keys, QueueKeys
from flume_rx.store.outage import (
    OUTAGE_LOG,
    Outage,
    _OutageLog,  # noqa: F401
    through_outage,
)
from flume_rx.store.queries import (
    ConsumerInfo,
    PeekWhere,
    QueueStats,
    RatePoint,
)
from flume_rx.store.redis_store import RedisStore
from flume_rx.store.scripts import SCRIPTS, Arg, _Cmd, _Eval, _Op, _sha, lua_source  # noqa: F401
from flume_rx.store.sync_store import SyncStore
from flume_rx.store.windows import RedisKeyedWindow, RedisTokenWindow

__all__ = [
    "CLUSTER_SCHEMES",
    "DEAD_RETRY_CHUNK",
    "LATENCY_SAMPLES",
    "OUTAGE_LOG",
    "RATE_MINUTES",
    "RATE_SECONDS",
    "SCRIPTS",
    "Arg",
    "ConsumerInfo",
    "Handoff",
    "Keys",
    "Outage",
    "PeekWhere",
    "QueueKeys",
    "QueueStats",
    "RatePoint",
    "RedisKeyedWindow",
    "RedisStore",
    "RedisTokenWindow",
    "RefusalReply",
    "Settlement",
    "SyncStore",
    "TokenReply",
    "UniqueEnqueue",
    "cluster_url",
    "describe_endpoint",
    "is_cluster",
    "lua_source",
    "redact_url",
    "through_outage",
]
