"""One adapter module per queue, all with the same small face (see ``PeerModule``).

Adapters are imported lazily, by name, in the process that needs them: the runner never imports a peer, so
a peer that fails to install or import is reported by the agent subprocess, not fatal to the suite.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


class Producer(Protocol):
    """Puts benchmark jobs on the queue, in the producing process."""

    def bulk(self, n: int) -> None:
        """Enqueue ``n`` no-op jobs the fastest way the library documents."""

    def one(self, enqueued_at: float) -> None:
        """Enqueue one job carrying its enqueue time."""

    def close(self) -> None: ...


class PeerModule(Protocol):
    """What every ``benchmarks.peers.<name>`` module provides."""

    def producer(self, url: str, variant: str) -> Producer: ...

    def worker_commands(self, url: str, processes: int, variant: str) -> list[list[str]]:
        """The commands that start ``processes`` worker processes in all (run from the repo root)."""

    def backlog(self, url: str) -> int:
        """Jobs still waiting in Redis, not yet taken by any worker."""


@dataclass(frozen=True, slots=True)
class PeerSpec:
    """A queue under test.

    Attributes:
        name: the name in results (``dramatiq-window``: Dramatiq with its window rate limiter).
        module: the adapter module under ``benchmarks.peers``.
        dists: the distributions whose versions the results record.
        scenarios: the scenarios it takes part in.
        variant: passed to the adapter (which actor, which pool).
        config: how it is configured, recorded in the results (the why is in benchmarks/README.md).
        jobs_scale: the share of the throughput backlog it drains, for peers under 500 jobs/s, so a run
            ends in reasonable time; the rate is measured between the first and the last completion.
        scenario_variants: the variant to use in a given scenario instead of ``variant``.
    """

    name: str
    module: str
    dists: Sequence[str]
    scenarios: frozenset[str]
    variant: str = ""
    config: dict[str, object] = field(default_factory=dict)
    jobs_scale: float = 1.0
    scenario_variants: dict[str, str] = field(default_factory=dict)


_GENERIC = frozenset(
    {"throughput", "enqueue", "latency", "slow_downstream", "memory", "shapes", "latency_sync"}
)
_FLUME = frozenset({*_GENERIC, "rate_limit", "batching"})

PEERS: tuple[PeerSpec, ...] = (
    PeerSpec(
        "flume_rx",
        "flume",
        ("flume_rx",),
        _FLUME,
        "",
        {
            "max_demand": 500,
            "stages": 200,
            "rate_limiter": "allowed 400, period 1000 ms, hold 20 ms (default)",
        },
        scenario_variants={"rate_limit": "rate_limit"},
    ),
    PeerSpec(
        "rq",
        "rq_peer",
        ("rq",),
        _GENERIC,
        "simple",
        {"worker_class": "rq.worker.SimpleWorker"},
        jobs_scale=0.5,
    ),
    PeerSpec(
        "rq-fork", "rq_peer", ("rq",), frozenset({"throughput"}), "fork", {"worker_class": "rq.Worker"}, 0.1
    ),
    PeerSpec("arq", "arq_peer", ("arq",), _GENERIC, "", {"max_jobs": 10, "keep_result": 0}, jobs_scale=0.2),
    PeerSpec(
        "arq-tuned",
        "arq_peer",
        ("arq",),
        frozenset({"throughput", "latency"}),
        "tuned",
        {"max_jobs": 100, "poll_delay_s": 0.01, "keep_result": 0},
    ),
    PeerSpec("dramatiq", "dramatiq_peer", ("dramatiq",), _GENERIC, "", {"threads": 8}),
    PeerSpec(
        "dramatiq-window",
        "dramatiq_peer",
        ("dramatiq",),
        frozenset({"rate_limit"}),
        "window",
        {"threads": 8, "limiter": "WindowRateLimiter(limit=400, window=1)"},
    ),
    PeerSpec(
        "dramatiq-bucket",
        "dramatiq_peer",
        ("dramatiq",),
        frozenset({"rate_limit"}),
        "bucket",
        {"threads": 8, "limiter": "BucketRateLimiter(limit=400, bucket=1000)"},
    ),
    PeerSpec(
        "celery",
        "celery_peer",
        ("celery", "kombu"),
        _GENERIC,
        "prefork",
        {"pool": "prefork", "concurrency": "1 per process", "task_ignore_result": True},
    ),
    PeerSpec(
        "celery-threads",
        "celery_peer",
        ("celery", "kombu"),
        frozenset({"throughput"}),
        "threads",
        {"pool": "threads", "concurrency": 8, "task_ignore_result": True},
    ),
    PeerSpec(
        "celery-rate_limit",
        "celery_peer",
        ("celery", "kombu"),
        frozenset({"rate_limit"}),
        "rate_limit",
        {"pool": "prefork", "concurrency": 1, "rate_limit": "400/3 per worker = 133.33/s"},
    ),
    PeerSpec("saq", "saq_peer", ("saq",), _GENERIC, "", {"concurrency": 10}),
    PeerSpec("huey", "huey_peer", ("huey",), _GENERIC, "", {"worker_type": "thread", "workers": 8}),
    PeerSpec(
        "taskiq", "taskiq_peer", ("taskiq", "taskiq-redis"), _GENERIC, "", {"broker": "ListQueueBroker"}
    ),
    # Not a queue, and never "the fastest peer": the floor a latency is read against (see floor_peer.py).
    PeerSpec(
        "floor",
        "floor_peer",
        ("redis",),
        frozenset({"latency", "latency_sync"}),
        "",
        {"what": "redis-py alone: LPUSH, one thread blocked in BLMOVE, LREM after the job"},
    ),
)


def peer(name: str) -> PeerSpec:
    for spec in PEERS:
        if spec.name == name:
            return spec
    known = ", ".join(spec.name for spec in PEERS)
    raise ValueError(f"unknown peer {name!r}; pick one of {known}")
