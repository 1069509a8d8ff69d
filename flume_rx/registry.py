"""The worker registry: jobs name a registered worker, never an import path, so whoever can write to Redis
cannot make a worker process run arbitrary code."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

from flume_rx.errors import ConfigError, UnknownWorker

_F = TypeVar("_F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """A registered worker.

    Attributes:
        name: the name jobs use to call it.
        fn: the function; called with a job's args positionally, or, for a batch worker, with one list
            holding each job's args list.
        batch: whether it takes a batch.
        is_async: coroutine functions run on the event loop; plain functions run in the stage threads.
    """

    name: str
    fn: Callable[..., Any]
    batch: bool
    is_async: bool


_workers: dict[str, WorkerSpec] = {}


def worker(name: str | None = None, *, batch: bool = False) -> Callable[[_F], _F]:
    """Register a function as the worker called ``name`` (default: the function's ``__name__``).

    >>> @worker("EmailWorker")
    ... async def send_email(user_id, template): ...
    """

    def register(fn: _F) -> _F:
        worker_name = name or getattr(fn, "__name__", "")
        if not worker_name or not isinstance(worker_name, str):
            raise ConfigError(f"worker name must be a non-empty string (got {worker_name!r})")
        existing = _workers.get(worker_name)
        if existing is not None and existing.fn is not fn and _qualname(existing.fn) != _qualname(fn):
            raise ConfigError(
                f"worker name {worker_name!r} is already registered by {_qualname(existing.fn)}; "
                "give one of them another name"
            )
        _workers[worker_name] = WorkerSpec(worker_name, fn, batch, inspect.iscoroutinefunction(fn))
        return fn

    return register


def get_worker(name: str) -> WorkerSpec:
    """The worker registered as ``name``.

    Raises:
        UnknownWorker: nobody registered that name in this process.
    """
    try:
        return _workers[name]
    except KeyError:
        raise UnknownWorker(name, _workers) from None


def registered_workers() -> Mapping[str, WorkerSpec]:
    return MappingProxyType(_workers)


def unregister(name: str) -> None:
    """Forget a worker (for tests)."""
    _workers.pop(name, None)


def _qualname(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
