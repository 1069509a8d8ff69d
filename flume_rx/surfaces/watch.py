"""Terminal views for operators: the live ``stats --watch`` table, consumers and peeked jobs.

One :func:`snapshot` feeds the live table, ``stats --watch --json`` and the dashboard, so they always agree.

>>> watch(config.load("flume.toml"))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypedDict

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from flume_rx.model.config import FlumeConfig
from flume_rx.model.job import Job
from flume_rx.store import ConsumerInfo, PeekWhere, QueueStats, SyncStore
from flume_rx.surfaces.follow import JobInfo, WorkflowInfo, WorkflowJob, jsonable
from flume_rx.surfaces.terminal import table_console

if TYPE_CHECKING:
    from flume_rx.surfaces.client import PeekedJob


class PipelineRow(TypedDict):
    """One line of the live table: a queue, the pipeline serving it, counts, cluster-wide rates and latency."""

    pipeline: str | None
    """The configured pipeline serving the queue; None for a queue that holds jobs no pipeline of the config
    serves (a misspelt queue name at enqueue, or a pipeline removed while jobs waited)."""
    queue: str
    queued: int
    in_flight: int
    scheduled: int
    retry: int
    dead: int
    processed: int
    failed: int
    processed_per_s: float
    failed_per_s: float
    processed_per_s_5s: float
    failed_per_s_5s: float
    rate_limit_use: float | None
    """Tokens of the pipeline's shared window granted within its last period, over its allowed; None without
    a rate limiter."""
    rate_limit: float | None
    """The shared window's effective allowed per period (below the configured allowed while an adaptive
    window follows a slower downstream); None without a rate limiter."""
    rate_limit_allowed: int | None
    """The window's configured allowed per period (from SES's quota with ``from_ses``); None without one."""
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    consumers: int
    """Live consumers only: those silent past the orphan timeout are taken for dead."""
    paused: bool


def queue_stats(store: SyncStore, config: FlumeConfig) -> dict[str, tuple[str | None, QueueStats]]:
    """Per queue: the pipeline serving it and its counts. Every queue of the config's pipelines, then every other
    known queue that holds jobs (pipeline None); every known queue, each its own pipeline, when the config has
    no pipelines."""
    served = {q: p.name for p in config.pipelines for q in p.all_queues}
    known = store.known_queues()
    if not served:
        served = {q: q for q in known}
    others = [q for q in known if q not in served]
    stats = store.stats([*served, *others], config.orphan_timeout_s)
    result: dict[str, tuple[str | None, QueueStats]] = {q: (name, stats[q]) for q, name in served.items()}
    for queue in others:
        if holds_jobs(stats[queue]):
            result[queue] = (None, stats[queue])
    return result


class RateLimit(TypedDict):
    """A pipeline's shared token window as it stands: its limit, its effective rate and how much is in use."""

    key: str
    allowed: int
    """Per period, as configured (from SES's quota with ``from_ses``)."""
    rate: float
    """The effective allowed per period: below ``allowed`` while an adaptive window follows a slower
    downstream (as of the window's last grant or refusal)."""
    adaptive: bool
    use: float
    """Tokens granted within the last period, over ``allowed``."""


def rate_limits(store: SyncStore, config: FlumeConfig) -> dict[str, RateLimit]:
    """The shared window of each queue served by a rate-limited pipeline (per-key limiters have none)."""
    by_key: dict[str, RateLimit] = {}
    result: dict[str, RateLimit] = {}
    for pipeline in config.pipelines:
        limiter = pipeline.rate_limiter
        if limiter is None or limiter.key_from is not None:
            continue
        if limiter.key not in by_key:
            rate, allowed = store.window_rate(limiter.key) or (float(limiter.allowed), limiter.allowed)
            use = store.rate_use(limiter.key, limiter.period_s * 1000) / max(1, allowed)
            by_key[limiter.key] = RateLimit(
                key=limiter.key, allowed=allowed, rate=rate, adaptive=limiter.adaptive, use=use
            )
        for queue in pipeline.all_queues:
            result[queue] = by_key[limiter.key]
    return result


def holds_jobs(stats: QueueStats) -> bool:
    """Whether a queue has any job waiting, running, scheduled, retrying or dead."""
    return any(stats[k] for k in ("queued", "in_flight", "scheduled", "retry", "dead"))


