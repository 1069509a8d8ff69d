"""Generic reactive-streams operators for reactivex: request-n back pressure, a token-window throttle (one
window, or one per key), time-or-count batching, retry with backoff and bounded-concurrency processing.

They know nothing of jobs or Redis; flume_rx builds its pipelines from them and users compose them freely.

Reactive Streams rules: a :class:`Demand` is the subscription's ``request(n)`` and the disposable returned by
:meth:`Flowable.subscribe_with_demand` is its ``cancel``. Every operator emits no more than was requested, in
series, and nothing after its end (rules 1.1, 1.3, 1.7); ``request(n <= 0)`` returns and reaches the subscriber
as ``on_error`` naming ``n`` (3.9, 3.16); a subscriber that raises is cancelled (2.13); cancel is idempotent
and lets go of everything the subscription held: listeners, timers, the fetch under way and its credits, and
fetched items nobody received, which go to ``request_n``'s ``hand_back`` (3.5 to 3.7, 3.13); demand adds up
to ``UNBOUNDED`` (3.8, 3.17). docs/operators.md maps each rule onto ``Demand`` and dispose and names the test
that checks it.
"""

from ._adaptive import AdaptiveTuning, accepted_per_period, ceiling_after_refusal, probed_rate, recovery_s
from ._async_bridge import from_coroutine, from_result, to_async_iterable, to_async_observable
from ._batch import FlushHook, buffer_with_time_or_count
from ._flow import UNBOUNDED, Demand, Flowable, ManyObserver, is_prompt, subscribe_upstream
from ._keyed_throttle import InProcessKeyedWindow, KeyedWindow, throttle_by_key
from ._process import Outcome, Queued, begin_queued, from_async, in_thread, process, report_queued
from ._request_n import Credits, Fetch, HandBack, PullSource, from_iterable, last_batch, request_n
from ._retry import backoff_delay, retry_with_backoff
from ._throttle import (
    MOST_SLICES,
    EventHook,
    Grant,
    InProcessWindow,
    Lease,
    TokenWindow,
    Unused,
    given_back,
    throttle,
)

__all__ = [
    "MOST_SLICES",
    "UNBOUNDED",
    "AdaptiveTuning",
    "Credits",
    "Demand",
    "EventHook",
    "Fetch",
    "Flowable",
    "FlushHook",
    "Grant",
    "HandBack",
    "InProcessKeyedWindow",
    "InProcessWindow",
    "KeyedWindow",
    "Lease",
    "ManyObserver",
    "Outcome",
    "PullSource",
    "Queued",
    "TokenWindow",
    "Unused",
    "accepted_per_period",
    "backoff_delay",
    "begin_queued",
    "buffer_with_time_or_count",
    "ceiling_after_refusal",
    "from_async",
    "from_coroutine",
    "from_iterable",
    "from_result",
    "given_back",
    "in_thread",
    "is_prompt",
    "last_batch",
    "probed_rate",
    "process",
    "recovery_s",
    "report_queued",
    "request_n",
    "retry_with_backoff",
    "subscribe_upstream",
    "throttle",
    "throttle_by_key",
    "to_async_iterable",
    "to_async_observable",
]
