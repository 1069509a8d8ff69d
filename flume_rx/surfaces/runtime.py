"""The worker runtime: one event loop per process running every pipeline of a config (the process around it, and
a supervisor for N, are :mod:`flume_rx.surfaces.processes`).

A worker process fetches only what its pipelines requested, beats its heart from a thread (so a blocking job
cannot make it look dead), moves due scheduled and retry jobs, returns the jobs of dead consumers, and on
SIGTERM stops fetching, hands back what it has not started, lets running jobs finish within
``shutdown_timeout`` and returns the rest to the queue before it exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import random
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from reactivex import Observable, abc
from reactivex.scheduler.eventloop import AsyncIOScheduler
from redis.exceptions import RedisError

from flume_rx import operators as fo
from flume_rx.engine.assemble import assemble
from flume_rx.engine.build import make_source, shared_window
from flume_rx.engine.cron import CronTicker
from flume_rx.engine.current import abort
from flume_rx.engine.settle import Settler
from flume_rx.engine.source import BurstMode, JobSource, burst_mode
from flume_rx.engine.threads import STAGE_THREAD_PREFIX, StageThreads
from flume_rx.model.config import (
    FlumeConfig,
    PipelineConfig,
    RateLimiterConfig,
    check_one_pipeline_per_queue,
)
from flume_rx.model.errors import ConfigError, FlumeError, StoreError, WorkerModuleFailed
from flume_rx.model.job import ABORT_KEPT_S
from flume_rx.model.telemetry import Telemetry
from flume_rx.store import Outage, RedisStore, RedisTokenWindow, SyncStore, through_outage

logger = logging.getLogger("flume_rx.runtime")

# Jitter comes from a private generator: drawing from the global one would perturb the random state of
# the application (and of Hypothesis, which checks it) from our background loops.
_jitter = random.Random()

PROMOTE_INTERVAL_S = 0.2
ABORTS_POLL_S = 1.0
"""How often a worker reads the aborts asked when its client has no pub/sub to hear them (Redis Cluster)."""
LOOP_BLOCKED_WARNING_S = 1.0


def stage_thread_prefix(config: PipelineConfig) -> str:
    """The name prefix of a pipeline's stage threads: ``flume-stage-<pipeline>``."""
    return f"{STAGE_THREAD_PREFIX}-{config.name}"


def new_consumer_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def add_import_paths(directories: Sequence[str]) -> None:
    """Put ``directories`` first on ``sys.path``, so ``imports`` and ``"module:function"`` names resolve there.

    The CLI passes the current directory (or its ``--path`` options), as Celery, Dramatiq, RQ and arq do: an
    installed console script, unlike ``python -m``, does not have it on ``sys.path``. Worker processes
    spawned by the supervisor inherit the parent's ``sys.path``.

    Raises:
        ConfigError: a directory does not exist.
    """
    for directory in reversed(directories):
        absolute = os.path.abspath(directory)
        if not os.path.isdir(absolute):
            raise ConfigError(
                f"--path {directory!r} is not a directory; give the directory your worker modules are imported from"
            )
        if absolute in sys.path:
            sys.path.remove(absolute)
        sys.path.insert(0, absolute)


def import_worker_modules(modules: Sequence[str]) -> None:
    """Import the modules whose import registers the workers (config ``imports``).

    Raises:
        ConfigError: a module cannot be found.
        WorkerModuleFailed: a module was found but raised while importing (its own import of something
            missing, a syntax error, ...); it carries that error's traceback.
    """
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (module == exc.name or module.startswith(exc.name + ".")):
                raise _module_failed(module, exc) from exc
            raise ConfigError(
                f"cannot find worker module {module!r} listed in imports ({exc}); check the name, and run the "
                "worker from the directory that holds it or pass --path DIR"
            ) from exc
        except FlumeError:
            raise  # flume_rx refusing something at import (no SES region, ...) already says what to fix
        except Exception as exc:
            raise _module_failed(module, exc) from exc


def _module_failed(module: str, exc: BaseException) -> WorkerModuleFailed:
    """The error of a worker module that exists but raised ``exc`` while being imported."""
    frames = traceback.TracebackException.from_exception(exc)
    # The import machinery's own frames say nothing about the user's code.
    frames.stack = traceback.StackSummary.from_list(
        [f for f in frames.stack if not f.filename.startswith("<frozen importlib")]
    )
    return WorkerModuleFailed(
        f"worker module {module!r} listed in imports raised {type(exc).__name__} while being imported ({exc}); "
        "fix the error in the traceback above",
        "".join(frames.format()),
    )


