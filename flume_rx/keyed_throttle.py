"""Per-key rate limits: each key taken from the job (a tenant, a recipient domain) gets its own window.

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
Redis windows in :mod:`flume_rx.store.windows`, the adapters to jobs in :mod:`flume_rx.engine.keyed`. This
module keeps the names importable from where they always were.
"""

from flume_rx.engine.keyed import from_args, key_of
from flume_rx.operators import InProcessKeyedWindow, KeyedWindow, throttle_by_key
from flume_rx.store.windows import RedisKeyedWindow

__all__ = [
    "InProcessKeyedWindow",
    "KeyedWindow",
    "RedisKeyedWindow",
    "from_args",
    "key_of",
    "throttle_by_key",
]
