"""OpenTelemetry: a job carries the trace context it was enqueued in, and its run is a span linked to it.

With the ``otel`` extra (``opentelemetry-api``) installed and a span active at enqueue, the job's record
carries that span's context (W3C trace context, under ``meta["trace"]``). A worker process then runs the job
in a span of its own, ``run <worker>``, linked to the enqueuing span, with the queue, the worker, the attempt
and the job id as attributes; the settlement adds an event to it (``retry`` with the delay, ``dead`` with the
reason, or ``throttled``) before the span ends. Without the package, or without an active span, nothing is
added to the job and the hot path takes no extra step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flume_rx.model.job import Job

try:
    from opentelemetry import propagate, trace
except ImportError:  # the otel extra is not installed: tracing is off
    trace = None  # type: ignore[assignment]
    propagate = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from opentelemetry.trace import Span

TRACE_KEY = "trace"
"""The key of ``Job.meta`` that holds the enqueuing span's context."""


def enqueue_meta() -> dict[str, Any] | None:
    """The ``meta`` a job enqueued now carries: the active span's context, or None when there is none."""
    if trace is None or not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {TRACE_KEY: carrier} if carrier else None


def is_traced(job: Job) -> bool:
    return job.meta is not None and TRACE_KEY in job.meta and trace is not None


def start_run_span(job: Job) -> Span:
    """The span a traced job runs in, linked to the span it was enqueued in (not its child: the run may come
    hours later, and retried, in another process)."""
    _require()
    carrier = (job.meta or {}).get(TRACE_KEY)
    enqueued = trace.get_current_span(propagate.extract(carrier if isinstance(carrier, dict) else {}))
    enqueued_context = enqueued.get_span_context()
    return trace.get_tracer("flume_rx").start_span(
        f"run {job.worker}",
        kind=trace.SpanKind.CONSUMER,
        links=[trace.Link(enqueued_context)] if enqueued_context.is_valid else [],
        attributes={
            "messaging.system": "flume_rx",
            "messaging.destination.name": job.queue,
            "flume_rx.queue": job.queue,
            "flume_rx.worker": job.worker,
            "flume_rx.attempt": job.attempt,
            "flume_rx.job_id": job.id,
        },
    )


def end_run_span(span: Span, kind: str, *, reason: str = "", delay_s: float = 0.0) -> None:
    """End a job's span with how it was settled: ``succeeded``, ``retried``, ``dead`` or ``throttled``."""
    _require()
    if kind == "retried":
        span.add_event("retry", {"flume_rx.error": reason, "flume_rx.retry_in_s": delay_s})
        span.set_status(trace.StatusCode.ERROR, reason)
    elif kind == "dead":
        span.add_event("dead", {"flume_rx.error": reason})
        span.set_status(trace.StatusCode.ERROR, reason)
    elif kind == "throttled":
        span.add_event("throttled")
    span.end()


def in_span(span: Span) -> Any:
    """A context manager that makes ``span`` current (for the worker's own spans) without ending it."""
    _require()
    return trace.use_span(span, end_on_exit=False)


def _require() -> None:
    if trace is None:
        raise RuntimeError("tracing needs the otel extra: pip install 'flume_rx[otel]'")
