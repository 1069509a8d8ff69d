"""Not a queue: the least a Redis-list queue in Python can do, as the floor under every latency figure.

The producer LPUSHes the enqueue time; the worker is one thread blocked in ``BLMOVE`` (the reliable-queue
move into its own in-flight list), which runs the job as soon as the reply is parsed and then LREMs it.
No framework, no encoding beyond ``repr``: what is left of enqueue-to-start is Redis, the two processes'
wake-ups and redis-py. A queue's latency is read against this floor, measured in the same run.
"""

from __future__ import annotations

import redis

from benchmarks import probe
from benchmarks.peers._util import BATCH, PY, broker_url, llen

QUEUE = "floor:queue"
IN_FLIGHT = "floor:in_flight"


class _Producer:
    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url)

    def bulk(self, n: int) -> None:
        for start in range(0, n, BATCH):
            self._client.lpush(QUEUE, *[b"0.0"] * min(BATCH, n - start))

    def one(self, enqueued_at: float) -> None:
        self._client.lpush(QUEUE, repr(enqueued_at))

    def close(self) -> None:
        self._client.close()


def producer(url: str, variant: str) -> _Producer:
    return _Producer(url)


def worker_commands(url: str, processes: int, variant: str) -> list[list[str]]:
    return [[PY, "-m", "benchmarks.peers.floor_peer"] for _ in range(processes)]


def backlog(url: str) -> int:
    return llen(url, QUEUE)


def main() -> None:
    client = redis.Redis.from_url(broker_url())
    while True:
        payload = client.blmove(QUEUE, IN_FLIGHT, 0, "RIGHT", "LEFT")
        if payload is None:
            continue
        probe.run_sync(float(payload))
        client.lrem(IN_FLIGHT, 1, payload)


if __name__ == "__main__":
    main()
