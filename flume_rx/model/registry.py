"""The worker registry: jobs name a registered worker, never an import path, so whoever can write to Redis
cannot make a worker process run arbitrary code."""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, overload

from flume_rx.model.errors import ConfigError, UnknownWorker
from flume_rx.model.job import UniqueUntil, check_name

_P = ParamSpec("_P")
_R = TypeVar("_R")


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """A registered worker.

    Attributes:
        name: the name jobs use to call it.
        fn: the function; called with a job's args positionally, or, for a batch worker, with one list
            holding each job's args list.
        batch: whether it takes a batch.
        is_async: coroutine functions run on the event loop; plain functions run in the stage threads.
        signature: the function's parameters, read once at registration, to tell a job whose args cannot
            bind to them (no retry can fix that) from a worker that raised TypeError itself; None when
            Python cannot tell them.
    """

    name: str
    fn: Callable[..., Any]
    batch: bool
    is_async: bool
    signature: inspect.Signature | None = None
    result_ttl_s: float | None = None
    """How long the outcome of each job is kept for ``Flume.result`` and ``Flume.job`` (None: not kept)."""

    def bind_error(self, args: Sequence[Any]) -> str | None:
        """Why a job's ``args`` cannot be passed to this worker (None when they can, or it cannot tell).

        A batch worker takes a list of these, so only the worker's own code can judge each item's shape; a
        builtin or C function may have no signature to check against.
        """
        if self.batch or self.signature is None:
            return None
        try:
            self.signature.bind(*args)
        except TypeError as exc:
            return str(exc)
        return None


_workers: dict[str, WorkerSpec] = {}
results_kept = False
"""Whether any worker of this process keeps results: the settler looks up result_ttl only then."""
sync_workers = False
"""Whether any sync worker is registered in this process: a processor built while none is hands no job to the
stage threads ahead of a free one, so its async jobs skip that look (see
:func:`flume_rx.engine.processor.run_workers`)."""


class Enqueuer(Protocol):
    """What a handle enqueues through: :class:`~flume_rx.Flume`, or :class:`~flume_rx.testing.FlumeTest`."""

    def enqueue(
        self,
        queue: str,
        worker: str,
        args: Sequence[Any] = (),
        *,
        cost: int = ...,
        unique_key: str | None = ...,
        unique_for: float = ...,
        unique_until: UniqueUntil = ...,
    ) -> str: ...

    def enqueue_in(
        self,
        queue: str,
        seconds: float,
        worker: str,
        args: Sequence[Any] = (),
        *,
        cost: int = ...,
        unique_key: str | None = ...,
        unique_for: float = ...,
        unique_until: UniqueUntil = ...,
    ) -> str: ...

    def enqueue_at(
        self,
        queue: str,
        unix_ts: float,
        worker: str,
        args: Sequence[Any] = (),
        *,
        cost: int = ...,
        unique_key: str | None = ...,
        unique_for: float = ...,
        unique_until: UniqueUntil = ...,
    ) -> str: ...


class WorkerHandle(Generic[_P, _R]):
    """What ``@worker`` returns: the function itself when called, and the way to enqueue its jobs by it.

    Enqueuing through the handle rather than by name catches a misspelt worker where it is written (a
    ``NameError``, or mypy), and arguments the function cannot take at the call site, not in a worker's
    dead letters hours later.

    >>> @worker("EmailWorker", queue="email_service")
    ... def send_email(user_id: int, template: str) -> None: ...
    >>> send_email.enqueue(flume, 42, "welcome")  # doctest: +SKIP
    >>> send_email.enqueue_in(flume, 60, 42, "reminder", unique_key="reminder:42")  # doctest: +SKIP
    >>> send_email(42, "welcome")  # runs it here, as a plain call  # doctest: +SKIP

    Attributes:
        name: the registered worker name jobs carry.
        queue: the queue its jobs go to unless ``queue=`` says otherwise; None if it has none.
        fn: the decorated function.
    """

    def __init__(self, spec: WorkerSpec, queue: str | None) -> None:
        functools.update_wrapper(self, spec.fn)  # first: it copies the function's __dict__ over ours
        self.spec = spec
        self.name = spec.name
        self.queue = queue
        self.fn: Callable[_P, _R] = spec.fn

    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<worker {self.name!r} ({_qualname(self.fn)})>"

    def enqueue(self, flume: Enqueuer, *args: Any, queue: str | None = None, **options: Any) -> str:
        """Put a job calling this worker with ``args`` on its queue; returns the job id.

        Args:
            flume: the :class:`~flume_rx.Flume` (or ``FlumeTest``) to enqueue through.
            args: the worker's positional arguments (for a batch worker: one item's args).
            queue: the queue, if not the one given to ``@worker(queue=...)``.
            options: ``cost``, ``unique_key``, ``unique_for``, ``unique_until``, as for ``Flume.enqueue``.

        Raises:
            ConfigError: the function cannot take ``args``, or no queue is known.
        """
        return flume.enqueue(self._queue(queue), self.name, self.check_args(args), **options)

    def enqueue_in(
        self, flume: Enqueuer, seconds: float, *args: Any, queue: str | None = None, **options: Any
    ) -> str:
        """As :meth:`enqueue`, to run ``seconds`` from now (on Redis's clock)."""
        return flume.enqueue_in(self._queue(queue), seconds, self.name, self.check_args(args), **options)

    def enqueue_at(
        self, flume: Enqueuer, unix_ts: float, *args: Any, queue: str | None = None, **options: Any
    ) -> str:
        """As :meth:`enqueue`, to run at ``unix_ts`` (seconds since the epoch)."""
        return flume.enqueue_at(self._queue(queue), unix_ts, self.name, self.check_args(args), **options)

    def step(self, *args: Any, queue: str | None = None) -> tuple[str, str, list[Any]]:
        """This worker as a step of ``Flume.chain`` or ``Flume.group``: ``(queue, name, args)``.

        In a chain, every step after the first also receives the previous step's result, after ``args``;
        so ``args`` are not checked against the function here.

        Raises:
            ConfigError: no queue is known.
        """
        return (self._queue(queue), self.name, list(args))

    def check_args(self, args: Sequence[Any]) -> list[Any]:
        """``args`` as a list, once the function is known to accept them positionally.

        Raises:
            ConfigError: it cannot (too many, too few, or a required keyword-only parameter).
        """
        reason = self.spec.bind_error(args)
        if reason is not None and self.spec.signature is not None:
            raise ConfigError(
                f"worker {self.name!r} cannot take the args {list(args)!r} ({reason}); call it as "
                f"{self.fn.__name__}{_bare(self.spec.signature)}"
            )
        return list(args)

    def _queue(self, queue: str | None) -> str:
        chosen = queue or self.queue
        if chosen is None:
            raise ConfigError(
                f"worker {self.name!r} has no queue; pass queue=... or register it with "
                f"@worker({self.name!r}, queue=...)"
            )
        return chosen


