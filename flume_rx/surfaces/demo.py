"""The SES demo: several worker processes share one 400/s limit in front of a fake SES that allows 450/s.

The fake SES is a small HTTP server in this process. It keeps the time of every call and answers
"Throttling" (HTTP 400, as SES does) to any call that would make more than its limit in a sliding second, so
the summary can say, from the downstream's own records, the most calls in any one-second window and how
many were rejected (it must be 0).
"""

from __future__ import annotations

import bisect
import contextlib
import http.client
import json
import multiprocessing
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flume_rx.model.errors import ConfigError, Throttled
from flume_rx.model.registry import worker

if TYPE_CHECKING:
    from rich.console import Console

FAKE_SES_ENV = "FLUME_DEMO_FAKE_SES"
SES_ENDPOINT_ENV = "FLUME_DEMO_SES_ENDPOINT"
SES_FROM_ENV = "FLUME_DEMO_SES_FROM"
SES_STARTS_ENV = "FLUME_DEMO_STARTS_URL"
STARTS_KEY_ENV = "FLUME_DEMO_STARTS_KEY"
SES_WORKER = "DemoSESv2Worker"
DEMO_QUEUE = "email_service"
DEMO_WORKER = "DemoSESWorker"
SETTLE_S = 3.0  # with --adaptive, the share of SES's limit accepted is counted from this long after the start


# ---- the fake SES ------------------------------------------------------------------------------------------------


