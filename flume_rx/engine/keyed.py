"""Job-pipeline adapters of the keyed throttle: its key (or cost) as a function of a job's args.

:func:`~flume_rx.operators.throttle_by_key` sees the pipeline's items, :class:`~flume_rx.engine.source.Delivery`
objects; these turn a function of the worker's arguments (config ``rate_limiter.key_from``) into one of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from flume_rx.engine.source import Delivery
from flume_rx.registry import load_callable

_R = TypeVar("_R")


def from_args(fn: Callable[..., _R]) -> Callable[[Delivery], _R]:
    """Adapt ``fn``, called with a job's args, into a function of the pipeline's items (Deliveries).

    In a job pipeline :func:`~flume_rx.operators.throttle_by_key` sees Deliveries; this lets
    its ``key`` (or ``cost``) be written against the worker's arguments, as config ``key_from`` is:

    >>> from flume_rx.job import Job
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
