"""The Lua scripts and the one runner that sends operations to Redis.

Scripts live in ``flume_rx/lua/<verb>.lua``; they are called by SHA and loaded only when Redis answers
``NOSCRIPT`` (it restarted or flushed its scripts). The rule for that lives once, in :func:`_plan`: run every
operation in one round trip, load the scripts of the operations Redis did not know, run only those again.
:class:`AsyncRunner` and :class:`SyncRunner` just carry the plan's steps to an asyncio or a blocking client.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib.resources
import os
import select
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis
import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from flume_rx.store.connection import _store_error, is_cluster
from flume_rx.store.replies import read_reply

Arg = bytes | str | int | float

SCRIPTS = (
    "schedule",
    "fetch",
    "settle",
    "promote",
    "heartbeat",
    "recover",
    "requeue_all",
    "dead_retry",
    "take_tokens",
    "penalize",
    "enqueue_unique",
    "cron_tick",
    "fetch_weighted",
    "take_tokens_multi",
    "cancel",
    "progress",
)


_PRELUDES: dict[str, tuple[str, ...]] = {
    "fetch": ("_oversized",),
    "fetch_weighted": ("_oversized",),
    "take_tokens": ("_window",),
    "take_tokens_multi": ("_window",),
    "settle": ("_handoff",),
    "cancel": ("_handoff",),
}
"""Shared Lua a script begins with, as Redis scripts cannot include files: ``lua/_<part>.lua``."""


@functools.cache
def lua_source(name: str) -> str:
    """The text of script ``name`` (``flume_rx/lua/<name>.lua`` after its preludes), from the installed package."""
    return "".join(_lua_file(part) + "\n" for part in _PRELUDES.get(name, ())) + _lua_file(name)


def _lua_file(name: str) -> str:
    return importlib.resources.files("flume_rx").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


@functools.cache
def _sha(name: str) -> str:
    return hashlib.sha1(lua_source(name).encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class _Eval:
    script: str
    keys: tuple[str, ...]
    args: tuple[Arg, ...]

    def command(self) -> tuple[Arg, ...]:
        return ("EVALSHA", _sha(self.script), len(self.keys), *self.keys, *self.args)


@dataclass(frozen=True, slots=True)
class _Cmd:
    args: tuple[Arg, ...]

    def command(self) -> tuple[Arg, ...]:
        return self.args


_Op = _Eval | _Cmd


# ---------------------------------------------------------------------------------------------- the plan


@dataclass(frozen=True, slots=True)
class _Send:
    """Send ``ops`` in one round trip; the reply is one result (or exception) per op, never raised."""

    ops: Sequence[_Op]
    transaction: bool


@dataclass(frozen=True, slots=True)
class _Load:
    """Load these scripts into Redis (SCRIPT LOAD)."""

    scripts: frozenset[str]


_Step = _Send | _Load

_TRANSPORT_ERRORS = (RedisConnectionError, RedisTimeoutError, ResponseError)


def _plan(ops: Sequence[_Op], transaction: bool) -> Generator[_Step, list[Any], list[Any]]:
    """The one way operations reach Redis, as steps for a runner to carry out; returns their replies.

    Raises the first error Redis answered with, once the scripts it did not know were loaded and their
    operations run again.
    """
    results = yield _Send(ops, transaction)
    missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
    if missing:
        # Redis restarted or flushed its scripts: load and run again only what did not run.
        again_ops = [ops[i] for i in missing]
        yield _Load(frozenset(op.script for op in again_ops if isinstance(op, _Eval)))
        again = yield _Send(again_ops, transaction)
        for i, result in zip(missing, again, strict=True):
            results[i] = result
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


class AsyncRunner:
    """Carries out :func:`_plan` on an asyncio client.

    A script call on one Redis (the fetch and settle of every batch, and the blocking wait for a job with the
    fetch after it) goes on a connection this runner keeps between calls, not one taken from the client's pool
    and given back each time. redis-py's pool checks a connection it hands out by reading it with a zero
    timeout, which cancels a task, and sends each command under ``wait_for``, a task of its own: about 30 us
    of the loop per call of 95 here, and three more turns of the loop (docs/performance.md, "Seventeenth
    round"). A kept connection is checked instead by whether its stream has seen the server close it, as after
    a Redis restart; one that fails is dropped.
    """

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        # redis.asyncio leaves execute_command untyped; replies are checked by the parsers anyway.
        self._untyped: Any = client
        self._skip_replies: bool | None = None  # whether Redis takes CLIENT REPLY SKIP (None: not asked yet)
        self._kept: list[Any] = []  # connections taken from the pool for script calls, idle between them

    async def one(self, op: _Op) -> Any:
        return (await self.run([op]))[0]

    async def load(self, names: Sequence[str]) -> None:
        """Load these scripts now (SCRIPT LOAD), as :func:`_plan` would after a NOSCRIPT."""
        try:
            for name in names:
                await self.client.script_load(lua_source(name))
        except _TRANSPORT_ERRORS as exc:
            raise _store_error(self.client, exc) from exc

    async def run(self, ops: Sequence[_Op], *, transaction: bool = False) -> list[Any]:
        if not ops:
            return []
        if transaction and len(ops) > 1 and is_cluster(self.client):
            # A cluster has no MULTI across slots: the steps go one by one and the first refused one stops
            # the rest, so nothing lands after a step that failed.
            return [(await self.run([op]))[0] for op in ops]
        plan = _plan(ops, transaction)
        try:
            step = next(plan)
            while True:
                if isinstance(step, _Load):
                    for name in step.scripts:
                        await self.client.script_load(lua_source(name))
                    step = plan.send([])
                else:
                    step = plan.send(await self._send(step))
        except StopIteration as done:
            results: list[Any] = done.value
            return results
        except _TRANSPORT_ERRORS as exc:
            raise _store_error(self.client, exc) from exc

    async def after_wait(self, wait: _Cmd, op: _Eval) -> Any:
        """Run ``op`` as soon as the blocking command ``wait`` returns, in one round trip, without reading
        ``wait``'s reply (the element a blocking list move would send, whatever its size).

        Redis runs a connection's commands in order, so ``op`` starts the moment the wait ends, and
        ``CLIENT REPLY SKIP`` drops the wait's reply at the server. Where Redis refuses that command (a proxy,
        or an ACL), the wait's reply is read and dropped instead.
        """
        try:
            if self._skip_replies is None:
                try:
                    await self._last_reply(op.keys[0], [("CLIENT", "REPLY", "ON")])
                    self._skip_replies = True
                except ResponseError:
                    self._skip_replies = False
            if not self._skip_replies:
                await self._untyped.execute_command(*wait.command())
                return (await self.run([op]))[0]
            commands = [("CLIENT", "REPLY", "SKIP"), wait.command(), op.command()]
            try:
                return await self._last_reply(op.keys[0], commands)
            except NoScriptError:
                return (await self.run([op]))[0]  # loads the script; the wait's job waits in its list
        except _TRANSPORT_ERRORS as exc:
            raise _store_error(self.client, exc) from exc

    async def _last_reply(self, key: str, commands: Sequence[tuple[Arg, ...]]) -> Any:
        """Send ``commands`` in one write on one connection of ``key``'s node and read the one reply they
        give (every command but the last has its reply skipped)."""
        if not is_cluster(self.client):
            return await self._kept_call(commands)
        node: Any = self._untyped.get_node_from_key(key)
        connection: Any = node.acquire_connection()
        # redis-py 6 has ClusterNode.release; 5.x (which our range allows) puts a connection back on its free
        # list itself, as its own execute_command does.
        release: Any = getattr(node, "release", None) or node._free.append
        try:
            return await _reply_to(connection, connection.pack_commands(commands))
        finally:
            released = release(connection)
            if asyncio.iscoroutine(released):
                await released

    async def _send(self, step: _Send) -> list[Any]:
        if len(step.ops) == 1 and not step.transaction:
            # One command needs no pipeline object (the common fetch and settle path).
            op = step.ops[0]
            try:
                if isinstance(op, _Eval) and not is_cluster(self.client):
                    return [await self._script_call(op)]
                return [await self._untyped.execute_command(*op.command())]
            except _TRANSPORT_ERRORS as exc:
                if isinstance(exc, NoScriptError):
                    return [exc]
                raise
        if is_cluster(self.client):
            # A cluster pipeline routes each command to its slot's node (run() split up the transactions of
            # several steps).
            cluster: Any = self.client.pipeline()
            for op in step.ops:
                cluster.execute_command(*op.command())
            return list(await cluster.execute(raise_on_error=False))
        pipe: Any = self.client.pipeline(transaction=step.transaction)
        for op in step.ops:
            pipe.pipeline_execute_command(*op.command())
        return list(await pipe.execute(raise_on_error=False))

    async def _script_call(self, op: _Eval) -> Any:
        """One script call on a kept connection (see the class); as ``execute_command`` would make it."""
        return await self._kept_call([op.command()])

    async def _kept_call(self, commands: Sequence[tuple[Arg, ...]]) -> Any:
        """``commands`` in one write on a kept connection (see the class), and the one reply they give."""
        kept = self._kept
        connection = None
        while kept:
            candidate = kept.pop()
            if _still_open(candidate):
                connection = candidate
                break
            await self._drop(candidate)
        if connection is None:
            pool: Any = self.client.connection_pool  # typed in some redis-py releases, not in others
            connection = await pool.get_connection()
        try:
            if len(commands) == 1:
                packed = connection.pack_command(*commands[0])
            else:
                packed = connection.pack_commands(commands)
            reply = await _reply_to(connection, packed)
        except ResponseError:
            kept.append(connection)  # the error was the reply
            raise
        except BaseException:
            # Not kept: disconnected by _reply_to when the call may have reached Redis, clean when it failed
            # before (its packing); either way it goes back to the pool.
            await self.client.connection_pool.release(connection)
            raise
        kept.append(connection)
        return reply

    async def _drop(self, connection: Any) -> None:
        await connection.disconnect()
        await self.client.connection_pool.release(connection)


async def _reply_to(connection: Any, packed: list[bytes]) -> Any:
    """Send a packed call and read its one reply (:func:`read_reply`). If anything but a reply Redis answered
    with an error goes wrong, the reply may still be on its way, so the connection is disconnected: it serves
    no other call."""
    try:
        return await read_reply(connection, packed)
    except ResponseError:
        raise  # the error was the reply: the connection is clean
    except BaseException:
        await connection.disconnect()
        raise


def _still_open(connection: Any) -> bool:
    """Whether a kept connection may carry a call: connected, and its stream has not seen the server close
    it (a restarted Redis closes every connection; the loop reads that end while the connection idles)."""
    reader = getattr(connection, "_reader", None)
    return bool(connection.is_connected) and reader is not None and not reader.at_eof()


def _failure_step(client: redis.Redis) -> Callable[[Any, Exception], None] | None:
    """What redis-py's ``execute_command`` does with a connection whose call failed, before its retry policy
    tries again: redis-py 5 disconnects it and raises unless the error is one the connection retries on;
    redis-py 6 disconnects it and leaves the choice to the policy. None for a redis-py that has neither."""
    untyped: Any = client
    disconnect_raise = getattr(untyped, "_disconnect_raise", None)
    if disconnect_raise is not None:
        return cast(Callable[[Any, Exception], None], disconnect_raise)
    close_connection = getattr(untyped, "_close_connection", None)
    if close_connection is not None:
        return lambda connection, _error: close_connection(connection)
    return None


class SyncRunner:
    """Carries out :func:`_plan` on a blocking client.

    A single command (a producer's enqueue, most admin calls) goes on a connection this runner keeps between
    calls, as :class:`AsyncRunner` keeps its script calls' ones. redis-py's pool checks each connection it
    hands out by reading it with a zero timeout (three system calls) and asks the process id twice a call: a
    producer that wakes to enqueue one job spent a median 181 us before its write, against 118 on a kept
    connection (docs/performance.md, "Twenty-first round"). A kept connection is checked instead with one
    ``poll``: anything to read on an idle connection (a reply left over, or the server's close after a Redis
    restart) and it is disconnected, so the call reconnects. After a fork the child keeps none of its parent's
    connections. The call itself runs as redis-py's ``execute_command`` runs it: the client's retry policy,
    its reply callbacks.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        # redis-py leaves execute_command untyped; replies are checked by the parsers anyway.
        self._untyped: Any = client
        self._kept: list[Any] = []  # connections taken from the pool for single commands, idle between them
        self._kept_pid = os.getpid()
        # None where no connection can be kept: a cluster, a single-connection client, a redis-py without
        # the failure step. None of these changes for the client's life, so it is decided here, not per call.
        self._on_failure = (
            None
            if is_cluster(client) or getattr(client, "connection", None) is not None
            else _failure_step(client)
        )

    def one(self, op: _Op) -> Any:
        return self.run([op])[0]

    def run(self, ops: Sequence[_Op], *, transaction: bool = False) -> list[Any]:
        if not ops:
            return []
        if transaction and len(ops) > 1 and is_cluster(self.client):
            return [self.run([op])[0] for op in ops]  # as in the async runner: no MULTI across slots
        plan = _plan(ops, transaction)
        try:
            step = next(plan)
            while True:
                if isinstance(step, _Load):
                    for name in step.scripts:
                        self.client.script_load(lua_source(name))
                    step = plan.send([])
                else:
                    step = plan.send(self._send(step))
        except StopIteration as done:
            results: list[Any] = done.value
            return results
        except _TRANSPORT_ERRORS as exc:
            raise _store_error(self.client, exc) from exc

    def _send(self, step: _Send) -> list[Any]:
        if len(step.ops) == 1:
            # One command needs no pipeline object, nor a MULTI around it (a producer's enqueue).
            try:
                return [self._call(step.ops[0].command())]
            except NoScriptError as exc:
                return [exc]
        pipe = self.client.pipeline(transaction=None if is_cluster(self.client) else step.transaction)
        for op in step.ops:
            pipe.pipeline_execute_command(*op.command())
        return list(pipe.execute(raise_on_error=False))

    def _call(self, command: tuple[Arg, ...]) -> Any:
        """One command on a kept connection, or through ``execute_command`` where none can be kept."""
        if self._on_failure is None:
            return self._untyped.execute_command(*command)
        connection = self._take_kept()
        try:
            reply = connection.retry.call_with_retry(
                lambda: self._send_and_parse(connection, command),
                lambda error: self._on_failure(connection, error),
            )
        except ResponseError:
            self._kept.append(connection)  # the error was the reply: the connection is clean
            raise
        except BaseException:
            # Redis may still send the reply of a call cut short (a timeout, an interrupt): that connection
            # serves no other call.
            connection.disconnect()
            self.client.connection_pool.release(connection)
            raise
        self._kept.append(connection)
        return reply

    def _send_and_parse(self, connection: Any, command: tuple[Arg, ...]) -> Any:
        connection.send_command(*command)
        return self._untyped.parse_response(connection, command[0])

    def _take_kept(self) -> Any:
        """A kept connection with nothing to read, or a new one from the pool."""
        if self._kept_pid != os.getpid():
            # A forked child: its parent's sockets are not its own to talk on (redis-py's pool resets too).
            self._kept = []
            self._kept_pid = os.getpid()
        try:
            connection = self._kept.pop()
        except IndexError:  # none kept, or other threads hold them all
            return self.client.connection_pool.get_connection()
        sock = connection._sock
        if sock is not None:
            idle = select.poll()
            idle.register(sock, select.POLLIN)
            if idle.poll(0):
                connection.disconnect()  # a leftover reply or the server's close: the call reconnects
        return connection
