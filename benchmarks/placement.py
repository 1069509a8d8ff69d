"""Where a drain ran: the CPU each Redis server and the worker's main thread were last on, sampled while it runs.

A drain of one INCR per job involves three Redis servers (the queue, the jobs' INCR target and the probe) and
the worker process, on two CPUs. A Redis that the scheduler wakes on the worker's own CPU waits there for the
worker (or makes it wait), so a drain's rate may depend on where the servers ran, which the OS decides anew
each drain. Each sample reads the CPU each task last ran on (psutil's ``cpu_num``); the summary gives,
per Redis, the share of samples it was on the worker's CPU, and the CPU time each spent.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]
import redis


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _cpu_num(process: psutil.Process) -> int | None:
    """The CPU ``process`` last ran on, or None once it is gone."""
    try:
        return int(process.cpu_num())
    except psutil.Error:
        return None


def redis_process(url: str) -> psutil.Process | None:
    """The process of the Redis at ``url`` when it runs on this host (a private server), else None."""
    with contextlib.closing(redis.Redis.from_url(url)) as client:
        info: dict[str, Any] = client.info("server")  # type: ignore[assignment]
    try:
        process = psutil.Process(int(info.get("process_id", 0)))
        return process if process.name().startswith("redis") else None
    except (psutil.Error, ValueError):
        return None


@dataclass
class Placement:
    """Samples of where ``servers`` (a role each, as ``{"queue": process}``) and ``worker``'s main thread ran."""

    servers: Mapping[str, psutil.Process]
    worker: psutil.Process
    samples: int = 0
    worker_cpus: Counter[int] = field(default_factory=Counter)
    with_worker: Counter[str] = field(default_factory=Counter)
    _cpu_at_start: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for role, process in self.servers.items():
            self._cpu_at_start[role] = _cpu_seconds(process)

    def sample(self) -> None:
        worker_cpu = _cpu_num(self.worker)
        if worker_cpu is None:
            return
        self.samples += 1
        self.worker_cpus[worker_cpu] += 1
        self.with_worker.update(
            role for role, server in self.servers.items() if _cpu_num(server) == worker_cpu
        )

    def summary(self) -> dict[str, Any]:
        """Shares of the samples, and each server's CPU-seconds since the start."""
        n = max(1, self.samples)
        cpu_s = {}
        for role, process in self.servers.items():
            with contextlib.suppress(psutil.Error):
                cpu_s[role] = round(_cpu_seconds(process) - self._cpu_at_start[role], 3)
        return {
            "samples": self.samples,
            "worker_cpu_share": {str(cpu): count / n for cpu, count in sorted(self.worker_cpus.items())},
            "redis_on_worker_cpu_share": {role: self.with_worker[role] / n for role in self.servers},
            "redis_cpu_s": cpu_s,
        }


def placement_of(urls: Mapping[str, str], worker_pids: Sequence[int]) -> Placement | None:
    """A :class:`Placement` for the first worker process and the servers of ``urls`` running here; None where
    there is nothing to sample (not Linux, or no server of this host)."""
    if not worker_pids or not hasattr(psutil.Process, "cpu_num"):
        return None
    try:
        worker = psutil.Process(worker_pids[0])
    except psutil.Error:
        return None
    servers = {role: found for role, url in urls.items() if url and (found := redis_process(url)) is not None}
    return Placement(servers, worker) if servers else None
