"""Real worker processes for the fault, cluster and soak suites: configs, spawn, kill, wait.

Workers run as ``python -m flume_rx.surfaces.cli worker --config FILE``, exactly as users run them, with the sample
workers of ``tests/integration/sample_workers.py``: they count each run of a token in the hash ``test:runs``
of the Redis at FLUME_TEST_REDIS_URL, so a test can prove every job ran at least once whatever it killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "jobs"


def toml_value(value: Any) -> str:
    """A Python value as TOML (the small subset the configs here need)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_config(path: Path, redis_url: str, pipeline: Mapping[str, Any] | None = None, **top: Any) -> Path:
    """A worker config with one pipeline ``main`` on queue ``jobs`` running the sample workers."""
    document: dict[str, Any] = {
        "redis_url": redis_url,
        "namespace": "t",
        "imports": ["tests.integration.sample_workers"],
        "orphan_timeout": 2000,
        "shutdown_timeout": 5000,
    }
    document.update(top)
    table: dict[str, Any] = {"queue": QUEUE, "max_demand": 50, "processor": {"stages": 8}}
    table.update(pipeline or {})
    lines = [f"{key} = {toml_value(value)}" for key, value in document.items()]
    lines += ["[pipelines.main]"] + [f"{key} = {toml_value(value)}" for key, value in table.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class WorkerProcess:
    """One ``flume-rx worker`` process; its stderr goes to a file the test can read."""

    def __init__(
        self, config: Path, record_url: str, *, extra_args: tuple[str, ...] = (), name: str = "w"
    ) -> None:
        self.log_path = config.parent / f"{name}-{time.monotonic_ns()}.log"
        env = dict(os.environ, PYTHONPATH=str(ROOT), FLUME_TEST_REDIS_URL=record_url)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "flume_rx", "worker", "--config", str(config), *extra_args],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
        self.process.wait()

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then the exit code (SIGKILL and fail loudly if it does not exit in time).

        Sent once the process catches SIGTERM: before its first lines of flume_rx run (the interpreter starting,
        a few hundred ms on a loaded machine) nothing can, and a SIGTERM then ends it by the default action.
        """
        wait_until(
            lambda: not self.alive() or catches_sigterm(self.pid), 60, f"worker {self.pid} to catch SIGTERM"
        )
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"worker {self.pid} ignored SIGTERM for {timeout_s} s:\n{self.log()}"
            ) from None

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def catches_sigterm(pid: int) -> bool:
    """Whether process ``pid`` has a handler for SIGTERM (Linux's /proc; True where that cannot be read)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except OSError:
        return True
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return True


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.05) -> None:
    """Poll ``condition``; fail naming ``what`` after ``timeout_s`` (a hang guard, not a timing check)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)


def wait_while_moving(
    condition: Callable[[], bool],
    progress: Callable[[], object],
    stall_s: float,
    what: str,
    poll_s: float = 0.05,
) -> None:
    """Poll ``condition``; fail naming ``what`` only once ``progress()`` has not changed for ``stall_s``.

    A guard against a stall rather than against slowness: on a machine starved of CPU work goes on, slowly,
    and a fixed deadline long enough for the worst load would hide a real stall for that long.
    """
    last = progress()
    moved_at = time.monotonic()
    while not condition():
        now = time.monotonic()
        current = progress()
        if current != last:
            last, moved_at = current, now
        elif now - moved_at > stall_s:
            raise AssertionError(f"nothing moved for {stall_s} s (at {current!r}) waiting for {what}")
        time.sleep(poll_s)


def runs(client: redis.Redis) -> dict[str, int]:
    """How many times each token ran (the sample workers' record)."""
    return {k.decode(): int(v) for k, v in client.hgetall("test:runs").items()}


def leftover_keys(client: redis.Redis, namespace: str = "t") -> list[str]:
    """Keys a drained, stopped namespace must not keep: in-flight lists and consumer heartbeats."""
    found = [k.decode() for k in client.scan_iter(match=f"{{{namespace}:*", count=1000)]
    return sorted(k for k in found if ":inflight:" in k or k.endswith(":consumers"))
