"""How many stage threads take calls: an estimate from the calls' timings, kept only when it drains faster.

The threads share one interpreter lock. For a job that waits most of its time (an HTTP call, ``time.sleep``)
every thread is worth having; for a short job that holds the lock for much of its time (one redis-py
``INCR`` to a local Redis), each thread beyond what keeps the lock busy only adds hand-overs of it, a wake-up
and a context switch on both sides at every reply (docs/performance.md).

No timing tells those apart for sure: a call that queued for the lock looks like one that waited on a reply
while other threads ran, so any estimate of how many threads help can be wrong, and by a lot for a mix of
quick and slow calls (one thread for a mix of 10 us and 3 ms calls drained a tenth of what ten threads did).
So the estimate (:func:`threads_needed`) is only a candidate: every thread and the candidate are each tried
for a window, and the candidate is kept only when it finished calls faster by ``MARGIN``. Otherwise every
thread takes calls, as if nothing were estimated. The trials come again after ``KEEP_S``, since jobs change,
and less and less often while they confirm the choice: each trial costs a window with every thread, which for
short calls drains at half the rate.
When the jobs come slower than the threads finish them (few jobs queued, or a rate limit), both finish what
comes, the candidate is not faster, and every thread is kept. A window is not dropped when a thread finds no
call waiting: with too many threads on short calls the loop, queueing for the lock too, hands calls over late,
and the threads running dry is the very cost the trial measures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

TRIAL_S = 0.05
"""How long each of the two is tried: long enough for a few hundred short calls."""

KEEP_S = 1.0
"""How long a new choice is kept before the two are tried again; doubled after each trial that kept the choice
as it was (the candidate lost again, or won again), up to ``KEEP_MOST_S``, so steady jobs pay for few trials."""

KEEP_MOST_S = 32.0

MARGIN = 1.1
"""How much faster the candidate must be to be kept: a tie goes to every thread, the safe choice."""


def threads_needed(walls: list[float], cpu_s: float, process_cpu_per_call_s: float = 0.0) -> int:
    """A candidate: the shortest of these calls over the interpreter time each call costs (at least one).

    A call holds the interpreter lock for about its CPU time and lets go of it while it waits; the shortest
    call of a sample is the one least stretched by queueing for the lock. But the lock also serves the loop
    that fetches, hands over and settles each call: ``process_cpu_per_call_s`` (the process's CPU over the
    calls it finished, every thread and the loop included) says what one call costs the lock in all. That
    many threads keep it busy with calls like these; each thread beyond only queues for it. Calls of
    different kinds fool the estimate, which the trial catches.

    >>> threads_needed([100e-6] * 64, 64 * 50e-6)  # half of each call waits on a reply
    2
    >>> threads_needed([100e-6] * 64, 64 * 50e-6, 100e-6)  # ... but the loop's share fills the wait
    1
    >>> threads_needed([1.05e-3] * 64, 64 * 20e-6, 60e-6)  # time.sleep(0.001)
    18
    """
    per_call = max(cpu_s / len(walls), process_cpu_per_call_s, 1e-9)
    # A tenth of slack: CPU clocks and wall clocks disagree by a little, and 1.01 means one thread, not two.
    return max(1, math.ceil(min(walls) / per_call - 0.1))


@dataclass
class ThreadCount:
    """The trials' state: call :meth:`update` after calls finish; :attr:`active` is how many take calls.

    ``finished`` is the count of calls finished so far.
    """

    size: int
    active: int = field(init=False)
    candidate: int = field(init=False)
    chosen: int = field(init=False)
    # The trials' own state, not arguments: the phase is "keep" (active is chosen), "all" (every thread on
    # trial) or "candidate"; it began at _since (the first trial starts with the first candidate).
    _phase: str = field(default="keep", init=False)
    _since: float = field(default=float("-inf"), init=False)
    _finished_at_start: int = field(default=0, init=False)
    _all_rate: float = field(default=0.0, init=False)
    _keep_s: float = field(default=KEEP_S, init=False)

    def __post_init__(self) -> None:
        self.active = self.candidate = self.chosen = self.size

    @property
    def trying(self) -> bool:
        """Whether a trial runs (``active`` is then what is tried), else ``active`` is ``chosen``."""
        return self._phase != "keep"

    def estimate(self, candidate: int) -> None:
        """A thread's newest estimate of how many threads help."""
        self.candidate = max(1, min(self.size, candidate))

    def update(self, now: float, finished: int) -> None:
        """Move the trials on; ``active`` may change."""
        if self._phase == "keep":
            if now - self._since >= self._keep_s and self.candidate < self.size:
                self._start("all", self.size, now, finished)
            return
        elapsed = now - self._since
        if elapsed < TRIAL_S:
            return
        rate = (finished - self._finished_at_start) / elapsed
        if self._phase == "all":
            self._all_rate = rate
            self._start("candidate", self.candidate, now, finished)
        elif rate > self._all_rate * MARGIN:
            self._keep(self.active, now)
        else:
            self._keep(self.size, now)

    def _start(self, phase: str, active: int, now: float, finished: int) -> None:
        self._phase, self.active, self._since, self._finished_at_start = phase, active, now, finished

    def _keep(self, chosen: int, now: float) -> None:
        # A trial that left the choice as it was is kept twice as long; a new choice only KEEP_S.
        self._keep_s = min(KEEP_MOST_S, self._keep_s * 2) if chosen == self.chosen else KEEP_S
        self._phase, self._since = "keep", now
        self.active = self.chosen = chosen