def snapshot(store: SyncStore, config: FlumeConfig) -> list[PipelineRow]:
    """One row per queue of :func:`queue_stats`, with the serving pipeline's rate-limit use."""
    limits = rate_limits(store, config)
    rows: list[PipelineRow] = []
    for queue, (name, s) in queue_stats(store, config).items():
        limit = limits.get(queue)
        rows.append(
            PipelineRow(
                pipeline=name,
                queue=queue,
                queued=s["queued"],
                in_flight=s["in_flight"],
                scheduled=s["scheduled"],
                retry=s["retry"],
                dead=s["dead"],
                processed=s["processed"],
                failed=s["failed"],
                processed_per_s=s["processed_per_s"],
                failed_per_s=s["failed_per_s"],
                processed_per_s_5s=s["processed_per_s_5s"],
                failed_per_s_5s=s["failed_per_s_5s"],
                rate_limit_use=None if limit is None else limit["use"],
                rate_limit=None if limit is None else limit["rate"],
                rate_limit_allowed=None if limit is None else limit["allowed"],
                latency_p50_ms=s["latency_p50_ms"],
                latency_p99_ms=s["latency_p99_ms"],
                consumers=s["consumers"],
                paused=s["paused"],
            )
        )
    return rows


def unserved_warnings(rows: Sequence[PipelineRow]) -> list[str]:
    """One line per queue that holds jobs no pipeline serves, saying what to look at."""
    return [
        f"queue {row['queue']!r} holds {_jobs_in(row)} job(s) that no pipeline of this config serves: a misspelt "
        f"queue name at enqueue? look with `flume-rx queue peek {row['queue']}`"
        for row in rows
        if row["pipeline"] is None
    ]


def _jobs_in(row: PipelineRow) -> int:
    return row["queued"] + row["in_flight"] + row["scheduled"] + row["retry"] + row["dead"]


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f} ms" if value < 10_000 else f"{value / 1000:.1f} s"


def _rate_limit(rate: float | None, allowed: int | None) -> str:
    """``400``, or ``291 of 400`` (in yellow) while an adaptive window runs below its allowed."""
    if rate is None or allowed is None:
        return "-"
    if rate < allowed:
        return f"[yellow]{rate:,.0f}[/] of {allowed:,}"
    return f"{allowed:,}"


def render(rows: Sequence[PipelineRow], *, title: str = "flume_rx") -> Table:
    """The table of :func:`snapshot` rows."""
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("pipeline")
    table.add_column("queue")
    table.add_column("state")
    for column in ("queued", "in flight", "scheduled", "retry", "dead"):
        table.add_column(column, justify="right")
    for column in ("done/s 5s", "done/s 60s", "failed/s 5s", "failed/s 60s"):
        table.add_column(column, justify="right")
    table.add_column("rate limit", justify="right")
    table.add_column("rate-limit use", justify="right")
    table.add_column("p50", justify="right")
    table.add_column("p99", justify="right")
    table.add_column("consumers", justify="right")
    for row in rows:
        use = "-" if row["rate_limit_use"] is None else f"{row['rate_limit_use']:.0%}"
        table.add_row(
            "[red](no pipeline)[/]" if row["pipeline"] is None else row["pipeline"],
            row["queue"],
            "[yellow]paused[/]" if row["paused"] else "active",
            f"{row['queued']:,}",
            f"{row['in_flight']:,}",
            f"{row['scheduled']:,}",
            f"{row['retry']:,}",
            f"[red]{row['dead']:,}[/]" if row["dead"] else "0",
            f"{row['processed_per_s_5s']:,.1f}",
            f"{row['processed_per_s']:,.1f}",
            f"[red]{row['failed_per_s_5s']:,.1f}[/]" if row["failed_per_s_5s"] else "0.0",
            f"[red]{row['failed_per_s']:,.1f}[/]" if row["failed_per_s"] else "0.0",
            _rate_limit(row["rate_limit"], row["rate_limit_allowed"]),
            use,
            _ms(row["latency_p50_ms"]),
            _ms(row["latency_p99_ms"]),
            str(row["consumers"]),
        )
    table.caption = "rates: whole cluster, last 5 s and 60 s; latency: last samples; consumers: live ones"
    return table


