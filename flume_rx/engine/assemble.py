"""Assembly of a configured pipeline: the reactivex graph from its source to the outcomes of its jobs."""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from reactivex import Observable
from reactivex.scheduler.eventloop import AsyncIOScheduler

from flume_rx import operators as fo
from flume_rx.engine.build import pacing_of
from flume_rx.engine.keyed import key_of
from flume_rx.engine.processor import lease_to, run_workers
from flume_rx.engine.source import Delivery, JobSource
from flume_rx.model.config import PipelineConfig, RateLimiterConfig, pacing_burst
from flume_rx.model.job import Job
from flume_rx.model.registry import load_callable
from flume_rx.store.windows import RedisKeyedWindow


def cost_of(cost_path: str | None) -> Callable[[Any], int]:
    """The throttle cost of an item (a Delivery or a batch of them): the job's own cost, or a named function."""
    job_cost: Callable[[Job], int]
    if cost_path is None:
        job_cost = _own_cost
    else:
        fn = load_callable(cost_path)
        job_cost = functools.partial(_cost_from_args, fn)

    def cost(item: Delivery | list[Delivery]) -> int:
        if isinstance(item, list):
            return sum(job_cost(d.job) for d in item)
        return job_cost(item.job)

    return cost


def _own_cost(job: Job) -> int:
    return job.cost


def _cost_from_args(fn: Callable[..., int], job: Job) -> int:
    return max(0, int(fn(*job.args)))


def slices_per_take(limiter: RateLimiterConfig) -> int:
    """How many holds one take of the shared limiter may cover (the throttle's ``slices``).

    Several: five stages start only a few jobs in a hold, and a take for each hold cost the limiter 0.12 calls
    a job (docs/performance.md, "Ninth round"). One when the rate follows the downstream's refusals: holds
    reserved ahead at a rate being cut send calls into a downstream that refuses them (with several,
    ``benchmarks.rate_limit --mode adaptive`` saw up to 46 refusals after a change and 88.6% of the
    downstream's rate used, against 24 and 92.8% with one).
    """
    return 1 if limiter.adaptive else fo.MOST_SLICES


def grant_batch(allowed: int, stages: int, burst: int | None) -> int:
    """The fewest tokens worth one Redis call: the window's pacing burst (:func:`pacing_burst`'s default when
    pacing is off), at most what the stages can start.

    With one token per call, a full window answers every take with a one-token reservation and the limiter
    costs a Redis call per job; twenty calls per period keep it near 0.05 calls per job. The stages bound keeps
    a grant startable at once (within the grant's hold), and the burst bound keeps a configured burst in force
    (the window grants max(burst, min_tokens) at once).
    """
    return max(1, min(stages, burst or pacing_burst(allowed, None) or 1))


def assemble(
    config: PipelineConfig,
    source: JobSource,
    *,
    executor: Executor,
    scheduler: AsyncIOScheduler,
) -> Observable[fo.Outcome[Any, Any]]:
    """The reactivex graph of a configured pipeline, from its source to the outcomes of its jobs."""
    steps: list[Callable[[Any], Any]] = [load_callable(path) for path in config.operators]
    telemetry = source.telemetry
    key_from = None if config.rate_limiter is None else config.rate_limiter.key_from
    if config.rate_limiter is not None and key_from is not None:
        # Per-key tokens are taken per job, before the batcher, since a batch can mix keys. A released job
        # then starts at most batcher.timeout later: the batcher asks the throttle only for items of
        # batches the processor requested (one per free stage), withdraws what a batch closed by its timer
        # no longer has room for, so every item it receives has a requested batch that leaves (and starts
        # at once) within its timeout. Counting each grant that much longer keeps every key's window exact.
        limiter = config.rate_limiter
        keyed = RedisKeyedWindow(
            source.store,
            limiter.key,
            limiter.allowed,
            limiter.period_s,
            limiter.hold_s,
            lag_s=0.0 if config.batcher is None else config.batcher.timeout_s,
        )
        steps.append(fo.throttle_by_key(keyed, key=key_of(key_from), cost=cost_of(limiter.cost)))
    if config.batcher is not None:
        steps.append(
            fo.buffer_with_time_or_count(
                config.batcher.timeout_s,
                config.batcher.size,
                scheduler=scheduler,
                on_flush=lambda size, trigger: telemetry.emit(
                    "batch.flushed", queue=config.queue, size=size, trigger=trigger
                ),
            )
        )
    if key_from is None and source.window is not None and config.rate_limiter is not None:
        window = source.window
        key = config.rate_limiter.key
        watch = source.rate_watch

        def on_throttle_event(kind: str, fields: dict[str, Any]) -> None:
            rate = watch.seen() if watch is not None and kind == "granted" else window.current_rate()
            telemetry.emit(f"throttle.{kind}", key=key, rate=rate, **fields)

        # The throttle sits right before the processor: tokens are taken when a job can start at once,
        # so the shared window counts starts, not fetches.
        steps.append(
            fo.throttle(
                window,
                cost=cost_of(config.rate_limiter.cost),
                min_tokens=grant_batch(window.allowed, config.processor.stages, pacing_of(window)),
                # Holds fetched jobs while it waits, so a take can cover more than the free stages: with
                # few stages, one take per free stage cost the limiter a call every few jobs.
                prefetch=config.max_demand,
                slices=slices_per_take(config.rate_limiter),
                # A job released at the end of a grant's hold runs its first line a thread switch later:
                # release within the first three quarters, so its start still falls in the hold.
                lag_s=config.rate_limiter.hold_s / 4,
                scheduler=scheduler,
                on_event=on_throttle_event,
                # Behind a CPU-starved loop or a thread that wakes late, a job's first line may still come
                # after the hold: it is looked at there, and handed back for a new token if so.
                on_release=lease_to,
            )
        )
    steps.append(
        run_workers(
            stages=config.processor.stages,
            executor=executor,
            max_demand=config.max_demand,
            min_demand=config.min_demand,
            timeout_s=config.processor.timeout_s,
            scheduler=scheduler,
        )
    )
    result: Observable[fo.Outcome[Any, Any]] = source.flowable.pipe(*steps)
    return result