@dataclass
class _Running:
    config: PipelineConfig
    source: JobSource
    subscription: abc.DisposableBase
    completed: asyncio.Event


class WorkerRuntime:
    """Runs every pipeline of ``config`` in this process until :meth:`stop` (or, in burst mode, until drained).

    Args:
        config: the checked configuration.
        telemetry: the event bus (a new one by default).
        burst: stop by itself once there is no work left: True or ``"drained"`` waits for the queues, the due
            scheduled jobs, the retries (not yet due too) and every in-flight list to be empty; ``"ready"``
            stops once nothing is ready to run now (see :data:`~flume_rx.engine.source.BurstMode`).
        block_s: how long an idle fetch blocks in Redis before it asks again.
    """

    def __init__(
        self,
        config: FlumeConfig,
        *,
        telemetry: Telemetry | None = None,
        burst: bool | BurstMode = False,
        block_s: float = 1.0,
        consumer_id: str | None = None,
        graphs: Sequence[tuple[JobSource, Observable[Any]]] = (),
    ) -> None:
        if not config.pipelines:
            raise ConfigError(
                "the config has no [pipelines.NAME] table; add one so the worker has work to run"
            )
        check_one_pipeline_per_queue(config.pipelines)
        self.config = config
        self.telemetry = telemetry or Telemetry()
        self.burst_mode: BurstMode | None = burst_mode(burst)
        self.block_s = block_s
        self.consumer = consumer_id or new_consumer_id()
        self._stop_requested = threading.Event()
        self._stop_event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_tick = time.monotonic()
        self.running: list[_Running] = []
        self._graphs = list(graphs)

    def stop(self) -> None:
        """Ask for a graceful stop; safe from any thread and from signal handlers."""
        self._stop_requested.set()
        loop, event = self._loop, self._stop_event
        if loop is not None and event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop_event = asyncio.Event()
        if self._stop_requested.is_set():
            self._stop_event.set()
        config = self.config
        store = RedisStore.from_url(
            config.redis_url,
            config.namespace,
            dead_max=config.dead_max,
            dead_ttl_ms=int(config.dead_ttl_s * 1000),
        )
        sync_store = SyncStore.from_url(config.redis_url, config.namespace)
        queues = [q for p in config.pipelines for q in p.all_queues]
        # Each pipeline its own stage threads, as many as its stages: sized so, a thread can be handed its
        # next job while it runs one (see run_workers), and one pipeline's jobs never wait for another's.
        executors: list[StageThreads] = []
        scheduler = AsyncIOScheduler(loop)
        settler = Settler(self.telemetry)
        heartbeat = _Heartbeat(self, sync_store, queues)
        tasks: list[asyncio.Task[None]] = []
        adaptive: list[RedisTokenWindow] = []  # windows that hear other processes' refusals
        try:
            await self._join(store, queues, self._stop_event)
            heartbeat.start()
            self.telemetry.emit("consumer.joined", consumer=self.consumer, queues=queues)
            logger.info("consumer %s serving %s", self.consumer, ", ".join(queues))
            if self._stop_event.is_set():
                pass  # asked to stop before serving (a SIGTERM while the process started): fetch nothing
            elif self._graphs:
                for (source, graph), pipeline_config in zip(self._graphs, config.pipelines, strict=True):
                    self.running.append(self._subscribe(pipeline_config, source, graph, scheduler, settler))
            else:
                for pipeline_config in config.pipelines:
                    window = await self._window_for(store, pipeline_config)
                    executor = StageThreads(
                        pipeline_config.processor.stages,
                        thread_name_prefix=stage_thread_prefix(pipeline_config),
                    )
                    executors.append(executor)
                    if isinstance(window, RedisTokenWindow) and window.adaptive:
                        adaptive.append(window)
                    self.running.append(
                        self._start(pipeline_config, store, window, executor, scheduler, settler)
                    )
            tasks = [
                loop.create_task(self._promote_forever(store, queues), name="promote"),
                loop.create_task(self._recover_forever(store, queues), name="recover"),
                loop.create_task(self._tick_forever(), name="loop tick"),
                loop.create_task(self._abort_forever(store), name="abort listener"),
            ]
            if adaptive:
                tasks.append(loop.create_task(hear_cuts_forever(store, adaptive), name="cut listener"))
            if config.schedules:
                ticker = CronTicker(
                    store,
                    config.schedules,
                    telemetry=self.telemetry,
                    max_payload_bytes=config.max_payload_bytes,
                )
                tasks.append(loop.create_task(ticker.run(), name="cron"))
            try:
                await self._until_stopped(self._stop_event)
            except asyncio.CancelledError:
                # A cancelled run (asyncio.run's Ctrl-C, a caller's task.cancel()) stops as SIGTERM does: jobs
                # handed back, nothing left in flight. Then the cancellation goes on.
                await self._shutdown(store, settler, heartbeat)
                raise
            await self._shutdown(store, settler, heartbeat)
        finally:
            # A cancelled task ends only at its next step: closing the store before that pulled the connection
            # from under a call in flight, and the task died on the closed socket instead of the cancellation.
            await _ended(tasks)
            heartbeat.stop()
            for executor in executors:
                executor.shutdown(wait=False, cancel_futures=True)
            await store.aclose()
            sync_store.close()
            self._loop = None

    async def _until_stopped(self, stop: asyncio.Event) -> None:
        """Until :meth:`stop` is called (or, in burst mode, every pipeline has completed)."""
        waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait())]
        try:
            if self.burst_mode is not None:
                waiters += [asyncio.ensure_future(r.completed.wait()) for r in self.running]
                waiters.append(asyncio.ensure_future(_all(waiters[1:])))
                await asyncio.wait([waiters[0], waiters[-1]], return_when=asyncio.FIRST_COMPLETED)
            else:
                await waiters[0]
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _join(self, store: RedisStore, queues: Sequence[str], stop: asyncio.Event) -> None:
        """The first heartbeat, before the first fetch, so nobody takes us for dead.

        Through an outage (Redis down, full, or refusing the call) it retries with backoff until it lands or
        we are asked to stop: exiting would only make a supervisor start us again, in a loop.
        """
        await through_outage("heartbeat", lambda: store.heartbeat(queues, self.consumer), stop=stop)

    async def _window_for(self, store: RedisStore, config: PipelineConfig) -> fo.TokenWindow | None:
        limiter = config.rate_limiter
        if limiter is None or limiter.key_from is not None:  # per-key windows are built by assemble
            return None
        allowed = limiter.allowed
        if limiter.from_ses is not None:
            allowed = await asyncio.to_thread(_allowed_from_ses, limiter)
        return shared_window(
            store,
            limiter.key,
            allowed,
            limiter.period_s,
            hold_s=limiter.hold_s,
            adaptive=limiter.adaptive,
            burst=limiter.burst,
        )

    def _start(
        self,
        config: PipelineConfig,
        store: RedisStore,
        window: fo.TokenWindow | None,
        executor: StageThreads,
        scheduler: AsyncIOScheduler,
        settler: Settler,
    ) -> _Running:
        source = make_source(
            config,
            store=store,
            consumer=self.consumer,
            telemetry=self.telemetry,
            window=window,
            max_payload_bytes=self.config.max_payload_bytes,
            block_s=self.block_s,
            burst_mode=self.burst_mode,
        )
        graph = assemble(config, source, executor=executor, scheduler=scheduler)
        return self._subscribe(config, source, graph, scheduler, settler)

    def _subscribe(
        self,
        config: PipelineConfig,
        source: JobSource,
        graph: Observable[Any],
        scheduler: AsyncIOScheduler,
        settler: Settler,
    ) -> _Running:
        completed = asyncio.Event()

        def on_error(error: Exception) -> None:
            logger.error("pipeline %r stopped on an error: %s", config.name, error, exc_info=error)
            completed.set()
            self.stop()

        # Outcomes that finish together reach the settler in one call where the graph can pass them so.
        observer = fo.ManyObserver(settler.on_next, on_error, completed.set, settler.on_next_all)
        subscription = fo.subscribe_upstream(graph, observer, fo.Demand.unlimited(), scheduler)
        return _Running(config, source, subscription, completed)

    async def _shutdown(self, store: RedisStore, settler: Settler, heartbeat: _Heartbeat) -> None:
        for running in self.running:
            running.source.stopping = True
        deadline = time.monotonic() + self.config.shutdown_timeout_s
        handed_back = 0
        for running in self.running:
            # Handing back waits through an outage like any settle, but never past shutdown_timeout: with Redis
            # gone, a stop must still stop (the jobs come back as orphans once it is back).
            try:
                handed_back += await asyncio.wait_for(
                    running.source.hand_back_unstarted(), timeout=max(0.1, deadline - time.monotonic())
                )
            except TimeoutError:
                logger.warning(
                    "could not hand back the unstarted jobs of %r within shutdown_timeout (Redis unreachable); "
                    "they come back as orphans",
                    running.config.name,
                )
        while any(r.source.running for r in self.running) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        try:
            await asyncio.wait_for(settler.drained(), timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            logger.warning("settling outcomes did not finish within shutdown_timeout")
        for running in self.running:
            running.subscription.dispose()
        # Giving the jobs back also takes us out of the consumers set: a beat landing after that would put us
        # back for good, a dead consumer in every count until some worker recovers it. So the beats end first.
        heartbeat.stop()
        if heartbeat.is_alive():
            await asyncio.to_thread(heartbeat.join, HEARTBEAT_JOIN_S)
        returned = 0
        for running in self.running:
            for queue in running.config.all_queues:
                try:
                    returned += await store.requeue_all(queue, self.consumer)
                except StoreError as exc:
                    logger.warning(
                        "could not return in-flight jobs of %r (%s); they come back as orphans", queue, exc
                    )
        self.telemetry.emit("consumer.left", consumer=self.consumer, returned=handed_back + returned)
        logger.info(
            "consumer %s stopped: %d unstarted job(s) handed back, %d returned after the shutdown timeout",
            self.consumer,
            handed_back,
            returned,
        )

    async def _promote_forever(self, store: RedisStore, queues: Sequence[str]) -> None:
        while True:
            for queue in queues:
                # The fetch loop reports outages; promotion resumes with it.
                with contextlib.suppress(StoreError):
                    await store.promote_due(queue)
            await asyncio.sleep(PROMOTE_INTERVAL_S * _jitter.uniform(0.75, 1.25))

    async def _recover_forever(self, store: RedisStore, queues: Sequence[str]) -> None:
        timeout_ms = int(self.config.orphan_timeout_s * 1000)
        while True:
            await asyncio.sleep(self.config.orphan_timeout_s / 2 * _jitter.uniform(0.75, 1.25))
            for queue in queues:
                try:
                    recovered = await store.recover_orphans(queue, timeout_ms)
                except StoreError:
                    continue
                if recovered:
                    logger.warning("returned %d job(s) of dead consumers to %r", recovered, queue)
                    self.telemetry.emit("consumer.recovered", queue=queue, consumer="", jobs=recovered)

    async def _abort_forever(self, store: RedisStore) -> None:
        """Abort the jobs that ``Flume.cancel`` names: heard on the abort channel, and read from the aborts it
        records at each (re)subscription, so an abort asked before this process listened (or while its link
        was down) is not lost. Where the client has no pub/sub (Redis Cluster), the record is read every
        ``ABORTS_POLL_S``."""
        outage = Outage("abort listener")
        if not hasattr(store.client, "pubsub"):
            while True:
                try:
                    self._abort_asked(await store.aborts_asked())
                    outage.ok()
                    await asyncio.sleep(ABORTS_POLL_S)
                except StoreError as exc:
                    await asyncio.sleep(outage.failed(exc))
        while True:
            pubsub = store.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(store.keys.abort_channel)
                self._abort_asked(await store.aborts_asked())  # after subscribing: nothing falls between
                outage.ok()
                async for message in pubsub.listen():
                    job_id = message["data"].decode("utf-8", errors="replace")
                    self._abort_asked([(job_id, time.time() + ABORT_KEPT_S)])
            except (RedisError, OSError, StoreError) as exc:
                await asyncio.sleep(outage.failed(exc))
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]

    def _abort_asked(self, asked: Sequence[tuple[str, float]]) -> None:
        """Abort the jobs of ``asked`` (job id, until when in epoch s) held here; each source keeps the others
        in case a fetch brings them."""
        for job_id, until_s in asked:
            # Not again for one aborted already: the record is read again at each subscription (each second
            # on Redis Cluster), and a sync job may run on long after it was told.
            found = [d for r in self.running for d in r.source.abort_asked(job_id, until_s) if not d.aborted]
            if found:
                logger.info("aborting job %s, as Flume.cancel asked", job_id)
                abort(found)

    async def _tick_forever(self) -> None:
        while True:
            self._loop_tick = time.monotonic()
            await asyncio.sleep(0.1)

    def loop_lag_s(self) -> float:
        return time.monotonic() - self._loop_tick