def watch(
    config: FlumeConfig,
    *,
    as_json: bool = False,
    interval_s: float = 1.0,
    iterations: int | None = None,
    console: Console | None = None,
) -> None:
    """Show :func:`snapshot` every ``interval_s`` until Ctrl-C (or ``iterations`` refreshes).

    With ``as_json``, prints one JSON object per refresh and line (``{"time": ..., "pipelines": [...]}``).
    """
    console = console or table_console()
    stop = threading.Event()
    with _stop_on_signals(stop), SyncStore.from_url(config.redis_url, config.namespace) as store:
        count = 0
        if as_json:
            while not stop.is_set() and (iterations is None or count < iterations):
                rows = snapshot(store, config)
                reports = progress_reports(store, [row["queue"] for row in rows])
                line = {"time": time.time(), "pipelines": rows, "progress": reports}
                print(json.dumps(line, sort_keys=True), flush=True)
                count += 1
                if iterations is None or count < iterations:
                    stop.wait(interval_s)
            return
        with Live(_view(store, config), console=console, refresh_per_second=4) as live:
            count = 1
            while not stop.is_set() and (iterations is None or count < iterations):
                if stop.wait(interval_s):
                    break
                live.update(_view(store, config))
                count += 1


def progress_reports(store: SyncStore, queues: Sequence[str]) -> list[dict[str, Any]]:
    """The running jobs that reported progress in the last minute (``current_job().progress``), per queue."""
    return [
        {"queue": queue, "job_id": job_id, "progress": fraction, "message": message, "reported_at": at}
        for queue in dict.fromkeys(queues)
        for job_id, fraction, message, at in store.recent_progress(queue)
    ]


def _view(store: SyncStore, config: FlumeConfig) -> Group:
    rows = snapshot(store, config)
    reports = progress_reports(store, [row["queue"] for row in rows])
    if not reports:
        return Group(render(rows))
    table = Table(title="running jobs reporting progress (last minute)", title_justify="left")
    for column in ("queue", "job", "progress", "says"):
        table.add_column(column)
    for report in reports:
        table.add_row(report["queue"], report["job_id"], f"{report['progress']:.0%}", report["message"])
    return Group(render(rows), table)


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C and SIGTERM end the watch between refreshes, never in the middle of a Redis call."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def print_consumers(consumers: Sequence[ConsumerInfo], as_json: bool = False) -> None:
    """The consumers table of ``flume-rx consumers``."""
    if as_json:
        print(json.dumps(list(consumers), indent=2))
        return
    table = Table(title="consumers", title_justify="left")
    for column in ("queue", "consumer"):
        table.add_column(column)
    for column in ("last heartbeat", "in flight"):
        table.add_column(column, justify="right")
    table.add_column("state", no_wrap=True)
    for c in sorted(consumers, key=lambda c: (c["queue"], c["consumer"])):
        state = "alive" if c["alive"] else "[red]dead (silent)[/]"
        table.add_row(c["queue"], c["consumer"], f"{c['age_s']:.1f} s ago", str(c["in_flight"]), state)
    if not all(c["alive"] for c in consumers):
        table.caption = "dead: silent for orphan_timeout or longer; a worker gives back its jobs"
    table_console().print(table)


def job_row(job: Job, at: float | None = None, where: PeekWhere = "queued") -> dict[str, Any]:
    """A job as JSON-friendly fields (args with bytes shown as hex), with its last error and that error's
    traceback tail, and ``died_at`` (dead) or ``due_at`` (scheduled, retry) in unix seconds."""
    row: dict[str, Any] = {
        "id": job.id,
        "worker": job.worker,
        "args": jsonable(job.args),
        "attempt": job.attempt,
        "enqueued_at": job.enqueued_at,
        "error": None if job.error is None else f"{job.error.kind}: {job.error.message}",
        "traceback": None if job.error is None else job.error.traceback or None,
    }
    if where == "dead":
        row["died_at"] = at
    elif where in ("scheduled", "retry"):
        row["due_at"] = at
    return row


