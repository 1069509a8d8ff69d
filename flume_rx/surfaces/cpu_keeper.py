"""Keeping a busy worker process to one CPU of its own (``cpu_affinity = "spread"``, the default).

Why: a worker process's loop and stage threads share one interpreter lock. Spread over two cores they pass it
back and forth with 2.8 to 9 voluntary context switches per job; kept to one CPU, 1.2, and a job making one
redis-py INCR drained about twice as fast (docs/performance.md, "Thirteenth round"). Why only while busy:
kept to one CPU, an idle process started jobs 0.08 to 0.1 ms later (its loop and the woken stage thread wait
for each other on that CPU), and a process with little to do gains nothing.

How it stays safe on a shared host:

- A process keeps only to a CPU it has *claimed*: an exclusive ``flock`` on a file per CPU in one directory
  of the host's temporary folder, held while it keeps to that CPU and released by the kernel when the process
  dies. Worker processes of this host, whoever started them (``--processes N``, systemd units, shells), so
  never share one; when every CPU is claimed, the process is left where the OS puts it, and looks again
  ``TAKE_RETRY_S`` later.
- It takes the CPU that was least busy over the last check (``/proc/stat``, which counts every process of the
  host, including those no claim reaches, like other containers').
- It leaves its CPU, and stays away a while, when others use much of it while another CPU stands idle: they
  could not move there, so they are kept to this CPU too (say, another container's worker, which claims in
  a different temporary folder). It leaves when it has been idle a few seconds; and never takes a CPU when it
  was seen using more than one and a half (its jobs compute in parallel outside the lock).

The decision (:func:`plan`) is a plain function of what one check saw; :class:`CpuKeeper` is the thread that
looks, claims and moves the process's threads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# Not on Windows: the keeper never runs there (see CpuKeeper.can_run), but processes.py imports this module.
if sys.platform != "win32":
    import fcntl

logger = logging.getLogger("flume_rx.runtime")

CHECK_S = 0.1
"""How often the keeper looks: a backlog is kept to one CPU within about this long."""
BUSY_SHARE = 0.5
"""Take a CPU when the process used at least half a CPU since the last check."""
PARALLEL_SHARE = 1.5
"""Never take one when it used more: its jobs run in parallel outside the interpreter lock."""
IDLE_SHARE = 0.1
IDLE_LEAVE_S = 5.0
"""Leave the CPU after this long using less than ``IDLE_SHARE`` of it (start latency, see the module)."""
CROWDED_SHARE = 0.3
"""Leave the CPU when other processes used this share of it while another CPU stood at least
``IDLE_ELSEWHERE_SHARE`` idle, judged over ``CROWDED_WINDOW_S``: they would have moved there had they been
free to, so they are kept to this CPU as this process is (another container's worker, say)."""
IDLE_ELSEWHERE_SHARE = 0.3
CROWDED_WINDOW_S = 1.0
CROWDED_PAUSE_S = 60.0
"""After leaving a crowded CPU, take none for about this long (a half to one and a half times, at random, so
that two processes that left one CPU do not come back to it together)."""
TAKE_RETRY_S = 1.0
"""After an attempt to take a CPU found every CPU claimed (or no claim could be made), how long before the next:
on a host with more busy worker processes than CPUs, each would otherwise open and try to lock every CPU's
claim at every check."""
CLAIMS_DIR = Path(tempfile.gettempdir()) / "flume_rx-cpus"
KEEPER_THREAD = "flume-cpu-keeper"
KEEPS_LOG = 'worker process keeps to CPU %d while it is busy (cpu_affinity = "spread")'
LEAVES_LOG = "worker process leaves CPU %s: %s"
"""What the keeper logs when it takes and leaves a CPU (the benchmarks read a drain's decisions from them)."""
KEEPER_NEEDS = "the CPU keeper needs Linux (sched_setaffinity and /proc/stat) and two CPUs or more"
"""Where :meth:`CpuKeeper.can_run` is false, why: for logs and skipped tests."""


@dataclass(frozen=True)
class Sample:
    """What one check saw since the one before: ``seconds`` of wall time, the CPU-seconds this process
    ``used`` in them, and how many CPU-seconds each CPU it may use was ``busy`` (with any process)."""

    seconds: float
    used: float
    busy: Mapping[int, float]


@dataclass(frozen=True)
class Take:
    """Claim one of these CPUs, the first that can be claimed, and keep to it."""

    candidates: tuple[int, ...]


@dataclass(frozen=True)
class Leave:
    """Give the kept CPU up (``why``, for the log) and take none for ``pause_s``."""

    why: str
    pause_s: float = 0.0


@dataclass
class Keeping:
    """The keeper's state between checks."""

    cpu: int | None = None
    paused_until: float = 0.0
    idle_s: float = 0.0
    window_s: float = 0.0
    window_others: float = 0.0
    window_idle_elsewhere: float = 0.0


def plan(keeping: Keeping, sample: Sample, now: float) -> Take | Leave | None:
    """What to do after a check: take a CPU, leave the kept one, or nothing (None). Updates ``keeping``'s
    counts; the caller records a taken CPU (``keeping.cpu``) and the pause of a leave."""
    if sample.seconds <= 0:
        return None
    share = sample.used / sample.seconds
    if keeping.cpu is None:
        if now < keeping.paused_until or len(sample.busy) < 2 or not BUSY_SHARE <= share <= PARALLEL_SHARE:
            return None
        return Take(tuple(sorted(sample.busy, key=lambda cpu: (sample.busy[cpu], cpu))))
    keeping.idle_s = keeping.idle_s + sample.seconds if share < IDLE_SHARE else 0.0
    if keeping.idle_s >= IDLE_LEAVE_S:
        return Leave(f"idle for {keeping.idle_s:.0f} s")
    # What the CPU did beyond this process: others' work (and tick rounding, hence the window).
    keeping.window_s += sample.seconds
    keeping.window_others += max(0.0, sample.busy.get(keeping.cpu, 0.0) - sample.used)
    keeping.window_idle_elsewhere += max(
        (sample.seconds - busy for cpu, busy in sample.busy.items() if cpu != keeping.cpu), default=0.0
    )
    if keeping.window_s < CROWDED_WINDOW_S:
        return None
    others = keeping.window_others / keeping.window_s
    idle_elsewhere = keeping.window_idle_elsewhere / keeping.window_s
    keeping.window_s = keeping.window_others = keeping.window_idle_elsewhere = 0.0
    if others >= CROWDED_SHARE and idle_elsewhere >= IDLE_ELSEWHERE_SHARE:
        return Leave(
            f"other processes used {others:.0%} of it while another CPU stood {idle_elsewhere:.0%} idle",
            CROWDED_PAUSE_S,
        )
    return None


class CpuKeeper:
    """The thread that keeps this process to one claimed CPU while it is busy (see the module)."""

    def __init__(
        self,
        *,
        claims_dir: Path = CLAIMS_DIR,
        check_s: float = CHECK_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._claims_dir = claims_dir
        self._check_s = check_s
        self._clock = clock
        self._allowed = frozenset(os.sched_getaffinity(0))
        self._keeping = Keeping()
        self._claim_fd: int | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=KEEPER_THREAD, daemon=True)

    @staticmethod
    def can_run() -> bool:
        """Linux with ``/proc/stat`` and a choice of CPUs: elsewhere the OS places the process."""
        return (
            hasattr(os, "sched_setaffinity")
            and os.path.exists("/proc/stat")
            and len(os.sched_getaffinity(0)) >= 2
        )

    @property
    def cpu(self) -> int | None:
        """The CPU the process keeps to now, or None."""
        return self._keeping.cpu

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop looking and give the CPU up (the process's threads may use all its CPUs again)."""
        self._stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5)
        self._leave()

    def _run(self) -> None:
        last_at, last_used, last_busy = self._clock(), time.process_time(), _busy_seconds(self._allowed)
        while not self._stopping.wait(self._check_s):
            at, used, busy = self._clock(), time.process_time(), _busy_seconds(self._allowed)
            sample = Sample(
                seconds=at - last_at,
                used=used - last_used,
                busy={cpu: busy[cpu] - last_busy.get(cpu, busy[cpu]) for cpu in busy},
            )
            last_at, last_used, last_busy = at, used, busy
            self._check(sample, at)

    def _check(self, sample: Sample, at: float) -> None:
        """Act on what one check saw at ``at`` (the keeper's clock)."""
        decision = plan(self._keeping, sample, at)
        if isinstance(decision, Take):
            if not self._take(decision.candidates):
                self._keeping.paused_until = at + TAKE_RETRY_S
        elif isinstance(decision, Leave):
            logger.info(LEAVES_LOG, self._keeping.cpu, decision.why)
            self._leave()
            self._keeping.paused_until = at + decision.pause_s * random.uniform(0.5, 1.5)
        elif self._keeping.cpu is not None:
            # Threads started since the last check by a thread not yet moved (the stage threads inherit
            # from the loop's), and any the move missed.
            _move_threads({self._keeping.cpu})

    def _take(self, candidates: Sequence[int]) -> bool:
        """Claim the first of ``candidates`` another process does not hold and keep to it; whether one was."""
        if not _claims_folder(self._claims_dir):
            return False
        for cpu in candidates:
            fd = _claim(self._claims_dir, cpu)
            if fd is not None:
                self._claim_fd = fd
                self._keeping = Keeping(cpu=cpu, paused_until=self._keeping.paused_until)
                _move_threads({cpu})
                logger.info(KEEPS_LOG, cpu)
                return True
        return False

    def _leave(self) -> None:
        if self._keeping.cpu is None:
            return
        _move_threads(self._allowed)
        self._keeping = Keeping(paused_until=self._keeping.paused_until)
        if self._claim_fd is not None:
            os.close(self._claim_fd)  # the flock goes with it
            self._claim_fd = None


def _claims_folder(claims_dir: Path) -> bool:
    """Whether ``claims_dir`` is there to claim in, made if need be, open to every user (sticky, like /tmp
    itself); made again should something clean the temporary folder while the worker runs."""
    try:
        claims_dir.mkdir(mode=0o1777, exist_ok=True)
        with contextlib.suppress(PermissionError):  # made by another user: theirs to set
            claims_dir.chmod(0o1777)  # the mode given to mkdir is cut by the umask
    except OSError as exc:
        logger.debug("cannot make %s for CPU claims (%s); left to the OS", claims_dir, exc)
        return False
    return True


def _claim(claims_dir: Path, cpu: int) -> int | None:
    """An open descriptor holding ``cpu``'s claim, or None when another process holds it or claims cannot be
    made here (then the process is left to the OS)."""
    try:
        # Read-only is enough for flock; no symlink followed in a folder every user can write to.
        fd = os.open(claims_dir / f"cpu{cpu}", os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444)
    except OSError as exc:
        logger.debug("cannot claim CPU %d in %s (%s); left to the OS", cpu, claims_dir, exc)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _move_threads(cpus: set[int] | frozenset[int]) -> None:
    """Every thread of this process to ``cpus`` (``sched_setaffinity`` moves one thread at a time)."""
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):  # a thread that has just ended
            if os.sched_getaffinity(int(tid)) != cpus:
                os.sched_setaffinity(int(tid), cpus)


_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


def _busy_seconds(cpus: frozenset[int]) -> dict[int, float]:
    """CPU-seconds each of ``cpus`` has spent busy since boot (``/proc/stat``)."""
    busy: dict[int, float] = {}
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return busy
    for line in lines:
        name, _, rest = line.partition(" ")
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            # user nice system idle iowait irq softirq steal: steal is the hypervisor's, on every CPU alike,
            # and not a reason to move (guest time is already in user).
            user, nice, system, _idle, _iowait, irq, softirq = (int(part) for part in rest.split()[:7])
            busy[int(name[3:])] = (user + nice + system + irq + softirq) * _TICK_S
    return busy
