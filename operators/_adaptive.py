"""The adaptive rate: aim at the rate a limited downstream really accepts, and follow it both ways.

A token window in adaptive mode starts at its ``allowed`` and lowers its rate only when the downstream
refuses a call. On a refusal it measures what the downstream accepted over the last period (tokens started
minus calls refused, the delivery rate, as congestion control estimates a path's bandwidth) and takes that as
the new *ceiling*; the rate restarts a small ``margin`` below it. While nothing is refused it probes upward
along a cubic curve (as TCP CUBIC does): it regains the ceiling slowly, stays near it for a while, then
accelerates past it, so a downstream that did not change costs few refusals and one that was raised is found
within a few periods. It never exceeds ``allowed``.

These functions are the whole estimator, pure and in floats, so that the in-process window calls them and
``take_tokens.lua``/``penalize.lua`` compute the same numbers with the same formulas (a property test checks
they agree).

::

    rate  allowed ─────┐                                       .──── allowed
                       │ refusal: ceiling = accepted          /
          ceiling ·····│··········.─────────────────.········/·······
                       └─────────'  regains        plateau   probes past it
                       a margin below
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AdaptiveTuning:
    """How an adaptive window reacts to refusals and probes for more.

    Attributes:
        margin: after a refusal the rate restarts this share below the measured accepted rate, within
            (0, 1); 0.03 leaves room for the measurement's noise.
        probe: the cubic's growth coefficient per period cubed (> 0). The rate regains the ceiling after
            ``cbrt(margin / probe)`` periods and, from there, exceeds it by a share ``probe * p**3`` after ``p``
            more periods: with the defaults, 1.3 periods to regain it and 3.9 to reach 27% above it.
        most_cut: one refusal lowers the rate to no less than this share of the current rate, within (0, 1],
            however little was measured: a refusal seen with few recent starts (a shared downstream, a quiet
            window) is weak evidence, and further refusals keep cutting.
        headroom: None (the default) or, while the window is not used, the probe stops: it never goes above the
            ceiling or this share above the tokens in use, whichever is more (>= 0). In use means counted over
            the last period plus those being asked for: a take that finds the window full is use the window
            refused, and without it a window granting in blocks (5 tokens at a time under an 18/s rate) could
            never count more than 15, so its rate never rose. A rate nobody used is no evidence that the
            downstream takes it; without the cap, a pipeline held back by its workers lets the probe climb far
            past the downstream's rate, and the burst when the workers catch up is refused.
    """

    margin: float = 0.03
    probe: float = 0.015
    most_cut: float = 0.5
    headroom: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.margin < 1:
            raise ValueError(f"margin must be within (0, 1) (got {self.margin})")
        if not (self.probe > 0 and math.isfinite(self.probe)):
            raise ValueError(f"probe must be a positive number per period cubed (got {self.probe})")
        if not 0 < self.most_cut <= 1:
            raise ValueError(f"most_cut must be within (0, 1] (got {self.most_cut})")
        if self.headroom is not None and not (self.headroom >= 0 and math.isfinite(self.headroom)):
            raise ValueError(f"headroom must be a share >= 0 (got {self.headroom})")

    @property
    def plateau_periods(self) -> float:
        """Periods after a refusal at which the probe is back at the ceiling: ``cbrt(margin / probe)``."""
        return math.pow(self.margin / self.probe, 1.0 / 3.0)


def probed_rate(
    ceiling: float,
    elapsed_s: float,
    allowed: float,
    period_s: float,
    tuning: AdaptiveTuning,
    used: float | None = None,
) -> float:
    """The rate ``elapsed_s`` after the refusal that set ``ceiling``: the cubic, within [1, allowed], and with
    ``used`` (tokens counted over the last period, plus those a take asks for) no more than
    ``max(ceiling, used * (1 + headroom))``.

    >>> tuning = AdaptiveTuning(margin=0.03, probe=0.015)
    >>> round(probed_rate(300.0, 0.0, 400, 1.0, tuning), 6)  # a margin below the ceiling
    291.0
    >>> round(probed_rate(300.0, tuning.plateau_periods, 400, 1.0, tuning), 6)  # back at it
    300.0
    >>> probed_rate(300.0, 60.0, 400, 1.0, tuning)  # never above allowed
    400.0
    >>> capped = AdaptiveTuning(headroom=0.1)
    >>> round(probed_rate(300.0, 60.0, 400, 1.0, capped, used=320.0), 6)  # nor far above what is used
    352.0
    """
    periods = max(0.0, elapsed_s) / period_s
    offset = periods - tuning.plateau_periods
    rate = min(float(allowed), ceiling * (1.0 + tuning.probe * offset * offset * offset))
    if used is not None and tuning.headroom is not None:
        rate = min(rate, max(ceiling, used * (1.0 + tuning.headroom)))
    return max(1.0, rate)


def accepted_per_period(granted: int, refused: int, span_s: float, period_s: float) -> float | None:
    """What the downstream accepted, per period: tokens started over the last ``span_s`` minus the calls it
    refused over the same span, scaled to a period; None when the span is empty (nothing to measure).

    >>> accepted_per_period(310, 10, 1.0, 1.0)
    300.0
    >>> accepted_per_period(150, 0, 0.5, 1.0)
    300.0
    """
    if not span_s > 0:
        return None
    return max(0, granted - refused) * period_s / span_s


def ceiling_after_refusal(current: float, accepted: float | None, tuning: AdaptiveTuning) -> float:
    """The new ceiling after a refusal seen at rate ``current`` with ``accepted`` measured.

    The ceiling is the accepted rate, but a refusal never raises the rate (the probe restarts at most at the
    current rate), and never cuts it below ``most_cut`` of it at once; without a measurement the probe only
    restarts from the current rate.

    >>> tuning = AdaptiveTuning(margin=0.03, probe=0.015, most_cut=0.5)
    >>> ceiling_after_refusal(400.0, 300.0, tuning)
    300.0
    >>> ceiling_after_refusal(291.0, 360.0, tuning)  # a late refusal does not raise the rate
    300.0
    >>> ceiling_after_refusal(400.0, 20.0, tuning)  # weak evidence: halve at most
    200.0
    """
    restart = current / (1.0 - tuning.margin)
    if accepted is None:
        return max(1.0, current)
    return max(1.0, min(restart, max(accepted, current * tuning.most_cut)))


def recovery_s(ceiling: float, allowed: float, period_s: float, tuning: AdaptiveTuning) -> float:
    """Seconds from the refusal that set ``ceiling`` until the probe is back at ``allowed`` (after which the
    state no longer matters and may be forgotten).

    >>> tuning = AdaptiveTuning(margin=0.03, probe=0.015)
    >>> round(recovery_s(300.0, 400.0, 1.0, tuning), 3)
    4.071
    """
    above = max(0.0, float(allowed) / ceiling - 1.0)
    return (tuning.plateau_periods + math.pow(above / tuning.probe, 1.0 / 3.0)) * period_s
