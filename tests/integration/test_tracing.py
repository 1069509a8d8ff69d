"""OpenTelemetry: enqueue carries the active span's context, and the worker runs each job in a span linked to it,
with retries and dead letters as span events (the SDK's in-memory exporter, a private Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from flume_rx import Flume, worker
from flume_rx.model import config as config_module
from flume_rx.model.registry import unregister
from flume_rx.surfaces.runtime import WorkerRuntime

QUEUE = "traced"
_exporter = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(_exporter))


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    # The global provider can be set once per process; the tracer is taken from this one directly.
    trace.set_tracer_provider(_provider)
    _exporter.clear()
    yield _exporter
    _exporter.clear()


@pytest.fixture
def workers() -> Iterator[None]:
    runs: dict[str, int] = {}

    @worker("TracedSync")
    def traced_sync(n: int) -> None:
        with trace.get_tracer("app").start_as_current_span("inside sync"):
            pass

    @worker("TracedAsync")
    async def traced_async(n: int) -> None:
        with trace.get_tracer("app").start_as_current_span("inside async"):
            await asyncio.sleep(0)

    @worker("TracedFailing")
    def traced_failing(n: int) -> None:
        runs[str(n)] = runs.get(str(n), 0) + 1
        raise ValueError(f"attempt {runs[str(n)]} fails")

    yield
    for name in ("TracedSync", "TracedAsync", "TracedFailing"):
        unregister(name)


def _drain(redis_url: str) -> None:
    config = config_module.parse(
        {
            "redis_url": redis_url,
            "namespace": "otel",
            "pipelines": {
                "main": {
                    "queue": QUEUE,
                    "retry": {"max_retries": 1, "backoff_initial": 10, "backoff_max": 10},
                }
            },
        }
    )
    asyncio.run(asyncio.wait_for(WorkerRuntime(config, burst=True).run(), 60))


def _by_name(spans: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for span in spans.get_finished_spans():
        found.setdefault(span.name, []).append(span)
    return found


def test_a_job_runs_in_a_span_linked_to_the_span_it_was_enqueued_in(
    redis_url: str, spans: InMemorySpanExporter, workers: None
) -> None:
    tracer = _provider.get_tracer("app")
    with Flume(redis_url, "otel") as flume:
        with tracer.start_as_current_span("request") as request:
            sync_id = flume.enqueue(QUEUE, "TracedSync", [1])
            async_id = flume.enqueue(QUEUE, "TracedAsync", [2])
        untraced_id = flume.enqueue(QUEUE, "TracedSync", [3])  # no active span: nothing travels
        assert flume.peek(QUEUE, limit=10)[-1].meta is None
    _drain(redis_url)

    found = _by_name(spans)
    runs = {
        span.attributes["flume_rx.job_id"]: span
        for span in found["run TracedSync"] + found["run TracedAsync"]
    }
    assert set(runs) == {sync_id, async_id}, "only jobs enqueued inside a span are traced"
    assert untraced_id not in runs
    for job_id, span in runs.items():
        assert [link.context.span_id for link in span.links] == [request.get_span_context().span_id]
        assert span.attributes["flume_rx.queue"] == QUEUE and span.attributes["flume_rx.attempt"] == 0
        assert span.attributes["flume_rx.worker"] == ("TracedSync" if job_id == sync_id else "TracedAsync")
        assert span.kind == trace.SpanKind.CONSUMER, job_id
    # The worker's own spans are children of the run's span, on the loop and on a stage thread alike.
    for inner, run in (("inside sync", runs[sync_id]), ("inside async", runs[async_id])):
        parents = [child.parent.span_id if child.parent else None for child in found[inner]]
        assert run.context.span_id in parents


def test_retries_and_dead_letters_are_span_events(
    redis_url: str, spans: InMemorySpanExporter, workers: None
) -> None:
    with Flume(redis_url, "otel") as flume, _provider.get_tracer("app").start_as_current_span("request"):
        flume.enqueue(QUEUE, "TracedFailing", [7])
    _drain(redis_url)

    attempts = sorted(_by_name(spans)["run TracedFailing"], key=lambda s: s.attributes["flume_rx.attempt"])
    assert [s.attributes["flume_rx.attempt"] for s in attempts] == [0, 1]
    first, last = ([e.name for e in s.events] for s in attempts)
    # The exception as OpenTelemetry records it (with its stack trace), then how the job was settled.
    assert first == ["exception", "retry"] and last == ["exception", "dead"]
    assert "attempt 2 fails" in str(attempts[1].events[1].attributes["flume_rx.error"])
    assert all(s.status.status_code == trace.StatusCode.ERROR for s in attempts)
    assert attempts[1].links[0].context.trace_id == attempts[0].links[0].context.trace_id


def test_enqueue_outside_any_span_adds_nothing(redis_url: str, spans: InMemorySpanExporter) -> None:
    with Flume(redis_url, "otel") as flume:
        flume.enqueue(QUEUE, "Whatever", [1])
        assert flume.peek(QUEUE)[0].meta is None


def test_every_step_of_a_chain_and_group_runs_linked_to_the_span_that_started_it(
    redis_url: str, spans: InMemorySpanExporter, workers: None
) -> None:
    tracer = _provider.get_tracer("app")
    with Flume(redis_url, "otel") as flume, tracer.start_as_current_span("request") as request:
        chain = flume.chain([(QUEUE, "TracedSync", [1]), (QUEUE, "TracedAsync", [])])
        group = flume.group(
            [(QUEUE, "TracedSync", [2]), (QUEUE, "TracedSync", [3])], then=(QUEUE, "TracedAsync")
        )
    _drain(redis_url)

    found = _by_name(spans)
    runs = {
        span.attributes["flume_rx.job_id"]: span
        for span in found["run TracedSync"] + found["run TracedAsync"]
    }
    # The steps and the callback ran after hand-offs made in workers' settle steps, and still link to it.
    assert set(runs) == {*chain.ids, *group.members, group.then}
    origin = request.get_span_context()
    for span in runs.values():
        assert [(link.context.trace_id, link.context.span_id) for link in span.links] == [
            (origin.trace_id, origin.span_id)
        ]
