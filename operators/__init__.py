"""Generic reactive-streams operators for reactivex: request-n back pressure, a token-window throttle,
time-or-count batching, retry with backoff and bounded-concurrency processing.

They know nothing of jobs or Redis; flume_rx builds its pipelines from them and users compose them freely.
"""

from ._async_bridge import to_async_iterable, to_async_observable
from ._batch import FlushHook, buffer_with_time_or_count
from ._flow import UNBOUNDED, Demand, Flowable, subscribe_upstream
from ._process import Outcome, from_async, in_thread, process
from ._request_n import Credits, Fetch, HandBack, PullSource, from_iterable, last_batch, request_n
from ._retry import backoff_delay, retry_with_backoff
from ._throttle import EventHook, Grant, InProcessWindow, TokenWindow, throttle

__all__ = [
    "UNBOUNDED",
    "Credits",
    "Demand",
    "EventHook",
    "Fetch",
    "Flowable",
    "FlushHook",
    "Grant",
    "HandBack",
    "InProcessWindow",
    "Outcome",
    "PullSource",
    "TokenWindow",
    "backoff_delay",
    "buffer_with_time_or_count",
    "from_async",
    "from_iterable",
    "in_thread",
    "last_batch",
    "process",
    "request_n",
    "retry_with_backoff",
    "subscribe_upstream",
    "throttle",
    "to_async_iterable",
    "to_async_observable",
]
