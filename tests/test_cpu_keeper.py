"""The CPU keeper (``cpu_affinity = "spread"``): its decisions, and a real process kept, moved and let go."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.runner import keeper_decisions
from flume_rx.surfaces import cpu_keeper
from flume_rx.surfaces.cpu_keeper import (
    KEEPER_NEEDS,
    KEEPS_LOG,
    LEAVES_LOG,
    CpuKeeper,
    Keeping,
    Leave,
    Sample,
    Take,
    plan,
)

ROOT = Path(__file__).resolve().parents[1]


def sample(used: float, busy: dict[int, float], seconds: float = 0.25) -> Sample:
    return Sample(seconds=seconds, used=used * seconds, busy={cpu: b * seconds for cpu, b in busy.items()})


def test_a_busy_free_process_takes_the_least_busy_cpu_first() -> None:
    decision = plan(Keeping(), sample(0.9, {0: 0.95, 1: 0.2, 2: 0.2}), now=10)
    assert decision == Take((1, 2, 0))


@pytest.mark.parametrize(
    ("keeping", "used", "busy", "why"),
    [
        (Keeping(), 0.3, {0: 0.3, 1: 0.0}, "using less than half a CPU"),
        (Keeping(), 1.8, {0: 0.9, 1: 0.9}, "computing in parallel outside the lock"),
        (Keeping(paused_until=11), 0.9, {0: 0.9, 1: 0.0}, "paused after a crowded CPU"),
        (Keeping(), 0.9, {0: 0.9}, "one CPU to choose from"),
    ],
)
def test_a_free_process_takes_no_cpu(keeping: Keeping, used: float, busy: dict[int, float], why: str) -> None:
    assert plan(keeping, sample(used, busy), now=10) is None, why


def test_a_kept_process_leaves_its_cpu_after_idling_a_while_and_not_before() -> None:
    keeping = Keeping(cpu=0)
    checks = int(cpu_keeper.IDLE_LEAVE_S / 0.25)
    decisions = [plan(keeping, sample(0.01, {0: 0.01, 1: 0.0}), now=10 + i) for i in range(checks)]
    assert decisions[:-1] == [None] * (checks - 1)
    assert isinstance(decisions[-1], Leave) and decisions[-1].pause_s == 0
    # A busy check in between starts the count again.
    keeping = Keeping(cpu=0)
    for _ in range(checks - 1):
        plan(keeping, sample(0.01, {0: 0.01, 1: 0.0}), now=10)
    assert plan(keeping, sample(0.9, {0: 0.9, 1: 0.0}), now=10) is None
    assert plan(keeping, sample(0.01, {0: 0.01, 1: 0.0}), now=10) is None


def test_a_kept_process_leaves_a_cpu_others_crowd_while_another_idles_judged_over_a_window() -> None:
    keeping = Keeping(cpu=0)
    checks = int(cpu_keeper.CROWDED_WINDOW_S / 0.25)
    # The CPU fully busy, half of it with others, the other CPU 90% idle: only the window's end judges.
    decisions = [plan(keeping, sample(0.5, {0: 1.0, 1: 0.1}), now=10) for _ in range(checks)]
    assert decisions[:-1] == [None] * (checks - 1)
    assert decisions[-1] == Leave(
        "other processes used 50% of it while another CPU stood 90% idle", cpu_keeper.CROWDED_PAUSE_S
    )


def test_a_kept_process_stays_on_a_shared_cpu_when_every_cpu_is_busy() -> None:
    # Others on its CPU could move to no idle one: leaving would only share every CPU with them.
    keeping = Keeping(cpu=0)
    for i in range(20):
        assert plan(keeping, sample(0.5, {0: 1.0, 1: 0.9, 2: 0.95}), now=10 + i) is None


def test_a_kept_process_stays_when_the_cpu_is_its_own() -> None:
    keeping = Keeping(cpu=1)
    # Tick rounding makes the CPU's count differ a little from the process's own.
    for i in range(40):
        assert plan(keeping, sample(0.95, {0: 0.3, 1: 0.97 if i % 2 else 0.93}), now=10 + i) is None


def test_a_process_that_finds_every_cpu_claimed_tries_again_only_after_a_while(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tried: list[int] = []
    moved: list[set[int] | frozenset[int]] = []
    claim = cpu_keeper._claim

    def counted_claim(folder: Path, cpu: int) -> int | None:
        tried.append(cpu)
        return claim(folder, cpu)

    monkeypatch.setattr(cpu_keeper, "_claim", counted_claim)
    monkeypatch.setattr(cpu_keeper, "_move_threads", moved.append)  # this test's own threads stay put
    held = {}
    for cpu in (0, 1):
        held[cpu] = os.open(tmp_path / f"cpu{cpu}", os.O_RDONLY | os.O_CREAT, 0o444)
        fcntl.flock(held[cpu], fcntl.LOCK_EX | fcntl.LOCK_NB)
    keeper = cpu_keeper.CpuKeeper(claims_dir=tmp_path)
    busy = sample(0.9, {0: 0.95, 1: 0.2})
    try:
        keeper._check(busy, at=10.0)
        assert (tried, keeper.cpu) == ([1, 0], None)
        for at in (10.1, 10.5, 10.9):
            keeper._check(busy, at=at)
        assert tried == [1, 0]  # not at every check
        keeper._check(busy, at=10.0 + cpu_keeper.TAKE_RETRY_S)
        assert tried == [1, 0, 1, 0]
        os.close(held.pop(1))  # the process that held CPU 1 is gone
        keeper._check(busy, at=12.5)
        assert (keeper.cpu, moved) == (1, [{1}])
    finally:
        keeper.stop()
        for fd in held.values():
            os.close(fd)


@given(
    st.lists(
        st.tuples(
            st.floats(0.01, 1.0),  # seconds
            st.floats(0.0, 2.0),  # share of a CPU the process used
            st.lists(st.floats(0.0, 1.0), min_size=1, max_size=4),  # how busy each CPU was
        ),
        max_size=60,
    )
)
def test_what_a_plan_may_decide(checks: list[tuple[float, float, list[float]]]) -> None:
    keeping, now = Keeping(), 0.0
    for seconds, share, busy in checks:
        now += seconds
        was = keeping.cpu
        decision = plan(keeping, sample(share, dict(enumerate(busy)), seconds), now)
        if was is None:
            assert not isinstance(decision, Leave)
            if isinstance(decision, Take):
                assert cpu_keeper.BUSY_SHARE <= share <= cpu_keeper.PARALLEL_SHARE
                assert now >= keeping.paused_until and len(busy) >= 2
                assert sorted(decision.candidates) == list(range(len(busy)))
                keeping.cpu = decision.candidates[0]
        else:
            assert not isinstance(decision, Take)
            if isinstance(decision, Leave):
                keeping.cpu = None
                keeping.paused_until = now + decision.pause_s


# -- a real process -------------------------------------------------------------------------------------
needs_the_keeper = pytest.mark.skipif(not CpuKeeper.can_run(), reason=KEEPER_NEEDS)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[Any]]]:
    started: list[subprocess.Popen[Any]] = []
    yield started
    for process in started:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _child(
    processes: list[subprocess.Popen[Any]],
    claims: Path,
    busy_s: float,
    idle_s: float,
    log: Path | None = None,
) -> subprocess.Popen[str]:
    # Without a log file the child's stderr stays the test's, so pytest shows a crashing child's traceback.
    with open(log, "wb") if log is not None else contextlib.nullcontext() as stderr:
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.cpu_keeper_child", str(claims), str(busy_s), str(idle_s)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    processes.append(child)
    return child


def _lines(child: subprocess.Popen[str]) -> Iterator[dict[str, Any]]:
    assert child.stdout is not None
    for line in child.stdout:
        yield json.loads(line)


def _spin_on(processes: list[subprocess.Popen[Any]], cpu: int) -> None:
    code = f"import os\nos.sched_setaffinity(0, {{{cpu}}})\nwhile True:\n    pass\n"
    processes.append(subprocess.Popen([sys.executable, "-c", code]))


@needs_the_keeper
def test_a_busy_process_keeps_every_thread_to_one_cpu_and_lets_them_go_when_idle(
    tmp_path: Path, processes: list[subprocess.Popen[Any]]
) -> None:
    allowed = sorted(os.sched_getaffinity(0))
    lines = list(_lines(_child(processes, tmp_path, busy_s=2.0, idle_s=1.5)))
    busy_kept = [line for line in lines if line["phase"] == "busy" and line["cpu"] is not None]
    assert busy_kept, lines[:5]
    cpu = busy_kept[0]["cpu"]
    # Every thread, including one started after the move (from a thread already moved), on that CPU.
    settled = [line for line in busy_kept if len(line["threads"]) == 4][2:]
    assert settled
    assert all(set(map(tuple, line["threads"].values())) == {(cpu,)} for line in settled)
    # Idle: let go, every thread free to use every CPU again; then stopped, the claim gone.
    assert lines[-2]["phase"] == "idle" and lines[-2]["cpu"] is None
    assert set(map(tuple, lines[-2]["threads"].values())) == {tuple(allowed)}
    assert lines[-1] == {"phase": "stopped", "cpu": None, "threads": lines[-1]["threads"]}
    fd = os.open(tmp_path / f"cpu{cpu}", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if still claimed
    finally:
        os.close(fd)


@needs_the_keeper
def test_two_busy_processes_on_one_host_keep_to_different_cpus(
    tmp_path: Path, processes: list[subprocess.Popen[Any]]
) -> None:
    first, second = _child(processes, tmp_path, 2.5, 0.0), _child(processes, tmp_path, 2.5, 0.0)
    seen = [list(_lines(first)), list(_lines(second))]
    kept = [{line["cpu"] for line in lines if line["cpu"] is not None} for lines in seen]
    assert kept[0] and kept[1], kept
    # Compare moments when both held a CPU: never the same one.
    both = [
        (a["cpu"], b["cpu"])
        for a, b in zip(seen[0], seen[1], strict=False)
        if a["cpu"] is not None and b["cpu"] is not None
    ]
    assert both and all(a != b for a, b in both), both


@needs_the_keeper
def test_a_process_leaves_a_cpu_another_process_crowds_and_stays_away_a_while(
    tmp_path: Path, processes: list[subprocess.Popen[Any]]
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    child = _child(processes, tmp_path, busy_s=3.0, idle_s=0.0, log=logs / "worker0.log")
    lines = _lines(child)
    cpu = next(line["cpu"] for line in lines if line["cpu"] is not None)
    _spin_on(processes, cpu)
    after = list(lines)
    left = [i for i, line in enumerate(after) if line["cpu"] is None]
    assert left, "never left the crowded CPU"
    # Left within about a crowding window (0.5 s here) of the other process's start, and took no CPU again
    # during the pause (at least 5 s here, longer than what was left of the busy time).
    assert left[0] < 40, left[0]
    assert all(line["cpu"] is None for line in after[left[0] :])
    # The benchmarks read both decisions from the log, as they read a worker's.
    child.wait(10)
    took, gave_up = keeper_decisions(logs)
    assert took == KEEPS_LOG % cpu
    assert gave_up.startswith(LEAVES_LOG % (cpu, "other processes used ")), gave_up


@needs_the_keeper
def test_the_claim_of_a_killed_process_is_free_at_once(
    tmp_path: Path, processes: list[subprocess.Popen[Any]]
) -> None:
    child = _child(processes, tmp_path, busy_s=20.0, idle_s=0.0)
    cpu = next(line["cpu"] for line in _lines(child) if line["cpu"] is not None)
    child.send_signal(signal.SIGKILL)
    child.wait()
    # Hold every other CPU's claim: the next busy process can only take the killed one's.
    held = []
    for other in sorted(os.sched_getaffinity(0)):
        if other != cpu:
            fd = os.open(tmp_path / f"cpu{other}", os.O_RDONLY | os.O_CREAT, 0o444)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held.append(fd)
    try:
        started = time.monotonic()
        lines = list(_lines(_child(processes, tmp_path, busy_s=1.5, idle_s=0.0)))
        assert {line["cpu"] for line in lines} - {None} == {cpu}
        assert time.monotonic() - started < 30
    finally:
        for fd in held:
            os.close(fd)


@needs_the_keeper
def test_no_cpu_is_taken_where_claims_cannot_be_made(
    tmp_path: Path, processes: list[subprocess.Popen[Any]]
) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    lines = list(_lines(_child(processes, blocked, busy_s=1.0, idle_s=0.0)))
    assert all(line["cpu"] is None for line in lines)
