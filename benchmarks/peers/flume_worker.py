"""One flume_rx worker process: ``python -m benchmarks.peers.flume_worker CONFIG``.

A module of its own, so the worker module the config imports (benchmarks.peers.flume) is never also
``__main__``, which would register its workers twice.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    from flume_rx.model.config import load
    from flume_rx.model.logs import configure_logging
    from flume_rx.surfaces.processes import run_worker_process

    # As `flume-rx worker` logs: the CPU keeper's decisions reach the run's samples (runner.keeper_decisions).
    configure_logging("INFO")
    return run_worker_process(load(argv[0]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
