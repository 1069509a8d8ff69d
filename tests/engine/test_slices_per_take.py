"""How many holds one take of the shared limiter covers, from the pipeline's rate limiter."""

from __future__ import annotations

from flume_rx.engine.assemble import slices_per_take
from flume_rx.model.config import RateLimiterConfig
from flume_rx.operators import MOST_SLICES


def test_a_fixed_limit_takes_for_several_holds() -> None:
    assert slices_per_take(RateLimiterConfig(400, 1.0, "ses")) == MOST_SLICES > 1


def test_an_adaptive_limit_takes_for_one_hold_at_a_time() -> None:
    # Its rate is cut when the downstream refuses: holds reserved ahead at the old rate would send calls into a
    # downstream that is refusing them.
    assert slices_per_take(RateLimiterConfig(400, 1.0, "ses", adaptive=True)) == 1