@dataclass
class FakeSES:
    """Accepts at most ``limit`` calls in any sliding ``period_s``; rejects the rest like SES does.

    It answers the demo's own worker (any POST: ``MessageId`` or HTTP 400 "Throttling") and, for
    ``flume_rx.integrations.ses`` pointed at it, enough of the SESv2 API: ``SendEmail`` (refusals as SES sends
    them: HTTP 429 ``TooManyRequestsException``), ``CreateEmailIdentity`` and ``GetAccount``, whose
    ``MaxSendRate`` is ``quota`` (``limit`` when None): an account quota above what the downstream really
    accepts is what an adaptive window must correct. ``limit`` may change while it serves.
    """

    limit: int = 450
    period_s: float = 1.0
    latency_s: float = 0.01
    quota: float | None = None
    accepted: list[float] = field(default_factory=list)
    rejected: int = 0
    rejected_times: list[float] = field(default_factory=list)
    _recent: deque[float] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self) -> bool:
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0] <= now - self.period_s:
                self._recent.popleft()
            if len(self._recent) >= self.limit:
                self.rejected += 1
                self.rejected_times.append(now)
                return False
            self._recent.append(now)
            self.accepted.append(now)
            return True

    def max_in_any_window(self) -> int:
        """The most accepted calls in any sliding window of ``period_s`` (two-pointer sweep)."""
        with self._lock:
            times = list(self.accepted)
        best = 0
        for i, start in enumerate(times):
            j = bisect.bisect_left(times, start + self.period_s, lo=i)
            best = max(best, j - i)
        return best

    def rate_now(self) -> int:
        now = time.monotonic()
        with self._lock:
            return len(self.accepted) - bisect.bisect_right(self.accepted, now - 1.0)

    @contextlib.contextmanager
    def serve(self) -> Iterator[str]:
        ses = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; with Nagle on, delayed ACKs would add 40 ms a call.
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                if self.path.startswith("/v2/email/account"):
                    rate = ses.limit if ses.quota is None else ses.quota
                    account = {
                        "SendQuota": {"Max24HourSend": 1e9, "MaxSendRate": rate, "SentLast24Hours": 0},
                        "SendingEnabled": True,
                        "ProductionAccessEnabled": True,
                    }
                    self._answer(200, json.dumps(account).encode())
                else:
                    self._answer(404, b'{"message": "not found"}', "NotFoundException")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                self.rfile.read(length)
                if self.path.startswith("/v2/email/identities"):
                    self._answer(200, b"{}")
                    return
                ok = ses.call()
                time.sleep(ses.latency_s)
                if self.path.startswith("/v2/email/outbound-emails"):
                    if ok:
                        self._answer(200, b'{"MessageId": "fake"}')
                    else:
                        refusal = b'{"message": "Maximum sending rate exceeded."}'
                        self._answer(429, refusal, "TooManyRequestsException")
                    return
                body = (
                    b'{"MessageId": "fake"}'
                    if ok
                    else b'{"Error": {"Code": "Throttling", "Message": "Maximum sending rate exceeded."}}'
                )
                self._answer(200 if ok else 400, body)

            def _answer(self, status: int, body: bytes, error_type: str | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if error_type is not None:
                    self.send_header("x-amzn-ErrorType", error_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()


# ---- the worker the demo's processes run -------------------------------------------------------------------------

_local = threading.local()


@worker(DEMO_WORKER)
def send_demo_email(recipient: str, template: str) -> None:
    """One SES call per job, on a keep-alive connection per stage thread."""
    _record_start()
    connection: http.client.HTTPConnection | None = getattr(_local, "connection", None)
    if connection is None:
        host_port = os.environ[FAKE_SES_ENV].removeprefix("http://")
        host, port = host_port.split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        _local.connection = connection
    body = json.dumps({"to": recipient, "template": template}).encode()
    try:
        connection.request("POST", "/send", body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        payload = response.read()
    except (OSError, http.client.HTTPException):
        _local.connection = None
        connection.close()
        raise
    if response.status == 400 and b"Throttling" in payload:
        raise Throttled("SES: Maximum sending rate exceeded")
    if response.status != 200:
        raise RuntimeError(f"SES answered {response.status}: {payload[:200]!r}")


# ---- running it --------------------------------------------------------------------------------------------------


def demo_config(redis_url: str, rate: int, namespace: str, adaptive: bool = False) -> str:
    # Adaptive: the shared rate follows what SES accepts, below `rate` when SES allows less.
    limiter = f"allowed = {rate}, period = 1000" + (", adaptive = true" if adaptive else "")
    return f"""
redis_url = "{redis_url}"
namespace = "{namespace}"
imports = ["flume_rx.surfaces.demo"]
orphan_timeout = 5000
shutdown_timeout = 5000

[pipelines.{DEMO_QUEUE}]
max_demand = 50
rate_limiter = {{ {limiter} }}
processor = {{ stages = 5 }}
retry = {{ max_retries = 5, backoff_initial = 200, backoff_max = 5000 }}
"""


@contextlib.contextmanager
def worker_processes(config_path: Path, redis_url: str, processes: int) -> Iterator[float]:
    """Run ``processes`` worker processes on the config; yields when they started; SIGTERM (a graceful
    stop) and join on the way out."""
    from flume_rx.surfaces.processes import child_main

    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(
            target=child_main, args=(str(config_path), redis_url, False), name=f"flume-worker-{i}"
        )
        for i in range(processes)
    ]
    started = time.monotonic()
    for child in children:
        child.start()
    try:
        yield started
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.join(15)


def _start_private_redis(stack: contextlib.ExitStack, console: Console) -> str:
    """A private redis-server for the demo (the system's, else the ``embedded`` extra's); returns its URL."""
    from flume_rx.surfaces.embedded import INSTALL_REDIS_HINT, RedisServer

    try:
        server = stack.enter_context(RedisServer())
    except FileNotFoundError:
        raise ConfigError(
            f"the demo needs a Redis and found no redis-server on PATH; {INSTALL_REDIS_HINT}, "
            "or pass --redis-url URL of a Redis you run"
        ) from None
    console.print(f"[bold]No --redis-url given:[/] started {server.executable} at {server.url}")
    return server.url


def run_demo(
    *,
    redis_url: str | None,
    jobs: int,
    processes: int,
    rate: int,
    ses_limit: int,
    ses_endpoint: str | None = None,
    live: bool = True,
    adaptive: bool = False,
) -> int:
    from rich.console import Console

    from flume_rx.surfaces.client import Flume

    if jobs < 1 or processes < 1 or rate < 1 or ses_limit < 1:
        raise ConfigError("--jobs, --processes, --rate and --ses-limit must all be 1 or more")
    if ses_endpoint is not None:
        return _run_ses_endpoint_demo(redis_url, jobs, processes, rate, ses_endpoint, adaptive)
    console = Console()
    with contextlib.ExitStack() as stack:
        if redis_url is None:
            redis_url = _start_private_redis(stack, console)
        fake = FakeSES(limit=ses_limit)
        ses_url = stack.enter_context(fake.serve())
        os.environ[FAKE_SES_ENV] = ses_url
        namespace = f"demo{int(time.time())}"
        os.environ.update({SES_STARTS_ENV: redis_url, STARTS_KEY_ENV: f"{namespace}:demo:starts"})
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flume-demo-")))
        config_path = workdir / "demo.toml"
        config_path.write_text(demo_config(redis_url, rate, namespace, adaptive), encoding="utf-8")

        flume = Flume(redis_url, namespace)
        stack.callback(flume.close)
        chunk = 10_000
        for start in range(0, jobs, chunk):
            flume.bulk_enqueue(
                DEMO_QUEUE,
                [
                    (DEMO_WORKER, [f"user{i}@example.com", "welcome"])
                    for i in range(start, min(jobs, start + chunk))
                ],
            )
        console.print(
            f"Enqueued {jobs} emails; {processes} worker processes share one {rate}/s limit"
            + (" (adaptive: it follows what SES accepts)" if adaptive else "")
            + f"; the fake SES allows {ses_limit}/s and rejects the rest."
        )
        with worker_processes(config_path, redis_url, processes) as started:
            _watch(flume, fake, jobs, started, live, console)
        elapsed = time.monotonic() - started
        stats = flume.stats([DEMO_QUEUE])[DEMO_QUEUE]
        grants, waits = flume.window_counts(DEMO_QUEUE)
        starts = _starts_recorded(redis_url, namespace)
        seen = flume.window_rate(DEMO_QUEUE) if adaptive else None
        _summary(
            console,
            fake,
            stats,
            jobs,
            elapsed,
            rate,
            grants,
            waits,
            most_in_any_second(starts),
            adaptive_rate=None if seen is None else seen[0],
        )
        if adaptive:
            # SES refuses the probe now and then; what matters is that nothing failed for it.
            return 0 if stats["processed"] >= jobs and stats["dead"] == 0 else 1
        return 0 if fake.rejected == 0 and stats["processed"] >= jobs else 1


def _watch(flume: Any, fake: FakeSES, jobs: int, started: float, live: bool, console: Any) -> None:
    from rich.live import Live
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    progress = Progress(
        TextColumn("sent"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )
    task = progress.add_task("sent", total=jobs)

    def view() -> Table:
        stats = flume.stats([DEMO_QUEUE])[DEMO_QUEUE]
        table = Table.grid(padding=(0, 2))
        table.add_row(progress)
        detail = Table(show_header=True, header_style="bold")
        grants, waits = flume.window_counts(DEMO_QUEUE)
        for column in (
            "rate now /s",
            "queued",
            "in flight",
            "token grants",
            "throttle waits",
            "retry",
            "dead",
            "SES rejections",
        ):
            detail.add_column(column, justify="right")
        detail.add_row(
            str(fake.rate_now()),
            str(stats["queued"]),
            str(stats["in_flight"]),
            str(grants),
            str(waits),
            str(stats["retry"]),
            str(stats["dead"]),
            str(fake.rejected),
        )
        table.add_row(detail)
        progress.update(task, completed=stats["processed"])
        return table

    deadline = started + max(60.0, jobs / 50)
    with (
        Live(view(), console=console, refresh_per_second=4, transient=False)
        if live
        else contextlib.nullcontext() as screen
    ):
        while time.monotonic() < deadline:
            stats = flume.stats([DEMO_QUEUE])[DEMO_QUEUE]
            if stats["processed"] + stats["dead"] >= jobs:
                break
            if screen is not None:
                screen.update(view())
            time.sleep(0.25)
        if screen is not None:
            screen.update(view())


def _summary(
    console: Any,
    fake: FakeSES,
    stats: Any,
    jobs: int,
    elapsed: float,
    rate: int,
    grants: int,
    waits: int,
    most_starts: int,
    *,
    adaptive_rate: float | None = None,
) -> None:
    """The summary table; ``adaptive_rate`` (the window's rate at the end) when the window was adaptive."""
    from rich.table import Table

    sent = len(fake.accepted)
    active = (fake.accepted[-1] - fake.accepted[0]) if sent > 1 else elapsed
    table = Table(title="SES demo summary", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("emails enqueued", str(jobs))
    table.add_row("sent (accepted by SES)", str(sent))
    table.add_row("elapsed", f"{elapsed:.1f} s")
    table.add_row("achieved rate", f"{(sent - 1) / active:.1f} /s" if sent > 1 else "-")
    table.add_row("our shared limit", f"{rate} /s")
    table.add_row("most job starts in any 1 s", str(most_starts))
    table.add_row("SES's limit", f"{fake.limit} /s")
    table.add_row("most calls SES received in any 1 s", str(fake.max_in_any_window()))
    if adaptive_rate is None:
        table.add_row("SES rejections (must be 0)", str(fake.rejected))
    else:
        # The adaptive window meets SES's limit from above once, then probes past it now and then.
        table.add_row("SES refusals (each lowers the shared rate)", str(fake.rejected))
        table.add_row("adaptive rate at the end", f"{adaptive_rate:.1f} /s")
        settled = [t for t in fake.accepted if t >= fake.accepted[0] + SETTLE_S] if sent > 1 else []
        if len(settled) > 1:
            share = (len(settled) - 1) / (settled[-1] - settled[0]) / fake.limit
            table.add_row(f"share of SES's limit accepted from {SETTLE_S:.0f} s on", f"{share:.0%}")
    table.add_row("token grants / of them waits", f"{grants} / {waits}")
    table.add_row("jobs retried (failed attempts)", str(stats["failed"]))
    table.add_row("dead letters", str(stats["dead"]))
    console.print(table)


# ---- the same demo against a real or emulated SES (--ses-endpoint) ---------------------------------------------


def _register_ses_demo_worker() -> None:
    """With --ses-endpoint the worker processes send through flume_rx.integrations.ses (boto3, SESv2)."""
    from flume_rx.integrations.ses import register_ses_workers

    downstream = register_ses_workers(
        "DemoSESv2Send",
        None,
        from_address=os.environ[SES_FROM_ENV],
        endpoint_url=os.environ[SES_ENDPOINT_ENV],
    )

    @worker(SES_WORKER)
    def send_and_stamp(message: dict[str, Any]) -> None:
        _record_start()
        downstream.send(message)


_starts: Any = None


def _record_start() -> None:
    """Stamp the job's first line in Redis, so the summary can count starts in any one-second window.

    The fake SES stamps arrivals too; the two differ by the HTTP hop and thread scheduling in between.
    """
    global _starts
    if _starts is None:
        import redis

        _starts = redis.Redis.from_url(os.environ[SES_STARTS_ENV])
    _starts.rpush(os.environ[STARTS_KEY_ENV], repr(time.time()))


def _starts_recorded(redis_url: str, namespace: str) -> list[float]:
    import redis

    raw: list[bytes] = redis.Redis.from_url(redis_url).lrange(f"{namespace}:demo:starts", 0, -1)  # type: ignore[assignment]
    return sorted(float(x) for x in raw)


def most_in_any_second(times: list[float]) -> int:
    """The most of the sorted ``times`` (seconds) in any half-open window [t, t + 1)."""
    return max((bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times)), default=0)


if os.environ.get(SES_ENDPOINT_ENV):
    _register_ses_demo_worker()


def _run_ses_endpoint_demo(
    redis_url: str | None, jobs: int, processes: int, rate: int, endpoint: str, adaptive: bool = False
) -> int:
    from rich.console import Console
    from rich.table import Table

    from flume_rx.integrations.ses import default_client
    from flume_rx.surfaces.client import Flume

    console = Console()
    sender = os.environ.get(SES_FROM_ENV, "demo@example.com")
    with contextlib.ExitStack() as stack:
        if redis_url is None:
            redis_url = _start_private_redis(stack, console)
        client = default_client(endpoint_url=endpoint)
        try:
            client.create_email_identity(EmailIdentity=sender)  # an emulator needs it; real SES keeps yours
        except Exception as exc:
            console.print(f"could not create identity {sender!r} ({exc}); assuming it is verified already")
        namespace = f"sesdemo{int(time.time())}"
        os.environ.update(
            {
                SES_ENDPOINT_ENV: endpoint,
                SES_FROM_ENV: sender,
                SES_STARTS_ENV: redis_url,
                STARTS_KEY_ENV: f"{namespace}:demo:starts",
            }
        )
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flume-demo-")))
        config_path = workdir / "demo.toml"
        config_path.write_text(demo_config(redis_url, rate, namespace, adaptive), encoding="utf-8")
        flume = Flume(redis_url, namespace)
        stack.callback(flume.close)
        messages = [
            (SES_WORKER, [{"to": [f"user{i}@example.com"], "subject": "Welcome", "text": "Hello"}])
            for i in range(jobs)
        ]
        flume.bulk_enqueue(DEMO_QUEUE, messages)
        console.print(
            f"Sending {jobs} emails through SES at {endpoint} with {processes} processes at {rate}/s"
        )
        with worker_processes(config_path, redis_url, processes) as started:
            deadline = started + max(60.0, jobs / 20)
            while time.monotonic() < deadline:
                stats = flume.stats([DEMO_QUEUE])[DEMO_QUEUE]
                if stats["processed"] + stats["dead"] >= jobs:
                    break
                time.sleep(0.25)
        elapsed = time.monotonic() - started
        stats = flume.stats([DEMO_QUEUE])[DEMO_QUEUE]
        most = most_in_any_second(_starts_recorded(redis_url, namespace))
        table = Table(title="SES demo summary", show_header=False)
        for label, value in (
            ("emails enqueued", jobs),
            ("sent", stats["processed"]),
            ("elapsed", f"{elapsed:.1f} s"),
            ("limit", f"{rate} /s"),
            ("most job starts in any 1 s", most),
            ("failed attempts", stats["failed"]),
            ("dead letters", stats["dead"]),
        ):
            table.add_row(label, str(value))
        console.print(table)
        return 0 if stats["processed"] >= jobs else 1
