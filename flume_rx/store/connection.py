"""Redis clients: cluster URLs, endpoint descriptions, client checks.

The URL checks and the one redaction are :mod:`flume_rx.model.urls` (the config checks URLs without Redis).
"""

from __future__ import annotations

import re
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from flume_rx.model.errors import ConfigError, DataError, StoreError

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
"""URL schemes that ask for a Redis Cluster client; the host:port is any node of the cluster."""


def cluster_url(url: str) -> str | None:
    """The plain ``redis://``/``rediss://`` URL of a ``redis+cluster://`` one; None for any other URL."""
    scheme, sep, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower())
    return f"{plain}://{rest}" if plain and sep else None


_CLUSTER_CLIENTS = (redis.cluster.RedisCluster, redis.asyncio.cluster.RedisCluster)
_is_cluster_class: dict[type, bool] = {}
"""Answers by the client's class: isinstance against the cluster clients runs their metaclass's check (a
typing protocol's) in Python, microseconds a call, and the runners ask at every fetch and settle."""


def is_cluster(client: Any) -> bool:
    """Whether ``client`` is a redis-py cluster client (sync or asyncio)."""
    cls = client.__class__  # what isinstance looks at too (a mock with a spec answers its spec's class)
    known = _is_cluster_class.get(cls)
    if known is None:
        known = _is_cluster_class[cls] = isinstance(client, _CLUSTER_CLIENTS)
    return known


def _connection_kwargs(client: Any) -> dict[str, Any]:
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        return dict(pool.connection_kwargs)
    kwargs = getattr(client, "connection_kwargs", None)  # asyncio cluster client
    if kwargs is None:
        kwargs = client.nodes_manager.connection_kwargs  # sync cluster client
    return dict(kwargs)


def describe_endpoint(client: redis.Redis | redis.asyncio.Redis) -> str:
    """``redis://host:port/db`` of a client, never with its password."""
    if is_cluster(client):
        nodes: Any = client
        return "redis+cluster://" + ",".join(f"{n.host}:{n.port}" for n in nodes.get_nodes()[:3])
    pool = client.connection_pool
    kw = pool.connection_kwargs
    db = kw.get("db", 0)
    if kw.get("path"):
        return f"unix://{kw['path']}?db={db}"
    scheme = "rediss" if "SSL" in pool.connection_class.__name__ else "redis"
    return f"{scheme}://{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{db}"


def _store_error(client: redis.Redis | redis.asyncio.Redis, exc: Exception) -> StoreError:
    where = describe_endpoint(client)
    if isinstance(exc, AuthenticationError):
        # A subclass of ConnectionError, but Redis was reached: it refused who we said we are.
        return StoreError(
            f"Redis at {where} refused to authenticate us ({exc}); check the user and password in redis_url "
            "(redis://user:password@host:port/db)"
        )
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return StoreError(
            f"cannot reach Redis at {where} ({type(exc).__name__}: {exc}); "
            "check that it runs and that redis_url is right"
        )
    # redis-py prefixes a pipeline's error with the command, payloads and all: keep Redis's own words only.
    said = _PIPELINE_PREFIX.sub("", str(exc))
    if "DB index is out of range" in said:
        return StoreError(
            f"Redis at {where} has no database with that number ({said}); pick one below its `databases` "
            "setting (16 by default) at the end of redis_url, e.g. /0"
        )
    if said.startswith("NOPERM") or "has no permissions" in said:
        return StoreError(
            f"Redis at {where} does not let our user run a command flume_rx needs ({said}); grant the ACL user "
            "the commands and keys of docs/reliability.md, or use another user"
        )
    if said.startswith("settle: "):  # the settle script refused before writing: retrying cannot help
        return DataError(
            f"Redis at {where} refused the call because of a key's content ({said}); the jobs concerned go to "
            "the dead letters, and the key should be looked at"
        )
    if said.startswith("OOM ") or "used memory > 'maxmemory'" in said:
        return StoreError(
            f"Redis at {where} is full (used memory over maxmemory) and refused the write; free memory, raise "
            "maxmemory or drain the queues, then try again"
        )
    return StoreError(
        f"Redis at {where} answered with an error ({said}); check its version (>= 6.2) and logs"
    )


_PIPELINE_PREFIX = re.compile(r"^Command # \d+ \(.*?\) of pipeline caused error: ", re.DOTALL)


def _check_client(client: redis.Redis | redis.asyncio.Redis) -> None:
    if _connection_kwargs(client).get("decode_responses"):
        raise ConfigError(
            "the Redis client decodes responses (decode_responses=True); payloads are bytes, so pass a "
            "client made with decode_responses=False"
        )


def _client_kwargs(socket_timeout_s: float) -> dict[str, Any]:
    return {
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": min(5.0, socket_timeout_s),
        "socket_keepalive": True,
        "health_check_interval": 30,
        "decode_responses": False,
    }
