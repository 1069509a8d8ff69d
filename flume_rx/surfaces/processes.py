"""Worker processes: ``run_worker_process`` (one process, what ``flume-rx worker`` runs) and ``supervise`` (N
of them, restarted when they crash), around the :class:`~flume_rx.surfaces.runtime.WorkerRuntime` each runs.

Apart from the runtime because it is the process's life (signals, garbage collector settings, a hung sync job
at exit, children) rather than the pipelines' work.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence

from flume_rx.engine.loop import new_event_loop
from flume_rx.engine.source import BurstMode
from flume_rx.engine.threads import STAGE_THREAD_PREFIX
from flume_rx.model.config import CpuAffinity, FlumeConfig, load, select_pipelines
from flume_rx.model.errors import ConfigError
from flume_rx.model.logs import LogFormat, configure_logging
from flume_rx.surfaces.cpu_keeper import KEEPER_NEEDS, CpuKeeper
from flume_rx.surfaces.early_stop import catch_sigterm, take_sigterm
from flume_rx.surfaces.runtime import WorkerRuntime, import_worker_modules

logger = logging.getLogger("flume_rx.runtime")


def run_worker_process(
    config: FlumeConfig,
    *,
    burst: bool | BurstMode = False,
    metrics_port: int | None = None,
    index: int = 0,
) -> int:
    """Run a worker in this process until SIGTERM/SIGINT (or drained, in burst mode); returns the exit code.

    With ``metrics_port``, Prometheus metrics of this process are served on it at ``/metrics``. A SIGTERM that
    comes while it starts stops it as soon as it runs (see :mod:`~flume_rx.surfaces.early_stop`). It is
    process ``index`` for a list of CPUs in ``config.cpu_affinity`` (see :func:`cpus_for`).
    """
    catch_sigterm()
    keeper = _keep_to_cpus(config.cpu_affinity, index)
    try:
        _run_runtime(config, burst, metrics_port)
    finally:  # whatever ends it, the CPU's claim goes (a dying process's goes with it anyway)
        if keeper is not None:
            keeper.stop()
    _exit_if_stages_hang()
    return 0


def _run_runtime(config: FlumeConfig, burst: bool | BurstMode, metrics_port: int | None) -> None:
    import_worker_modules(config.imports)
    runtime = WorkerRuntime(config, burst=burst)
    if metrics_port is not None:
        from flume_rx.surfaces.metrics import PrometheusMetrics

        PrometheusMetrics(runtime.telemetry).serve(metrics_port)
    # What exists now (modules, the registry, the config) lives as long as the process. Jobs in flight survive
    # into the oldest generation, so full collections come every few thousand jobs, and each walked all of
    # this again: about 3.5 us of a no-op job's 21 us of CPU. Frozen, they walk only what came later.
    gc.freeze()
    # A young collection every 700 allocations comes every few dozen jobs, while the hundreds in flight are
    # alive, so most of them are promoted and walked again later; every 10,000, many are gone by then.
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, 10_000), gen1, gen2)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, runtime.stop)
        if take_sigterm():  # came while starting, before the loop's handler
            runtime.stop()
        await runtime.run()

    # A loop whose short timer waits end on time: an async job's `await asyncio.sleep(0.001)` otherwise waits
    # up to a millisecond longer whenever a Redis reply woke the loop in between (see engine/loop.py).
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(main())


def cpus_for(setting: CpuAffinity, index: int, allowed: Sequence[int]) -> set[int] | None:
    """The CPU worker process ``index`` keeps to from its start, of the ``allowed`` ones: with a list of CPUs,
    the ``index``-th of them in turn; with ``"spread"`` or ``"off"``, None (``"spread"`` leaves it to the
    :class:`~flume_rx.surfaces.cpu_keeper.CpuKeeper`).

    Raises:
        ConfigError: ``setting`` names a CPU this process may not use.
    """
    if isinstance(setting, str) or not allowed:
        return None
    cpu = setting[index % len(setting)]
    if cpu not in allowed:
        raise ConfigError(
            f"cpu_affinity lists CPU {cpu}, which this process may not use (it may use "
            f'{", ".join(map(str, sorted(allowed)))}); list those, or set cpu_affinity = "spread"'
        )
    return {cpu}


def check_cpus(setting: CpuAffinity, processes: int) -> None:
    """Refuse, before any worker process starts, a ``cpu_affinity`` one of ``processes`` could not keep to (a
    child refused at its start would be restarted again and again).

    Raises:
        ConfigError: as :func:`cpus_for`.
    """
    if hasattr(os, "sched_getaffinity"):
        allowed = sorted(os.sched_getaffinity(0))
        for index in range(processes):
            cpus_for(setting, index, allowed)


def _keep_to_cpus(setting: CpuAffinity, index: int) -> CpuKeeper | None:
    """Keep this process where ``cpu_affinity`` says, before any thread starts (they inherit it); with
    ``"spread"``, the started keeper, which the caller stops."""
    if setting == "spread":
        if not CpuKeeper.can_run():  # macOS, Windows, one CPU: the OS places the process
            logger.debug('cpu_affinity = "spread" leaves this process to the OS: %s', KEEPER_NEEDS)
            return None
        keeper = CpuKeeper()
        keeper.start()
        return keeper
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = cpus_for(setting, index, sorted(os.sched_getaffinity(0)))
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
        logger.info("worker process %d keeps to CPU %s (cpu_affinity)", index, min(cpus))
    return None


def _exit_if_stages_hang() -> None:
    """Exit now (code 0) if sync jobs still run after the shutdown gave their jobs back to the queue.

    Python joins a thread pool's threads at exit, so one hung sync job would keep a stopped worker alive
    forever, past ``shutdown_timeout`` and deaf to SIGTERM.
    """
    deadline = time.monotonic() + 0.5
    stuck = []
    for thread in threading.enumerate():
        if thread.name.startswith(STAGE_THREAD_PREFIX):
            thread.join(max(0.0, deadline - time.monotonic()))  # idle threads leave within milliseconds
            if thread.is_alive():
                stuck.append(thread)
    if stuck:
        logger.warning(
            "%d sync job(s) still running after shutdown_timeout; their jobs are back on the queue, exiting "
            "without waiting for them",
            len(stuck),
        )
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def child_main(
    config_path: str,
    redis_url: str | None,
    burst: bool | BurstMode,
    metrics_port: int | None = None,
    log_level: str = "INFO",
    log_format: LogFormat = "text",
    queues: Sequence[str] | None = None,
    index: int = 0,
) -> None:
    catch_sigterm()
    configure_logging(log_level, log_format)
    config = load(config_path, redis_url=redis_url)
    if queues:
        config = select_pipelines(config, queues)
    raise SystemExit(run_worker_process(config, burst=burst, metrics_port=metrics_port, index=index))


def supervise(
    config_path: str,
    processes: int,
    *,
    redis_url: str | None = None,
    burst: bool | BurstMode = False,
    metrics_port: int | None = None,
    log_level: str = "INFO",
    log_format: LogFormat = "text",
    queues: Sequence[str] | None = None,
) -> int:
    """Run ``processes`` worker processes; SIGTERM/SIGINT stop them all gracefully; a crashed one is restarted.

    With ``metrics_port``, worker ``i`` serves its Prometheus metrics on ``metrics_port + i``.
    """
    context = multiprocessing.get_context("spawn")
    stopping = threading.Event()

    def spawn(index: int) -> multiprocessing.process.BaseProcess:
        process = context.Process(
            target=child_main,
            args=(
                config_path,
                redis_url,
                burst,
                None if metrics_port is None else metrics_port + index,
                log_level,
                log_format,
                queues,
                index,
            ),
            name=f"flume-worker-{index}",
            daemon=False,
        )
        process.start()
        return process

    children: list[multiprocessing.process.BaseProcess] = []
    told: set[int] = set()  # the children sent SIGTERM

    def stop_children() -> None:
        for child in children:
            if child.pid is not None and child.pid not in told and child.is_alive():
                told.add(child.pid)
                os.kill(child.pid, signal.SIGTERM)

    def forward(signum: int, _frame: object) -> None:
        stopping.set()
        stop_children()

    # In place before the first child starts: caught only after, a SIGTERM meanwhile ended this process and left
    # its children running. One that came while this command started means no child starts at all.
    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    if take_sigterm():
        stopping.set()
    try:
        for index in range(processes):
            if not stopping.is_set():
                children.append(spawn(index))
        while True:
            if stopping.is_set():
                stop_children()  # a child started as the signal came was not in the list it went through
            alive = [c for c in children if c.is_alive()]
            if not alive and (stopping.is_set() or burst):
                break
            for index, child in enumerate(children):
                if child.is_alive() or stopping.is_set() or burst:
                    continue
                logger.warning(
                    "worker process %s exited with %s; starting a new one", child.name, child.exitcode
                )
                time.sleep(0.5)
                if not stopping.is_set():
                    children[index] = spawn(index)
            time.sleep(0.1)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    failed = [c for c in children if c.exitcode not in (0, None, -signal.SIGTERM)]
    return 1 if failed and not stopping.is_set() else 0
