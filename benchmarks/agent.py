"""The producer side of a peer, run in its own process so one peer's imports never touch another's.

``python -m benchmarks.agent PEER check | bulk N | paced RATE SECONDS`` (Redis URL in BENCH_REDIS_URL, the
adapter's variant in BENCH_VARIANT)
prints one JSON object on stdout.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time

from benchmarks.peers import PeerModule, peer


def main(argv: list[str]) -> int:
    spec = peer(argv[0])
    mode = argv[1]
    url = os.environ["BENCH_REDIS_URL"]
    variant = os.environ.get("BENCH_VARIANT", spec.variant)
    module: PeerModule = importlib.import_module(f"benchmarks.peers.{spec.module}")  # type: ignore[assignment, unused-ignore]
    out: dict[str, float] = {}
    if mode == "check":
        module.producer(url, variant).close()
    elif mode == "bulk":
        n = int(argv[2])
        prod = module.producer(url, variant)
        began = time.perf_counter()
        prod.bulk(n)
        out = {"n": n, "seconds": time.perf_counter() - began}
        prod.close()
    elif mode == "paced":
        rate, seconds = float(argv[2]), float(argv[3])
        prod = module.producer(url, variant)
        total = int(rate * seconds)
        interval = 1.0 / rate
        began = time.perf_counter()
        behind = 0.0
        for i in range(total):
            due = began + i * interval
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            else:
                behind = max(behind, now - due)
            prod.one(time.time())
        out = {"n": total, "seconds": time.perf_counter() - began, "max_behind_s": behind}
        prod.close()
    else:
        raise SystemExit(f"unknown mode {mode!r}; use check, bulk or paced")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
