"""A process for the CPU keeper's tests: ``python -m tests.cpu_keeper_child CLAIMS_DIR BUSY_S IDLE_S``.

It starts a :class:`CpuKeeper` (checks every 50 ms, idle leave after 0.5 s, crowding pause 10 s, so at least
5), keeps one thread busy with pure-Python work for ``BUSY_S`` seconds, starting a second thread halfway, then
idles for ``IDLE_S`` seconds. It prints one JSON line per 50 ms: the CPU kept and the CPUs each thread may use;
it logs as a worker process does, to stderr.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from flume_rx.model.logs import configure_logging
from flume_rx.surfaces import cpu_keeper


def _affinities() -> dict[str, list[int]]:
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            out[tid] = sorted(os.sched_getaffinity(int(tid)))
        except OSError:
            continue
    return out


def main() -> None:
    claims_dir, busy_s, idle_s = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    configure_logging("INFO")  # as a worker process logs: the keeper's decisions go to stderr
    cpu_keeper.IDLE_LEAVE_S = 0.5
    cpu_keeper.CROWDED_WINDOW_S = 0.5
    cpu_keeper.CROWDED_PAUSE_S = 10.0
    keeper = cpu_keeper.CpuKeeper(claims_dir=claims_dir, check_s=0.05)
    keeper.start()
    busy_until = time.monotonic() + busy_s
    late = threading.Event()

    def burn() -> None:
        while time.monotonic() < busy_until:
            sum(range(2000))

    def wait_late() -> None:
        late.wait(busy_s + idle_s + 5)

    threading.Thread(target=burn, daemon=True).start()
    started_late = False
    end = busy_until + idle_s
    while (now := time.monotonic()) < end:
        if not started_late and now > busy_until - busy_s / 2:
            threading.Thread(target=wait_late, name="late", daemon=True).start()
            started_late = True
        phase = "busy" if now < busy_until else "idle"
        print(json.dumps({"phase": phase, "cpu": keeper.cpu, "threads": _affinities()}), flush=True)
        time.sleep(0.05)
    late.set()
    keeper.stop()
    print(json.dumps({"phase": "stopped", "cpu": keeper.cpu, "threads": _affinities()}), flush=True)


if __name__ == "__main__":
    main()