async def _all(waiters: Sequence[asyncio.Future[Any]]) -> None:
    await asyncio.gather(*waiters)


def _allowed_from_ses(limiter: RateLimiterConfig) -> int:
    from flume_rx.integrations import ses

    allowed = ses.rate_from_ses(ses.default_client(), limiter.from_ses or 1.0, period_s=limiter.period_s)
    return int(allowed)


HEARTBEAT_JOIN_S = 5.0
"""How long a stopping worker waits for a heartbeat under way (its call times out on its own later)."""


TASKS_END_S = 2.0
"""How long a stopping worker waits for its background tasks to end before it closes their connections."""


async def _ended(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait until they have ended; one that failed instead is logged, never left unretrieved.

    A single ``cancel()`` is not enough on Python 3.11: ``asyncio.wait_for``, which redis-py wraps around its
    socket writes, drops a cancellation that arrives as the write completes (fixed in 3.12), and the task goes
    on to its next loop. So the cancel is repeated until the task is over.
    """
    for task in tasks:
        task.add_done_callback(_log_failure)
    pending = {task for task in tasks if not task.done()}
    deadline = time.monotonic() + TASKS_END_S
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.05)
        if pending and time.monotonic() > deadline:
            logger.warning(
                "background task(s) %s did not end within %.0f s of being cancelled; stopping without them",
                ", ".join(sorted(task.get_name() for task in pending)),
                TASKS_END_S,
            )
            return


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (failure := task.exception()) is not None:
        logger.warning("background task %r failed: %s", task.get_name(), failure)


class _Heartbeat(threading.Thread):
    """Beats from a thread with its own connection, so a job that blocks the loop cannot make us look dead."""

    def __init__(self, runtime: WorkerRuntime, store: SyncStore, queues: Sequence[str]) -> None:
        super().__init__(name="flume-heartbeat", daemon=True)
        self.runtime = runtime
        self.store = store
        self.queues = list(queues)
        self.interval_s = max(0.05, runtime.config.orphan_timeout_s / 3)
        self._stopped = threading.Event()
        self._warned_blocked = False

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        outage = Outage("heartbeat")
        while not self._stopped.wait(self.interval_s):
            try:
                self.store.heartbeat(self.queues, self.runtime.consumer)
            except StoreError as exc:
                outage.failed(exc)  # the beat interval paces the retries; the backoff is not needed
                continue
            outage.ok()
            self.runtime.telemetry.emit("consumer.heartbeat", consumer=self.runtime.consumer)
            lag = self.runtime.loop_lag_s()
            if lag > LOOP_BLOCKED_WARNING_S and not self._warned_blocked:
                self._warned_blocked = True
                logger.warning(
                    "the event loop has been blocked for %.1f s: an async worker is doing blocking work; "
                    "make it a plain `def` so it runs in a thread, or await its I/O",
                    lag,
                )
            elif lag <= LOOP_BLOCKED_WARNING_S:
                self._warned_blocked = False


async def hear_cuts_forever(store: RedisStore, windows: Sequence[RedisTokenWindow]) -> None:
    """Hand each adaptive window the cuts other processes' refusals made (``penalize.lua`` publishes them), the
    moment they land: a grant this process holds from before a cut would start calls into a downstream whose
    limit is full, and its next take, which would have told it, comes only once that grant is used up."""
    if not hasattr(store.client, "pubsub"):
        logger.info(
            "this Redis client has no pub/sub (Redis Cluster): a refusal reaches other processes at their next take"
        )
        return
    by_channel: dict[str, list[RedisTokenWindow]] = {}
    for window in windows:
        by_channel.setdefault(window.cuts_channel, []).append(window)
    outage = Outage("adaptive rate listener")
    while True:
        pubsub = store.client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(*by_channel)
            outage.ok()
            async for message in pubsub.listen():
                channel = message["channel"]
                name = (
                    channel.decode("utf-8", errors="replace") if isinstance(channel, bytes) else str(channel)
                )
                for window in by_channel.get(name, ()):
                    window.heard_cut(message["data"])
        except (RedisError, OSError) as exc:
            await asyncio.sleep(outage.failed(exc))
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
