"""Where a drain ran: the CPU each Redis server and the worker's main thread were last on, sampled while it runs.

A drain of one INCR per job involves three Redis servers (the queue, the jobs' INCR target and the probe) and
the worker process, on two CPUs. A Redis that the scheduler wakes on the worker's own CPU waits there for the
worker (or makes it wait), so a drain's rate may depend on where the servers ran, which the OS decides anew
each drain. Each sample reads field 39 of ``/proc/<pid>/stat`` (the CPU a task last ran on); the summary gives,
per Redis, the share of samples it was on the worker's CPU, and the CPU time each spent.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

_LAST_CPU = 38
"""Index of ``processor`` (field 39) in ``/proc/<pid>/stat`` counted from its first field."""
_UTIME, _STIME = 13, 14


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat``, or None once the process is gone. The command name (field 2) may
    hold spaces, so the fields after it are split from its closing parenthesis."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    head, _, tail = text.rpartition(")")
    return [head.split(" (", 1)[0], "comm", *tail.split()]


def last_cpu(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[_LAST_CPU]) if fields else None


def cpu_seconds(pid: int) -> float | None:
    fields = _stat_fields(pid)
    if fields is None:
        return None
    return (int(fields[_UTIME]) + int(fields[_STIME])) / os.sysconf("SC_CLK_TCK")


def redis_pid(url: str) -> int | None:
    """The process id of the Redis at ``url`` when it runs on this host (a private server), else None."""
    with contextlib.closing(redis.Redis.from_url(url)) as client:
        info: dict[str, Any] = client.info("server")  # type: ignore[assignment]
    pid = int(info.get("process_id", 0))
    try:
        with open(f"/proc/{pid}/comm") as f:
            return pid if f.read().startswith("redis") else None
    except OSError:
        return None


@dataclass
class Placement:
    """Samples of where ``servers`` (a role each, as ``{"queue": pid}``) and ``worker``'s main thread ran."""

    servers: Mapping[str, int]
    worker: int
    samples: int = 0
    worker_cpus: Counter[int] = field(default_factory=Counter)
    with_worker: Counter[str] = field(default_factory=Counter)
    _cpu_at_start: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for role, pid in self.servers.items():
            self._cpu_at_start[role] = cpu_seconds(pid) or 0.0

    def sample(self) -> None:
        worker_cpu = last_cpu(self.worker)
        if worker_cpu is None:
            return
        self.samples += 1
        self.worker_cpus[worker_cpu] += 1
        for role, pid in self.servers.items():
            if last_cpu(pid) == worker_cpu:
                self.with_worker[role] += 1

    def summary(self) -> dict[str, Any]:
        """Shares of the samples, and each server's CPU-seconds since the start."""
        n = max(1, self.samples)
        return {
            "samples": self.samples,
            "worker_cpu_share": {str(cpu): count / n for cpu, count in sorted(self.worker_cpus.items())},
            "redis_on_worker_cpu_share": {role: self.with_worker[role] / n for role in self.servers},
            "redis_cpu_s": {
                role: round((cpu_seconds(pid) or 0.0) - self._cpu_at_start[role], 3)
                for role, pid in self.servers.items()
            },
        }


def placement_of(urls: Mapping[str, str], worker_pids: Sequence[int]) -> Placement | None:
    """A :class:`Placement` for the first worker process and the servers of ``urls`` running here; None where
    there is nothing to sample (not Linux, or no server of this host)."""
    if not worker_pids or not os.path.exists(f"/proc/{worker_pids[0]}/stat"):
        return None
    servers = {role: pid for role, url in urls.items() if url and (pid := redis_pid(url)) is not None}
    return Placement(servers, worker_pids[0]) if servers else None