def utc_time(unix_s: float | None) -> str:
    """``2026-12-02 07:41:03 UTC``, or an empty string for None."""
    if unix_s is None:
        return ""
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def print_jobs(entries: Sequence[PeekedJob], where: PeekWhere = "queued", as_json: bool = False) -> None:
    """The jobs of ``flume-rx queue peek``: JSON with every field, or a table of the main ones."""
    rows = [job_row(e.job, e.at, where) for e in entries]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    when = {"dead": "died", "scheduled": "due", "retry": "due"}.get(where)
    table = Table(title=f"{len(rows)} job(s)", title_justify="left")
    for column in ("id", "worker", "args", "attempt", *([when] if when else []), "error"):
        table.add_column(column)
    for entry, row in zip(entries, rows, strict=True):
        table.add_row(
            row["id"],
            row["worker"],
            json.dumps(row["args"])[:60],
            str(row["attempt"]),
            *([utc_time(entry.at)] if when else []),
            row["error"] or "",
        )
    table_console().print(table)


_AT_MEANS = {"scheduled": "due", "retry": "due", "dead": "died", "cancelled": "cancelled"}


def print_job_info(info: JobInfo, as_json: bool = False, workflow: WorkflowInfo | None = None) -> None:
    """One job's state for ``flume-rx job``: JSON with every field, or a few lines for people; with the
    chain or group it is part of, each of its jobs' state."""
    row = info.as_dict()
    if as_json:
        print(json.dumps({**row, "workflow": None if workflow is None else workflow.as_dict()}, indent=2))
        return
    print(f"{info.id}  {info.state}" + (f"  on {info.queue!r}" if info.queue else ""))
    if info.state == "unknown":
        print("  not found: never enqueued, already done, or its record expired")
        return
    if info.state == "waiting" and info.after is not None:
        what = "the members of group" if workflow is not None and workflow.kind == "group" else "step"
        print(f"  waits on {what} {info.after}")
    if info.at is not None:
        print(f"  {_AT_MEANS.get(info.state, 'at')} {utc_time(info.at)}")
    if info.progress is not None:
        print(f"  progress {info.progress:.0%}  {info.progress_message or ''}")
    if info.consumer is not None:
        print(f"  consumer {info.consumer}" + ("" if info.consumer_alive else " (silent: taken for dead)"))
    if info.job is not None:
        print(f"  worker {row['worker']}  attempt {row['attempt']}  args {json.dumps(row['args'])[:200]}")
    if row["error"]:
        print(f"  last error: {row['error']}")
        for line in (row["traceback"] or "").rstrip().splitlines():
            print(f"    {line}")
    if workflow is not None:
        _print_workflow(workflow, info.id)


def _print_workflow(workflow: WorkflowInfo, job_id: str) -> None:
    """A chain's steps or a group's members, one line each (this job marked), then a group's callback."""
    if workflow.kind == "chain":
        print(f"  chain of {len(workflow.jobs)} step(s):")
    else:
        settled = "callback enqueued" if workflow.settled is None else f"{workflow.settled} finished"
        print(f"  group {workflow.id} of {len(workflow.jobs)} member(s), {settled}:")
    for n, job in enumerate(workflow.jobs, start=1):
        print(_workflow_line(f"{n}.", job, job_id))
    if workflow.callback is not None:
        print(_workflow_line("then", workflow.callback, job_id))


def _workflow_line(label: str, job: WorkflowJob, job_id: str) -> str:
    state = "not looked up" if job.info is None else job.info.state
    error = None if job.info is None or job.info.error is None else job.info.error
    mark = "  <- this job" if job.id == job_id else ""
    why = "" if error is None else f"  ({error.kind}: {error.message[:80]})"
    return f"    {label:<5}{job.id}  {job.worker} on {job.queue!r}  {state}{why}{mark}"


def print_dead(queue: str, entries: Sequence[PeekedJob], total: int, as_json: bool = False) -> None:
    """The dead letters of ``flume-rx dead list``, newest first: each with its time of death, its last error
    and the stored tail of that error's traceback."""
    rows = [job_row(e.job, e.at, "dead") for e in entries]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        print(
            f"{row['id']}  {row['worker']}  attempts={row['attempt']}  died {utc_time(row['died_at'])}  "
            f"{row['error'] or ''}"
        )
        for line in (row["traceback"] or "").rstrip().splitlines():
            print(f"    {line}")
    print(f"{len(rows)} of {total} dead job(s) of {queue!r} shown, newest first")
