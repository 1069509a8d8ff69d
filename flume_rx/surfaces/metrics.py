"""Prometheus metrics built from telemetry events (needs the ``metrics`` extra: prometheus-client).

Every metric is fed by a telemetry handler, so a process that exports nothing pays nothing. The names and
labels are documented in ``docs/operations.md``; they are per process: use the cluster-wide ``stats()`` rates
(or sum over processes in PromQL) for the whole cluster.

>>> metrics = PrometheusMetrics(runtime.telemetry)  # doctest: +SKIP
>>> metrics.serve(9100)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from flume_rx.model.errors import ConfigError
from flume_rx.model.telemetry import Event, Telemetry

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from prometheus_client.exposition import start_http_server
except ImportError:  # pragma: no cover - only without the extra
    CollectorRegistry = None  # type: ignore[assignment,misc]

logger = logging.getLogger("flume_rx.metrics")

_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


def _require_client() -> None:
    if CollectorRegistry is None:
        raise ConfigError(
            "Prometheus metrics need prometheus-client, which is not installed; "
            "install it with `pip install 'flume_rx[metrics]'`"
        )


class PrometheusMetrics:
    """Counters, gauges and histograms of one process, updated from its telemetry events.

    Args:
        telemetry: the event bus to listen to (a worker runtime's ``telemetry``, or ``Flume.telemetry``).
        registry: where the metrics are registered; a private registry by default, so several instances
            (tests, several runtimes in one process) never collide.
        prefix: the first word of every metric name.
    """

    def __init__(self, telemetry: Telemetry, registry: Any = None, *, prefix: str = "flume") -> None:
        _require_client()
        self.registry = registry if registry is not None else CollectorRegistry()
        r, p = self.registry, prefix

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            return Counter(f"{p}_{name}", doc, labels, registry=r)

        self.enqueued = counter("jobs_enqueued", "Jobs enqueued by this process.", ("queue",))
        self.fetched = counter(
            "jobs_fetched", "Jobs moved from a queue into this consumer's in-flight list.", ("queue",)
        )
        self.started = counter("jobs_started", "Job attempts started.", ("queue", "worker"))
        self.succeeded = counter("jobs_succeeded", "Job attempts that succeeded.", ("queue", "worker"))
        self.failed = counter(
            "jobs_failed", "Job attempts that raised (each is then retried or dead).", ("queue", "worker")
        )
        self.retried = counter(
            "jobs_retried", "Failed attempts scheduled for a retry with backoff.", ("queue", "worker")
        )
        self.dead = counter("jobs_dead", "Jobs moved to the dead letters.", ("queue", "worker"))
        self.throttled = counter(
            "jobs_throttled",
            "Jobs the downstream refused as too fast (requeued, no retry spent).",
            ("queue", "worker"),
        )
        self.batches = counter(
            "batches_flushed", "Batches emitted by the batcher, by trigger.", ("queue", "trigger")
        )
        self.grants = counter("throttle_grants", "Grants from the shared token window.", ("key",))
        self.tokens = counter(
            "throttle_tokens_granted", "Tokens granted by the shared token window.", ("key",)
        )
        self.waits = counter(
            "throttle_waits", "Grants that started in the future (the limit was binding).", ("key",)
        )
        self.lapsed = counter("throttle_tokens_lapsed", "Granted tokens that expired unused.", ("key",))
        self.penalties = counter(
            "throttle_penalties",
            "Reports of refusals by the downstream (one per settled batch with any).",
            ("key",),
        )
        self.pressure = counter(
            "backpressure_engaged", "Times max_demand held the source back (demand exhausted).", ("queue",)
        )
        self.heartbeats = counter("consumer_heartbeats", "Heartbeats written by this process.", ())
        self.recovered = counter(
            "orphans_recovered", "Jobs of dead consumers put back on the queue.", ("queue",)
        )

        self.rate = Gauge(
            f"{p}_throttle_rate", "Effective allowed per period of the token window.", ("key",), registry=r
        )
        self.held = Gauge(
            f"{p}_backpressure_active",
            "1 while max_demand holds the source back, else 0.",
            ("queue",),
            registry=r,
        )
        self.running = Gauge(
            f"{p}_jobs_running", "Job attempts started and not finished.", ("queue",), registry=r
        )

        self.duration = Histogram(
            f"{p}_job_duration_seconds", "Run time of an attempt.", ("queue", "worker"),
            buckets=_SECONDS_BUCKETS, registry=r,
        )  # fmt: skip
        self.wait = Histogram(
            f"{p}_job_wait_seconds",
            "Enqueue (or retry) to start.",
            ("queue",),
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            f"{p}_batch_size", "Jobs per flushed batch.", ("queue",), buckets=_SIZE_BUCKETS, registry=r
        )
        self.throttle_wait = Histogram(
            f"{p}_throttle_wait_seconds", "How long a grant made items wait.", ("key",),
            buckets=_SECONDS_BUCKETS, registry=r,
        )  # fmt: skip
        self.held_for = Histogram(
            f"{p}_backpressure_held_seconds", "How long the source was held back each time.", ("queue",),
            buckets=_SECONDS_BUCKETS, registry=r,
        )  # fmt: skip

        self._handlers: dict[str, Callable[[Mapping[str, Any]], None]] = {
            "job.enqueued": lambda f: self._at(self.enqueued, f["queue"]).inc(f.get("count", 1)),
            "job.fetched": lambda f: self._at(self.fetched, f["queue"]).inc(f.get("count", 1)),
            "job.started": self._on_started,
            "job.succeeded": self._on_finished(self.succeeded),
            "job.failed": self._on_finished(self.failed),
            "job.retried": lambda f: self._at(self.retried, f["queue"], f.get("worker", "")).inc(),
            "job.dead": lambda f: self._at(self.dead, f["queue"], f.get("worker", "")).inc(),
            "job.throttled": self._on_throttled,
            "batch.flushed": self._on_batch,
            "throttle.granted": self._on_granted,
            "throttle.waited": lambda f: self._at(self.waits, f["key"]).inc(),
            "throttle.lapsed": lambda f: self._at(self.lapsed, f["key"]).inc(f.get("tokens", 0)),
            "throttle.penalized": self._on_penalized,
            "throttle.rate_changed": lambda f: self._at(self.rate, f["key"]).set(f["rate"]),
            "backpressure.engaged": self._on_engaged,
            "backpressure.released": self._on_released,
            "consumer.heartbeat": lambda f: self.heartbeats.inc(),
            "consumer.recovered": lambda f: self._at(self.recovered, f["queue"]).inc(f.get("jobs", 0)),
        }
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._detach = telemetry.attach("*", self._on_event)
        self._server: Any = None

    def _on_event(self, event: Event) -> None:
        handler = self._handlers.get(event.name)
        if handler is not None:
            handler(event.fields)

    def _at(self, metric: Any, *labels: str) -> Any:
        # metric.labels() validates and takes a lock on every call: several per job at thousands of jobs a
        # second. The children it returns are stable, so look each one up once.
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _on_started(self, f: Mapping[str, Any]) -> None:
        self._at(self.started, f["queue"], f.get("worker", "")).inc()
        self._at(self.running, f["queue"]).inc()
        if f.get("wait_ms") is not None:
            self._at(self.wait, f["queue"]).observe(max(0.0, f["wait_ms"]) / 1000)

    def _on_finished(self, counter: Counter) -> Callable[[Mapping[str, Any]], None]:
        def handle(f: Mapping[str, Any]) -> None:
            worker = f.get("worker", "")
            self._at(counter, f["queue"], worker).inc()
            self._at(self.running, f["queue"]).dec()
            self._at(self.duration, f["queue"], worker).observe(max(0.0, f.get("duration_ms", 0.0)) / 1000)

        return handle

    def _on_throttled(self, f: Mapping[str, Any]) -> None:
        self._at(self.throttled, f["queue"], f.get("worker", "")).inc()
        self._at(self.running, f["queue"]).dec()

    def _on_batch(self, f: Mapping[str, Any]) -> None:
        self._at(self.batches, f["queue"], f.get("trigger", "")).inc()
        self._at(self.batch_size, f["queue"]).observe(f.get("size", 0))

    def _on_granted(self, f: Mapping[str, Any]) -> None:
        self._at(self.grants, f["key"]).inc()
        self._at(self.tokens, f["key"]).inc(f.get("tokens", 0))
        self._at(self.throttle_wait, f["key"]).observe(max(0.0, f.get("wait_ms", 0.0)) / 1000)
        if f.get("rate") is not None:
            self._at(self.rate, f["key"]).set(f["rate"])

    def _on_penalized(self, f: Mapping[str, Any]) -> None:
        self._at(self.penalties, f["key"]).inc()
        self._at(self.rate, f["key"]).set(f["rate"])

    def _on_engaged(self, f: Mapping[str, Any]) -> None:
        self._at(self.pressure, f["queue"]).inc()
        self._at(self.held, f["queue"]).set(1)

    def _on_released(self, f: Mapping[str, Any]) -> None:
        self._at(self.held, f["queue"]).set(0)
        self._at(self.held_for, f["queue"]).observe(max(0.0, f.get("held_ms", 0.0)) / 1000)

    def text(self) -> bytes:
        """The Prometheus text exposition of every metric, as ``/metrics`` serves it."""
        return bytes(generate_latest(self.registry))

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` over HTTP from a daemon thread; returns the port (useful with ``port=0``)."""
        try:
            server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {addr}:{port} ({exc}); pick a free port with --metrics-port"
            ) from None
        self._server = server
        bound = int(server.server_address[1])
        logger.info("Prometheus metrics on http://%s:%d/metrics", addr, bound)
        return bound

    def close(self) -> None:
        """Stop listening to telemetry and stop the HTTP server, if any."""
        self._detach()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
