"""Generic reactive-streams operators for reactivex: request-n back pressure, a token-window throttle,
time-or-count batching, retry with backoff and bounded-concurrency processing.

They know nothing of jobs or Redis; flume_rx builds its pipelines from them and users compose them freely.
"""

from ._flow import UNBOUNDED, Demand, Flowable, subscribe_upstream
from ._request_n import Credits, PullSource, from_iterable, request_n

__all__ = [
    "UNBOUNDED",
    "Credits",
    "Demand",
    "Flowable",
    "PullSource",
    "from_iterable",
    "request_n",
    "subscribe_upstream",
]
