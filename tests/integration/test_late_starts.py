"""A job released within its grant's hold whose first line comes after it is handed back, not started."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from flume_rx import Flume, worker
from flume_rx.engine import processor
from flume_rx.model import config as config_module
from flume_rx.model.registry import unregister
from flume_rx.operators import Lease, Queued
from flume_rx.surfaces.runtime import WorkerRuntime

QUEUE = "late"
ALLOWED = 5
PERIOD_S = 0.3
# A hold longer than a starved thread's wake-up: with the default 20 ms, on a loaded machine every job could
# begin late and go back, again and again.
HOLD_S = 0.2
STALL_S = 0.6  # three holds: the first line of a stalled job comes long after its grant's hold


def _most_in_any_period(times: list[float], period_s: float) -> int:
    times = sorted(times)
    left, most = 0, 0
    for right, at in enumerate(times):
        while times[left] <= at - period_s:
            left += 1
        most = max(most, right - left + 1)
    return most


def _job_number(coro: Any) -> int | None:
    """The job a task runs, if it is one of the processor's: its report wraps the job's coroutine (the
    worker's own, or the one that begins it), whose frame holds the job's number or its delivery."""
    frame = getattr(coro, "cr_frame", None)
    job = frame.f_locals.get("coro") if frame is not None else None
    job_frame = getattr(job, "cr_frame", None)
    if job_frame is None:
        return None
    if "item" in job_frame.f_locals:
        return int(job_frame.f_locals["item"].job.args[0])
    number = job_frame.f_locals.get("n")
    return number if isinstance(number, int) else None


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_job_whose_first_line_comes_after_its_hold_goes_back_for_a_new_token(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    # The first grant's five jobs are released in time, but their first lines come 600 ms later (a starved
    # process, a thread that woke late), after the grant's 200 ms hold; the next grant's jobs begin at once.
    # Started anyway, one 300 ms period held both grants' starts (10 of 5 allowed). Handed back, they begin
    # once each with a new grant, no attempt spent, and the window gets their tokens back.
    first_lines: list[int] = []
    lock = threading.Lock()
    stalled: set[int] = set()
    # Where the window counts a start: the moment a lease lets a job begin, on the throttle's clock. A first
    # line comes later, by as much as the machine delays a thread, and could shift into the next period.
    starts: list[float] = []
    clock_read = threading.local()
    lease_init, lease_begin = Lease.__init__, Lease.begin

    def init_lease(
        self: Lease, grant: Any, start_by: float, now: Callable[[], float], *args: Any, **kwargs: Any
    ) -> None:
        def read_now() -> float:
            clock_read.at = now()
            return float(clock_read.at)

        lease_init(self, grant, start_by, read_now, *args, **kwargs)

    def begin(self: Lease) -> bool:
        began = lease_begin(self)
        if began:
            with lock:
                starts.append(clock_read.at)  # what begin read in this thread
        return began

    monkeypatch.setattr(Lease, "__init__", init_lease)
    monkeypatch.setattr(Lease, "begin", begin)

    def record(n: int) -> None:
        with lock:
            first_lines.append(n)

    def stall_once(n: int) -> bool:
        with lock:
            if n >= ALLOWED or n in stalled:
                return False
            stalled.add(n)
            return True

    if kind == "sync":
        worker("LateSync")(record)
        take = processor._take  # what a stage thread does as it takes a job (its on_take)

        def slow_first_take(item: Any, queued: Queued[Any]) -> Any:
            if stall_once(item.job.args[0]):
                time.sleep(STALL_S)  # the thread wakes late, before its first line
            return take(item, queued)

        monkeypatch.setattr(processor, "_take", slow_first_take)
    else:

        async def record_async(n: int) -> None:
            record(n)

        worker("LateAsync")(record_async)
        original_create_task = asyncio.BaseEventLoop.create_task

        def late_tasks(self: asyncio.BaseEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
            # The task's first step comes a stall after it was made: the loop was starved meanwhile.
            if _job_number(coro) is not None and stall_once(_job_number(coro)):
                inner = coro

                async def stalled_first() -> Any:
                    time.sleep(STALL_S)
                    return await inner

                coro = stalled_first()
            return original_create_task(self, coro, **kwargs)

        monkeypatch.setattr(asyncio.BaseEventLoop, "create_task", late_tasks)

    name = "LateSync" if kind == "sync" else "LateAsync"
    try:
        flume = Flume(redis_url, "t")
        jobs = 3 * ALLOWED
        flume.bulk_enqueue(QUEUE, [(name, [n]) for n in range(jobs)])
        config = config_module.parse(
            {
                "redis_url": redis_url,
                "namespace": "t",
                "shutdown_timeout": 2000,
                "pipelines": {
                    "main": {
                        "queue": QUEUE,
                        "max_demand": 20,
                        "processor": {"stages": ALLOWED},
                        "rate_limiter": {
                            "allowed": ALLOWED,
                            "period": PERIOD_S * 1000,
                            "hold": HOLD_S * 1000,
                            "burst": 0,
                        },
                    }
                },
            }
        )
        runtime = WorkerRuntime(config, burst=True)
        late: list[int] = []
        runtime.telemetry.attach("throttle.late", lambda event: late.append(event.fields["tokens"]))

        asyncio.run(asyncio.wait_for(runtime.run(), 120))

        stats = flume.stats([QUEUE])[QUEUE]
        flume.close()
    finally:
        unregister(name)

    assert Counter(first_lines) == Counter(range(jobs))  # each began once
    assert stats["processed"] == jobs and stats["failed"] == 0 and stats["dead"] == 0
    assert len(starts) == jobs  # a job let begin is one that ran
    assert _most_in_any_period(starts, PERIOD_S) <= ALLOWED
    assert sum(late) >= ALLOWED  # the stalled ones, and in the async case what the stalled loop made late too
