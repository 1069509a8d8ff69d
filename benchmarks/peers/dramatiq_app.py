"""The module the ``dramatiq`` CLI imports in each worker process; BENCH_VARIANT picks the limiter."""

from __future__ import annotations

from benchmarks.peers.dramatiq_peer import worker_module

worker_module()
