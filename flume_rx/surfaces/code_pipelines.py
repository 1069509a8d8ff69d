"""Pipelines in code: ``Flume.source``, ``window``, ``keyed_window``, ``process`` and ``run``.

A concern of its own beside enqueueing and the admin verbs of :mod:`flume_rx.surfaces.client`: these build
reactivex graphs with the engine's builder (:mod:`flume_rx.engine.build`, the one builder config pipelines use
too) and run them in a :class:`~flume_rx.surfaces.runtime.WorkerRuntime`. ``Flume`` inherits them.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

from reactivex import Observable

from flume_rx import operators as fo
from flume_rx.engine.build import make_source, shared_window
from flume_rx.engine.processor import run_workers
from flume_rx.engine.source import BurstMode, Delivery, JobSource
from flume_rx.engine.threads import STAGE_THREAD_PREFIX, StageThreads
from flume_rx.model.config import FlumeConfig, PipelineConfig, RetryConfig, check_min_demand, queue_weights
from flume_rx.model.errors import ConfigError
from flume_rx.model.telemetry import Telemetry
from flume_rx.store import RedisKeyedWindow, RedisStore, RedisTokenWindow
from flume_rx.surfaces.runtime import WorkerRuntime, new_consumer_id


class CodePipelines:
    """Pipelines built in code on one namespace; the state is set by :class:`~flume_rx.Flume`'s constructor."""

    redis_url: str
    namespace: str
    max_payload_bytes: int
    telemetry: Telemetry
    _async_store: RedisStore | None
    _sources: list[tuple[JobSource, PipelineConfig]]
    _executors: list[StageThreads]
    _consumer: str | None

    @property
    def async_store(self) -> RedisStore:
        if self._async_store is None:
            self._async_store = RedisStore.from_url(self.redis_url, self.namespace)
        return self._async_store

    @property
    def consumer(self) -> str:
        if self._consumer is None:
            self._consumer = new_consumer_id()
        return self._consumer

    def source(
        self,
        queue: str | Sequence[str | tuple[str, int]],
        *,
        order: Literal["weighted", "strict"] = "weighted",
        max_demand: int = 100,
        retry: RetryConfig | None = None,
        window: fo.TokenWindow | None = None,
    ) -> fo.PullSource[Delivery]:
        """The request-n source of ``queue``: pipe operators onto it, end with :meth:`process`, then :meth:`run`.

        Given several queues, one source serves them all (config ``queues`` and ``order``), so
        ``max_demand`` and every operator after it apply to them as a whole:

        >>> urgent_first = flume.source([("mail/urgent", 10), ("mail/bulk", 1)])  # doctest: +SKIP

        Args:
            queue: one queue, or several of one group (``"mail/urgent"``, ``"mail/bulk"``), each a name
                (weight 1) or a ``(name, weight)`` pair.
            order: ``"weighted"``: while several queues have jobs, each gets its weight's share and none
                starves; ``"strict"``: the queues in the order listed, later ones only get what earlier
                ones cannot fill.
            max_demand: most jobs fetched and not yet settled in this process.
            retry: the durable retry policy of failed jobs (default: 5 retries, 1 s initial, 1 h cap).
            window: the token window, so a worker raising ``Throttled`` aims an adaptive shared rate at what
                the downstream accepts.

        Raises:
            ConfigError: the queues do not share one group, a weight is below 1, or ``order`` is unknown.
        """
        queues = () if isinstance(queue, str) else queue_weights(queue, order)
        name = queues[0].name if queues else str(queue)
        # The runtime heartbeats, promotes, recovers and hands back every queue of this config.
        config = PipelineConfig(
            name=name,
            queue=name,
            max_demand=max_demand,
            retry=retry or RetryConfig(),
            queues=queues,
            order=order,
        )
        source = make_source(
            config,
            store=self.async_store,
            consumer=self.consumer,
            telemetry=self.telemetry,
            window=window,
            max_payload_bytes=self.max_payload_bytes,
        )
        self._sources.append((source, config))
        return source.flowable

    def window(
        self,
        key: str,
        allowed: int,
        period_s: float = 1.0,
        *,
        hold_s: float = 0.02,
        adaptive: bool = False,
        burst: int | None = None,
    ) -> RedisTokenWindow:
        """A token window shared through Redis by every process that uses the same ``key``.

        Grants are paced at ``allowed / period_s``, at most ``burst`` at once (default a twentieth of the
        limit; 0 for the plain sliding window).
        """
        return shared_window(
            self.async_store, key, allowed, period_s, hold_s=hold_s, adaptive=adaptive, burst=burst
        )

    def keyed_window(
        self,
        name: str,
        allowed: int,
        period_s: float = 1.0,
        *,
        hold_s: float = 0.02,
        lag_s: float = 0.0,
    ) -> RedisKeyedWindow:
        """Per-key windows of ``allowed`` starts per ``period_s``, shared through Redis, for
        :func:`~flume_rx.throttle_by_key`; every process that uses the same ``name`` shares them.

        >>> from flume_rx import throttle_by_key, from_args  # doctest: +SKIP
        >>> per_domain = flume.keyed_window("per-domain", allowed=10)  # doctest: +SKIP
        >>> flume.source("mail").pipe(  # doctest: +SKIP
        ...     throttle_by_key(per_domain, key=from_args(lambda to, subject: to.partition("@")[2])),
        ...     flume.process())

        Args:
            lag_s: the most a released job may wait before it starts: the timeout of a batcher placed after
                the throttle (``fo.buffer_with_time_or_count(0.1, 50)`` needs ``lag_s=0.1``), so the limit
                holds for starts.
        """
        return RedisKeyedWindow(self.async_store, name, allowed, period_s, hold_s, lag_s=lag_s)

    def process(
        self,
        *,
        stages: int = 10,
        max_demand: int = 100,
        min_demand: int | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """The processor stage: runs each job's registered worker, at most ``stages`` at once.

        It holds up to ``max_demand`` jobs and fetches more once it holds ``min_demand`` (half of
        ``max_demand`` when None), so fetches come in batches whatever ``stages`` is; right after a throttle
        it holds only what its stages can start. The source's ``max_demand`` still caps unsettled jobs.

        Raises:
            ConfigError: ``stages`` or ``max_demand`` is below 1, or ``min_demand`` is not an integer from 0 to
                ``max_demand - 1``.
        """
        if stages < 1:
            raise ConfigError(
                f"process(stages=...) must be >= 1 (got {stages}); the most jobs running at once"
            )
        if max_demand < 1:
            raise ConfigError(
                f"process(max_demand=...) must be >= 1 (got {max_demand}); the most jobs it holds"
            )
        check_min_demand(min_demand, max_demand, "process(min_demand=...)")
        # Its own stage threads, as many as its stages: a thread is handed its next sync job while it runs one
        # (see run_workers), and another pipeline's jobs never hold its threads. They start with the first jobs.
        executor = StageThreads(stages, f"{STAGE_THREAD_PREFIX}-process{len(self._executors)}")
        self._executors.append(executor)
        return run_workers(
            stages=stages,
            executor=executor,
            max_demand=max_demand,
            min_demand=min_demand,
            timeout_s=timeout_s,
        )

    async def run(
        self, *graphs: Observable[Any], burst: bool | BurstMode = False, handle_signals: bool = True
    ) -> None:
        """Run pipelines built with :meth:`source` until SIGTERM, Ctrl-C or cancelled (or, with ``burst``, until
        no work is left).

        A stop is graceful, as for ``flume-rx worker``: no new fetches, unstarted jobs go back to the queue at
        once, running ones get ``shutdown_timeout``, and what still runs then goes back too. After SIGTERM or
        Ctrl-C, ``run`` returns; when its task is cancelled, it stops the same way and re-raises
        ``CancelledError``.

        Args:
            burst: True or ``"drained"``: stop once the queues, the due scheduled jobs, the retries (not yet
                due too) and every in-flight list are empty; ``"ready"``: once nothing is ready to run now.
            handle_signals: while it runs in the main thread, take SIGINT and SIGTERM as a graceful stop (the
                previous handlers come back after); False leaves signals to the application, which can cancel
                the task instead.
        """
        if not graphs:
            raise ConfigError("run() needs at least one pipeline built from flume.source(...)")
        if not self._sources:
            raise ConfigError("no source was made with flume.source(...); build the pipeline from one")
        if len(graphs) != len(self._sources):
            raise ConfigError(
                f"run() got {len(graphs)} pipeline(s) but {len(self._sources)} source(s) were made with "
                "flume.source(...); pass every pipeline built since the last run, each once, in the order "
                "their sources were made"
            )
        try:
            config = FlumeConfig(
                redis_url=self.redis_url,
                namespace=self.namespace,
                pipelines=tuple(c for _, c in self._sources),
                max_payload_bytes=self.max_payload_bytes,
            )
            runtime = WorkerRuntime(
                config,
                telemetry=self.telemetry,
                burst=burst,
                consumer_id=self.consumer,
                graphs=[(s, g) for (s, _), g in zip(self._sources, graphs, strict=True)],
            )
            for source, _ in self._sources:
                source.burst_mode = runtime.burst_mode
            with _stop_on_signals(runtime.stop) if handle_signals else contextlib.nullcontext():
                await runtime.run()
        finally:
            # Sources belong to the run that consumed them (or refused them); a later run builds new ones on a
            # new connection.
            self._sources = []
            if self._async_store is not None:
                await self._async_store.aclose()
                self._async_store = None


@contextlib.contextmanager
def _stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """SIGINT and SIGTERM call ``stop`` (on the running loop) while the block runs, as in ``flume-rx worker``;
    the handlers before it come back after. Outside the main thread signals are not ours to take."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    previous: dict[signal.Signals, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        before = signal.getsignal(signum)
        try:
            loop.add_signal_handler(signum, stop)
        except (NotImplementedError, RuntimeError, ValueError):  # a loop without signal support
            continue
        previous[signum] = before
    try:
        yield
    finally:
        for signum, before in previous.items():
            loop.remove_signal_handler(signum)
            signal.signal(signum, before if before is not None else signal.SIG_DFL)
