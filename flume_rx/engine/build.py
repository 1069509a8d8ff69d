"""One builder for every pipeline, written in a config file or in code: its source and its shared window.

The runtime (config pipelines) and :class:`~flume_rx.surfaces.client.Flume` (``flume.source(...)``,
``flume.window(...)``) both build through these functions, so a source gets the same fields and a window the
same pacing whichever way the pipeline was written; :func:`~flume_rx.engine.assemble.assemble` then adds the
operators a config names.
"""

from __future__ import annotations

from typing import Any

from flume_rx import operators as fo
from flume_rx.engine.priorities import WeightedSource
from flume_rx.engine.source import BurstMode, JobSource
from flume_rx.model.config import PipelineConfig, pacing_burst
from flume_rx.model.telemetry import Telemetry
from flume_rx.store import RedisStore, RedisTokenWindow


def shared_window(
    store: RedisStore,
    key: str,
    allowed: int,
    period_s: float,
    *,
    hold_s: float = 0.02,
    adaptive: bool = False,
    burst: int | None = None,
) -> RedisTokenWindow:
    """The window ``key`` shared through Redis, paced at ``allowed / period_s`` with at most ``burst`` tokens at
    once (None: a twentieth of ``allowed``; 0: no pacing, the plain sliding window).

    This is the one place the pacing default applies; :func:`pacing_of` reads it back.
    """
    return RedisTokenWindow(
        store,
        key,
        allowed,
        period_s,
        hold_s=hold_s,
        adaptive=adaptive,
        burst=pacing_burst(allowed, burst),
    )


def pacing_of(window: fo.TokenWindow) -> int | None:
    """The most tokens ``window`` grants at once while pacing; None when it does not pace."""
    burst: int | None = getattr(window, "burst", None)
    return burst or None


def make_source(
    config: PipelineConfig,
    *,
    store: RedisStore,
    consumer: str,
    telemetry: Telemetry,
    window: fo.TokenWindow | None,
    max_payload_bytes: int,
    block_s: float = 1.0,
    burst_mode: BurstMode | None = None,
) -> JobSource:
    """The source of the pipeline ``config``: a :class:`~flume_rx.engine.priorities.WeightedSource` when it serves
    several queues, else a :class:`~flume_rx.engine.source.JobSource`."""
    common: dict[str, Any] = {
        "store": store,
        "queue": config.queue,
        "consumer": consumer,
        "max_demand": config.max_demand,
        # What the processor asks for at its low mark: a fetch waits until the credits for all of it are free.
        "min_fetch": config.max_demand
        - (config.max_demand // 2 if config.min_demand is None else config.min_demand),
        "telemetry": telemetry,
        "retry": config.retry,
        "window": window,
        # The name its rate is reported under: the config's limiter, or the shared window given in code.
        "window_key": (
            config.rate_limiter.key
            if config.rate_limiter is not None
            else window.key
            if isinstance(window, RedisTokenWindow)
            else ""
        ),
        "block_s": block_s,
        "max_payload_bytes": max_payload_bytes,
        "burst_mode": burst_mode,
    }
    if config.queues:
        return WeightedSource(
            **common,
            queues=config.all_queues,
            weights=tuple(q.weight for q in config.queues),
            order=config.order,
        )
    return JobSource(**common)
