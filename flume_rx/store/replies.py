"""Parsing a call's one reply in the callback that receives it, not through a stream.

redis-py's asyncio connection reads a reply through an ``asyncio.StreamReader``: the bytes reach the reader's
buffer in the transport's callback, the reading task wakes a turn of the loop later, copies them out, hands
them to the parser and unwinds redis-py's read layers (a timeout context among them); here the task wakes to
the parsed reply. Every script call of a pipeline (its fetches, its settles, the blocking wait for its next
job) paid that: a sync no-op drain spent 24.1 us of CPU per job with it, 20.8 us with the reply parsed in the
callback that receives it, and the wait's reply reached the source 0.045 ms after the loop woke instead of
0.055 (docs/performance.md, "Twenty-second round").

:func:`read_reply` lends the connection's transport a protocol of its own for the one reply: it feeds the
bytes to the connection's own hiredis reader, so whatever comes after the reply stays where redis-py's next
read looks for it, and gives the transport back to redis-py's stream in the callback that completed the
reply. A connection without those parts (another parser, another transport) is read as redis-py reads it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis._parsers.hiredis as redis_hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

_NOT_ENOUGH_DATA: object = getattr(redis_hiredis, "NOT_ENOUGH_DATA", False)
"""What the connection's hiredis reader returns while a reply is incomplete (False before redis-py 5.1)."""


class _OneReply(asyncio.Protocol):
    """The transport's protocol while one reply is read; everything but the data goes to redis-py's."""

    def __init__(self, transport: Any, stream: Any, parser: Any, reply: asyncio.Future[Any]) -> None:
        self._transport = transport
        self._stream = stream  # redis-py's protocol (an asyncio.StreamReaderProtocol), lent back after
        self._parser = parser  # the connection's hiredis reader: any bytes after the reply stay in it
        self._reply = reply

    def give_back(self) -> None:
        if self._transport.get_protocol() is self:
            self._transport.set_protocol(self._stream)

    def data_received(self, data: bytes) -> None:
        self._parser.feed(data)
        reply = self._parser.gets()
        if reply is _NOT_ENOUGH_DATA:
            return
        self.give_back()
        if not self._reply.done():
            self._reply.set_result(reply)

    def eof_received(self) -> bool | None:
        self._fail(RedisConnectionError("Connection closed by server."))
        self.give_back()
        result: bool | None = self._stream.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"Connection lost while waiting for a reply: {exc or 'closed'}"))
        self.give_back()
        self._stream.connection_lost(exc)

    def pause_writing(self) -> None:
        self._stream.pause_writing()

    def resume_writing(self) -> None:
        self._stream.resume_writing()

    def _fail(self, error: Exception) -> None:
        if not self._reply.done():
            self._reply.set_exception(error)


def _hiredis_reader(connection: Any) -> Any:
    """The connection's hiredis reader, when its reply can be read in the transport's callback: None when
    the parser is not hiredis, or redis-py's stream already holds bytes (they come before the reply)."""
    parser = getattr(getattr(connection, "_parser", None), "_reader", None)
    stream = getattr(connection, "_reader", None)
    writer = getattr(connection, "_writer", None)
    if parser is None or not hasattr(parser, "feed") or stream is None or writer is None:
        return None
    if getattr(stream, "_buffer", b"") or stream.at_eof():
        return None
    return parser


async def _write(connection: Any, packed: list[bytes]) -> None:
    """Write a call on a connection without redis-py's send, which runs every write under ``wait_for``: a
    task and a timer per call for a write the socket almost always takes at once. When it takes less than the
    whole call (a large settle, a Redis slow to read), the rest waits for room within the socket timeout, as
    redis-py's send would."""
    writer = getattr(connection, "_writer", None)
    if writer is None:
        await connection.send_packed_command(packed, check_health=False)
        return
    writer.writelines(packed)
    if not writer.transport.get_write_buffer_size():
        return
    try:
        await asyncio.wait_for(writer.drain(), connection.socket_timeout)
    except TimeoutError as exc:
        raise RedisTimeoutError("timed out writing a call to Redis") from exc
    except OSError as exc:
        raise RedisConnectionError(f"error writing a call to Redis: {exc}") from exc


async def read_reply(connection: Any, packed: list[bytes]) -> Any:
    """Write ``packed`` on ``connection`` and return the one reply it gives, read in the transport's callback
    when the connection allows it (see the module), else as redis-py reads it.

    Raises:
        ResponseError: the reply was an error (the connection is clean).
        redis.exceptions.ConnectionError, redis.exceptions.TimeoutError: the connection failed, or no reply
            came within its socket timeout; the caller must disconnect it (the reply may still come).
    """
    parser = _hiredis_reader(connection)
    if parser is None:
        await _write(connection, packed)
        return await connection.read_response()
    loop = asyncio.get_running_loop()
    transport = connection._writer.transport
    reply: asyncio.Future[Any] = loop.create_future()
    catcher = _OneReply(transport, transport.get_protocol(), parser, reply)
    transport.set_protocol(catcher)
    timeout_s = connection.socket_timeout
    timer = None
    if timeout_s is not None:
        timer = loop.call_later(
            timeout_s, catcher._fail, RedisTimeoutError(f"no reply from Redis within {timeout_s} s")
        )
    try:
        # No drain: the reply cannot come before the whole call is written, and the timer above bounds both.
        connection._writer.writelines(packed)
        response = await reply
    finally:
        catcher.give_back()
        if timer is not None:
            timer.cancel()
    # hiredis hands an error reply back as a value, built by redis-py's parser: a ResponseError, or for some
    # replies (LOADING) a ConnectionError; redis-py's own read raises both, and so does this one.
    if isinstance(response, (RedisConnectionError, ResponseError)):
        raise response
    return response
