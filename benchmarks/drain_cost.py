"""CPU per signal of drain_loop (one signal a round under the lock) against process's hand-written rounds.

    python -m benchmarks.drain_cost

docs/operators.md ("One drain style") quotes it: why process keeps its own drain. Prints medians of 7 runs of
200,000 no-op signals each, timed with time.process_time.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Callable

from reactivex.observer import Observer

from flume_rx.operators._flow import Demand, StreamEnd, drain_loop

N = 200_000


def one_per_round() -> float:
    lock = threading.Lock()
    items: deque[int] = deque(range(N))
    sink: list[int] = []

    def next_signal() -> Callable[[], None] | None:
        if items:
            x = items.popleft()
            return lambda: sink.append(x)
        return None

    drain = drain_loop(lock, next_signal, lambda: 0, Demand.unlimited(), StreamEnd(), Observer())
    t = time.process_time()
    drain()
    return (time.process_time() - t) / N * 1e6


def batched_round() -> float:
    lock = threading.Lock()
    items: deque[int] = deque(range(N))
    sink: list[int] = []
    t = time.process_time()
    while True:
        with lock:
            batch = list(items)
            items.clear()
        if not batch:
            break
        for x in batch:
            sink.append(x)
    return (time.process_time() - t) / N * 1e6


def per_item_rounds() -> float:
    # process's drain when a round holds one item (the usual case at steady state: one outcome frees one stage)
    lock = threading.Lock()
    items: deque[int] = deque(range(N))
    sink: list[int] = []
    t = time.process_time()
    while True:
        with lock:
            if not items:
                break
            batch = [items.popleft()]
        for x in batch:
            sink.append(x)
    return (time.process_time() - t) / N * 1e6


def main() -> None:
    a = [one_per_round() for _ in range(7)]
    b = [batched_round() for _ in range(7)]
    c = [per_item_rounds() for _ in range(7)]
    print(f"drain_loop, one signal a round: {statistics.median(a):.3f} us/item")
    print(f"batched round (all ready items under one lock): {statistics.median(b):.3f} us/item")
    print(f"hand-written round of one item: {statistics.median(c):.3f} us/item")


if __name__ == "__main__":
    main()
