"""A reply read in the transport's callback: whole however it is split, errors and faults raised, and the
connection handed back to redis-py as it would have left it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import redis
import redis.asyncio
from redis._parsers import _AsyncRESP2Parser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from flume_rx.store.replies import _hiredis_reader, read_reply

Body = Callable[[Any, redis.asyncio.Redis], Coroutine[Any, Any, None]]


async def _with_connection(url: str, body: Body, **client_kwargs: Any) -> None:
    client = redis.asyncio.Redis.from_url(url, **client_kwargs)
    connection: Any = await client.connection_pool.get_connection()
    # Read in the callback unless the test asks for another parser.
    assert (_hiredis_reader(connection) is None) == ("parser_class" in client_kwargs)
    try:
        await body(connection, client)
    finally:
        await client.connection_pool.release(connection)
        await client.aclose()


def _run(url: str, body: Body, **client_kwargs: Any) -> None:
    asyncio.run(_with_connection(url, body, **client_kwargs))


async def _own_protocol(connection: Any) -> bool:
    """Whether redis-py's stream is again the transport's protocol, and redis-py reads the next reply."""
    stream_protocol = connection._writer._protocol
    await connection.send_packed_command(connection.pack_command("PING"))
    return bool(connection._writer.transport.get_protocol() is stream_protocol) and (
        await connection.read_response() == b"PONG"
    )


@pytest.fixture
def url(redis_url: str) -> str:
    redis.Redis.from_url(redis_url).set("big", b"x" * 3_000_000)
    return redis_url


def test_a_reply_split_over_many_reads_arrives_whole(url: str) -> None:
    async def body(connection: Any, _client: redis.asyncio.Redis) -> None:
        assert await read_reply(connection, connection.pack_command("GET", "big")) == b"x" * 3_000_000
        assert await _own_protocol(connection)

    _run(url, body)


def test_what_comes_after_the_reply_is_left_for_redis_pys_next_read(url: str) -> None:
    async def body(connection: Any, _client: redis.asyncio.Redis) -> None:
        packed = connection.pack_commands([("ECHO", "first"), ("ECHO", "second")])
        assert await read_reply(connection, packed) == b"first"
        assert await connection.read_response() == b"second"
        assert await _own_protocol(connection)

    _run(url, body)


def test_an_error_reply_is_raised_as_redis_py_raises_it_and_the_connection_stays_usable(url: str) -> None:
    async def body(connection: Any, _client: redis.asyncio.Redis) -> None:
        with pytest.raises(NoScriptError):
            await read_reply(connection, connection.pack_command("EVALSHA", "0" * 40, 0))
        assert await _own_protocol(connection)

    _run(url, body)


def test_a_connection_killed_during_the_wait_fails_the_read_and_redis_py_sees_it_closed(url: str) -> None:
    async def body(connection: Any, client: redis.asyncio.Redis) -> None:
        reading = asyncio.ensure_future(read_reply(connection, connection.pack_command("BLPOP", "none", 10)))
        await asyncio.sleep(0.2)
        killer = redis.Redis.from_url(url)
        assert killer.client_kill_filter(_type="normal", skipme=True) >= 1
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(reading, 5)
        assert connection._reader.at_eof()  # the kept-connection check drops it

    _run(url, body)


def test_no_reply_within_the_socket_timeout_fails_the_read(url: str) -> None:
    async def body(connection: Any, _client: redis.asyncio.Redis) -> None:
        started = asyncio.get_running_loop().time()
        with pytest.raises(RedisTimeoutError, match=r"within 0\.3 s"):
            await read_reply(connection, connection.pack_command("BLPOP", "none", 0))
        assert asyncio.get_running_loop().time() - started < 3

    _run(url, body, socket_timeout=0.3)


def test_a_cancelled_read_gives_the_transport_back(url: str) -> None:
    async def body(connection: Any, _client: redis.asyncio.Redis) -> None:
        stream_protocol = connection._writer._protocol
        reading = asyncio.ensure_future(read_reply(connection, connection.pack_command("BLPOP", "none", 10)))
        await asyncio.sleep(0.1)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        assert connection._writer.transport.get_protocol() is stream_protocol

    _run(url, body)


def test_a_connection_without_hiredis_is_read_as_redis_py_reads_it(url: str) -> None:
    async def body(connection: Any, _client: redis.asyncio.Redis) -> None:
        assert isinstance(connection._parser, _AsyncRESP2Parser)
        assert await read_reply(connection, connection.pack_command("GET", "big")) == b"x" * 3_000_000
        with pytest.raises(NoScriptError):
            await read_reply(connection, connection.pack_command("EVALSHA", "0" * 40, 0))
        assert await _own_protocol(connection)

    _run(url, body, parser_class=_AsyncRESP2Parser)
