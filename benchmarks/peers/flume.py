"""flume_rx, through its public contract only: ``Flume`` to enqueue, a TOML config and a worker process.

Variants: ``""`` (no-op pipeline), ``"rate_limit"`` (the pipeline's shared limiter at 400 per 1000 ms, hold
20 ms as the design card describes), ``"batch:N"`` (a batch worker fed by the batcher, size N), and the
users' shapes ``"CONFIG:KIND"``: CONFIG ``defaults`` (no demand or stage settings: flume_rx's defaults) or
``seed`` (the seed's ``stages = 5``), KIND ``sync`` (a plain function, run on the stage threads) or ``async``.
A ``:limit`` suffix adds the 400/s limiter to a shape.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import probe
from benchmarks.peers._util import PY
from flume_rx import worker

QUEUE = "bench"
NAMESPACE = "bench"
CHUNK = 10_000
MAX_DEMAND = 500
STAGES = 200
LIMIT = 400


@worker("BenchJob")
async def bench_job(enqueued_at: float = 0.0) -> None:
    await probe.run_async(enqueued_at)


@worker("BenchSync")
def bench_sync(enqueued_at: float = 0.0) -> None:
    probe.run_sync(enqueued_at)


@worker("BenchBatch", batch=True)
async def bench_batch(batch: list[list[Any]]) -> None:
    for args in batch:
        await probe.run_async(*args)


SHAPE_CONFIGS = ("defaults", "seed", "one_cpu")
"""flume_rx's configs in the users' shapes: its defaults, the seed's 5 stages, and its defaults kept to one
CPU from the start (``cpu_affinity = [N]``; by default a process keeps to one once it is busy)."""
SEED_STAGES = 5


def _shape(variant: str) -> tuple[str, str] | None:
    """(config, kind) of a users' shape variant, else None."""
    config, _, rest = variant.partition(":")
    if config not in SHAPE_CONFIGS:
        return None
    return config, rest.partition(":")[0] or "async"


def _worker_name(variant: str) -> str:
    if variant.startswith("batch:"):
        return "BenchBatch"
    shape = _shape(variant)
    return "BenchSync" if shape is not None and shape[1] == "sync" else "BenchJob"


class _Producer:
    def __init__(self, url: str, variant: str) -> None:
        from flume_rx import Flume

        self._flume = Flume(redis_url=url, namespace=NAMESPACE)
        self._name = _worker_name(variant)

    def bulk(self, n: int) -> None:
        for start in range(0, n, CHUNK):
            self._flume.bulk_enqueue(QUEUE, [(self._name, [0.0])] * min(CHUNK, n - start))

    def one(self, enqueued_at: float) -> None:
        self._flume.enqueue(QUEUE, self._name, [enqueued_at])

    def close(self) -> None:
        close = getattr(self._flume, "close", None)
        if close is not None:
            close()


def producer(url: str, variant: str) -> _Producer:
    return _Producer(url, variant)


def config_toml(url: str, variant: str) -> str:
    """The pipeline config of one benchmark run, in the documented TOML form."""
    lines = [
        f'redis_url = "{url}"',
        f'namespace = "{NAMESPACE}"',
        'imports = ["benchmarks.peers.flume"]',
        f"[pipelines.{QUEUE}]",
        f'queue = "{QUEUE}"',
        "retry = { max_retries = 0 }",
    ]
    shape = _shape(variant)
    if shape is None:
        lines += [f"max_demand = {MAX_DEMAND}", f"processor = {{ stages = {STAGES} }}"]
    elif shape[0] == "seed":
        lines.append(f"processor = {{ stages = {SEED_STAGES} }}")
    elif shape[0] == "one_cpu":
        lines.insert(3, f"cpu_affinity = [{min(os.sched_getaffinity(0))}]")
    if variant == "rate_limit" or variant.endswith(":limit"):
        lines.append(f"rate_limiter = {{ allowed = {LIMIT}, period = 1000 }}")
    if variant.startswith("batch:"):
        size = int(variant.split(":", 1)[1])
        lines.append(f"batcher = {{ size = {size}, timeout = 20 }}")
    return "\n".join(lines) + "\n"


def worker_commands(url: str, processes: int, variant: str) -> list[list[str]]:
    path = Path(tempfile.mkdtemp(prefix="flume-bench-")) / "flume.toml"
    path.write_text(config_toml(url, variant))
    # What `flume-rx worker` runs per process, logging as it does (see flume_worker).
    return [[PY, "-m", "benchmarks.peers.flume_worker", str(path)] for _ in range(processes)]


_clients: dict[str, Any] = {}


def backlog(url: str) -> int:
    from flume_rx import Flume

    flume = _clients.get(url)
    if flume is None:
        flume = _clients[url] = Flume(redis_url=url, namespace=NAMESPACE)
    queue_stats: dict[str, Any] = dict(flume.stats().get(QUEUE, {}))
    return int(queue_stats.get("queued", 0))


def in_flight(url: str) -> int:
    """Jobs fetched and not yet acknowledged, as flume_rx's own stats() count them."""
    from flume_rx import Flume

    flume = _clients.get(url)
    if flume is None:
        flume = _clients[url] = Flume(redis_url=url, namespace=NAMESPACE)
    queue_stats: dict[str, Any] = dict(flume.stats().get(QUEUE, {}))
    return int(queue_stats.get("in_flight", 0))
