"""Profile one worker process draining no-op jobs: where a job's time goes (see docs/performance.md).

python -m benchmarks.profile_drain [--jobs 50000] [--max-demand 500] [--stages 200] [--top 25]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time

from flume_rx import Flume, worker
from flume_rx.model import config as config_module
from flume_rx.surfaces.embedded import RedisServer
from flume_rx.surfaces.runtime import WorkerRuntime


@worker("ProfileNoop")
async def noop(_n: int) -> None:
    return None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--max-demand", type=int, default=500)
    parser.add_argument("--stages", type=int, default=200)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    with RedisServer() as server:
        flume = Flume(server.url, "profile")
        flume.bulk_enqueue("profile", [("ProfileNoop", [i]) for i in range(args.jobs)])
        flume.close()
        config = config_module.parse(
            {
                "redis_url": server.url,
                "namespace": "profile",
                "pipelines": {
                    "profile": {"max_demand": args.max_demand, "processor": {"stages": args.stages}}
                },
            }
        )
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        asyncio.run(WorkerRuntime(config, burst=True).run())
        profiler.disable()
        elapsed = time.perf_counter() - started
    pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)
    print(f"{args.jobs} jobs in {elapsed:.2f} s under the profiler ({args.jobs / elapsed:,.0f} jobs/s)")


if __name__ == "__main__":
    main()
