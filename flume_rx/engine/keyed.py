"""Job-pipeline adapters of the keyed throttle: its key (or cost) as a function of a job's args.

Per-key rate limits: each key taken from the job (a tenant, a recipient domain) gets its own window.

``rate_limiter.key_from = "myapp.limits:tenant_of"`` names a function called with a job's args that returns
the key. Every key has its own exact sliding window of ``allowed`` starts per ``period`` (the algorithm of
DEVELOPERS.md "The token window", with time from Redis), shared by every process. The throttle holds the
jobs downstream asked for, grouped by key, and asks for the tokens of all waiting keys in one Redis call
(``take_tokens_multi.lua``), so Redis calls per job stay near one per batch however many keys there are. A
key that waits for tokens does not hold up the others. Windows of keys that go quiet expire from Redis a
second after their last grant stops counting. With a batcher, the throttle goes before it (a batch can mix
keys) and the windows count each grant for the batcher's timeout too (``lag_s``); see ``flume_rx.engine.assemble``.

In code: ``throttle_by_key(flume.keyed_window("tenants", 5), key=from_args(tenant_of))``.

All windows of one limiter share the hash tag ``{ns:rate:<rate_limiter.key>}`` so one call can reach them on
Redis Cluster; a very hot limiter therefore lives on one slot.

The parts live by layer: the generic operator and the in-process windows in :mod:`flume_rx.operators`, the
Redis windows in :mod:`flume_rx.store.windows`, and here the adapters to jobs.

:func:`~flume_rx.operators.throttle_by_key` sees the pipeline's items, :class:`~flume_rx.engine.source.Delivery`
objects; these turn a function of the worker's arguments (config ``rate_limiter.key_from``) into one of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from flume_rx.engine.source import Delivery
from flume_rx.model.registry import load_callable

_R = TypeVar("_R")


def from_args(fn: Callable[..., _R]) -> Callable[[Delivery], _R]:
    """Adapt ``fn``, called with a job's args, into a function of the pipeline's items (Deliveries).

    In a job pipeline :func:`~flume_rx.operators.throttle_by_key` sees Deliveries; this lets
    its ``key`` (or ``cost``) be written against the worker's arguments, as config ``key_from`` is:

    >>> from flume_rx.model.job import Job
    >>> domain = from_args(lambda to, subject: to.partition("@")[2])
    >>> domain(Delivery(Job("id", "mail", "Send", ["ann@example.com", "hi"]), b"", None))
    'example.com'
    """

    def of_item(item: Delivery) -> _R:
        return fn(*item.job.args)

    return of_item


def key_of(key_from: str) -> Callable[[Delivery], str]:
    """The throttle key of an item (a Delivery) from the function named in ``rate_limiter.key_from``."""
    return from_args(load_callable(key_from))