@overload
def worker(
    name: Callable[_P, _R], *, batch: bool = ..., queue: str | None = ..., result_ttl: float | None = ...
) -> WorkerHandle[_P, _R]: ...


@overload
def worker(
    name: str | None = ..., *, batch: bool = ..., queue: str | None = ..., result_ttl: float | None = ...
) -> Callable[[Callable[_P, _R]], WorkerHandle[_P, _R]]: ...


def worker(
    name: str | Callable[_P, _R] | None = None,
    *,
    batch: bool = False,
    queue: str | None = None,
    result_ttl: float | None = None,
) -> WorkerHandle[_P, _R] | Callable[[Callable[_P, _R]], WorkerHandle[_P, _R]]:
    """Register a function as the worker called ``name`` (default: the function's ``__name__``).

    Returns a :class:`WorkerHandle`: calling it calls the function; ``.enqueue(flume, *args)`` enqueues a job
    for it on ``queue``.

    >>> @worker("EmailWorker", queue="email_service")
    ... async def send_email(user_id, template): ...
    >>> @worker  # registered as "resize"
    ... def resize(image_id): ...

    Args:
        name: the name jobs carry; keep it stable, as queued jobs refer to it.
        batch: the function takes one list holding each job's args list.
        queue: the queue ``.enqueue`` puts jobs on when not told another.
        result_ttl: keep each job's outcome (its return value, msgpack-encoded, or the error it died of) for
            this many seconds, for ``Flume.result`` and ``Flume.job``; None (the default) keeps nothing, so
            the hot path writes nothing per job. Not for batch workers (a batch has one return value).
    """
    if queue is not None:
        check_name(queue, "worker queue")
    if result_ttl is not None and (
        isinstance(result_ttl, bool) or not isinstance(result_ttl, int | float) or not 0 < result_ttl < 10**9
    ):
        raise ConfigError(f"result_ttl must be a positive number of seconds (got {result_ttl!r}); e.g. 3600")
    if result_ttl is not None and batch:
        raise ConfigError(
            "result_ttl is not for batch workers, whose one return value covers many jobs; drop it"
        )

    def register(fn: Callable[_P, _R]) -> WorkerHandle[_P, _R]:
        if isinstance(fn, WorkerHandle):
            fn = fn.fn
        worker_name = name if isinstance(name, str) else getattr(fn, "__name__", "")
        if not worker_name or not isinstance(worker_name, str):
            raise ConfigError(f"worker name must be a non-empty string (got {worker_name!r})")
        existing = _workers.get(worker_name)
        if existing is not None and existing.fn is not fn and _qualname(existing.fn) != _qualname(fn):
            raise ConfigError(
                f"worker name {worker_name!r} is already registered by {_qualname(existing.fn)}; "
                "give one of them another name"
            )
        spec = WorkerSpec(
            worker_name, fn, batch, inspect.iscoroutinefunction(fn), _signature_of(fn), result_ttl
        )
        _workers[worker_name] = spec
        global results_kept, sync_workers
        if result_ttl is not None:
            results_kept = True
        if not spec.is_async:
            sync_workers = True
        return WorkerHandle(spec, queue)

    if callable(name):
        return register(name)
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


def result_ttl_of(name: str) -> float | None:
    """How long the outcomes of worker ``name``'s jobs are kept (None: not kept, or no such worker here)."""
    spec = _workers.get(name)
    return None if spec is None else spec.result_ttl_s


def registered_workers() -> Mapping[str, WorkerSpec]:
    return MappingProxyType(_workers)


def unregister(name: str) -> None:
    """Forget a worker (for tests)."""
    _workers.pop(name, None)


def _signature_of(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins and C callables have none Python can read
        return None


def _qualname(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _bare(signature: inspect.Signature) -> inspect.Signature:
    """The signature without annotations: ``(user_id, template='welcome')``, what a call has to match."""
    empty = inspect.Parameter.empty
    return signature.replace(
        parameters=[p.replace(annotation=empty) for p in signature.parameters.values()],
        return_annotation=empty,
    )


def load_callable(path: str) -> Any:
    """Import ``module:attribute`` (the operators, cost and key functions a config names).

    Raises:
        ConfigError: the module cannot be imported or lacks the attribute.
    """
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"cannot import module {module_name!r} named in {path!r} ({exc}); check the path"
        ) from exc
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigError(f"module {module_name!r} has no attribute {attribute!r} (from {path!r})") from None
