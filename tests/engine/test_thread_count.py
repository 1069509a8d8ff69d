"""The thread count: an estimate kept only when a trial finds it faster, every thread otherwise."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flume_rx.engine import thread_count
from flume_rx.engine.thread_count import ThreadCount, threads_needed


def _trial(
    count: ThreadCount, all_rate: float, candidate_rate: float, now: float = 10.0, begun: bool = False
) -> float:
    """Run one trial of both at these rates (calls a second); returns the time it ended."""
    finished = 0
    if not begun:
        count.update(now, finished)  # the trial of every thread begins
    assert count.trying and count.active == count.size
    now += thread_count.TRIAL_S + 1e-9
    finished += round(all_rate * thread_count.TRIAL_S)
    count.update(now, finished)  # the candidate's trial begins
    assert count.active == count.candidate
    now += thread_count.TRIAL_S + 1e-9
    finished += round(candidate_rate * thread_count.TRIAL_S)
    count.update(now, finished)
    return now


def test_a_candidate_faster_by_the_margin_is_kept_until_the_next_trial() -> None:
    count = ThreadCount(10)
    count.estimate(2)
    ended = _trial(count, all_rate=5_000, candidate_rate=8_000)
    assert count.active == count.chosen == 2
    count.update(ended + thread_count.KEEP_S / 2, 0)
    assert count.active == 2  # kept: no trial before KEEP_S


def test_a_candidate_not_faster_by_the_margin_leaves_every_thread() -> None:
    count = ThreadCount(10)
    count.estimate(1)
    _trial(count, all_rate=5_000, candidate_rate=5_200)
    assert count.active == count.chosen == 10


def _until_next_trial(count: ThreadCount, ended: float) -> float:
    """Move time on from ``ended`` in quarter seconds while the choice is kept; how long until a trial began."""
    waited = 0.25
    count.update(ended + waited, 0)
    while not count.trying:
        waited += 0.25
        count.update(ended + waited, 0)
    return waited


@pytest.mark.parametrize(
    ("candidate_rate", "chosen", "first_gap"),
    [(500, 10, 2 * thread_count.KEEP_S), (9_000, 1, thread_count.KEEP_S)],
    ids=["keeps-losing", "keeps-winning"],
)
def test_a_choice_each_trial_confirms_is_tried_less_and_less_often(
    candidate_rate: float, chosen: int, first_gap: float
) -> None:
    # A trial costs a window with every thread: a choice each trial confirms (every thread when the candidate
    # keeps losing, the candidate when it keeps winning) is tried half as often each time.
    count = ThreadCount(10)
    count.estimate(1)
    ended = _trial(count, all_rate=5_000, candidate_rate=candidate_rate)
    gaps = []
    for _ in range(8):
        waited = _until_next_trial(count, ended)
        gaps.append(waited)
        ended = _trial(count, all_rate=5_000, candidate_rate=candidate_rate, now=ended + waited, begun=True)
        assert count.active == count.chosen == chosen
    assert gaps[0] == first_gap
    assert gaps == sorted(gaps) and gaps[-1] >= 16 * gaps[0]
    assert gaps[-1] <= thread_count.KEEP_MOST_S + 0.25


def test_a_new_choice_is_tried_again_after_keep_s() -> None:
    count = ThreadCount(10)
    count.estimate(1)
    ended = _trial(count, all_rate=5_000, candidate_rate=500)  # lost: every thread, kept twice as long
    count.estimate(2)
    waited = _until_next_trial(count, ended)
    ended = _trial(count, all_rate=5_000, candidate_rate=9_000, now=ended + waited, begun=True)
    assert count.chosen == 2
    count.update(ended + thread_count.KEEP_S, 0)
    assert count.trying  # the new choice waited only KEEP_S for its next trial


def test_no_trial_while_the_estimate_is_every_thread() -> None:
    count = ThreadCount(4)
    count.estimate(9)
    count.update(100.0, 0)
    assert count.candidate == 4 and count.active == 4


def test_threads_needed_is_the_shortest_call_over_the_mean_cpu_time() -> None:
    assert threads_needed([100e-6] * 64, 64 * 50e-6) == 2  # one INCR: half of it waits on the reply
    assert threads_needed([20e-6] * 64, 64 * 20e-6) == 1  # no slack lost to the clocks
    assert threads_needed([1.05e-3] * 64, 64 * 20e-6) == 53  # time.sleep(0.001)


def test_threads_needed_counts_what_the_loop_spends_per_call() -> None:
    # One INCR to a local Redis: 60 us, half of it waiting. With the loop's fetch, hand-over and settle the
    # process spends 70 us of interpreter per call: one thread already keeps the lock busy.
    assert threads_needed([60e-6] * 64, 64 * 30e-6, 70e-6) == 1
    # The thread's own CPU still bounds it when the process figure is lower (a sample over an idle spell).
    assert threads_needed([100e-6] * 64, 64 * 50e-6, 10e-6) == 2
    assert threads_needed([1.05e-3] * 64, 64 * 20e-6, 60e-6) == 18  # time.sleep(0.001): still many threads


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(1, 16),
    steps=st.lists(
        st.tuples(st.integers(1, 40), st.floats(0.0, 0.2), st.integers(0, 2_000)),
        max_size=60,
    ),
)
def test_the_count_is_always_every_thread_the_candidate_or_the_last_choice(
    size: int, steps: list[tuple[int, float, int]]
) -> None:
    count = ThreadCount(size)
    now, finished = 0.0, 0
    for candidate, pause, calls in steps:
        count.estimate(candidate)
        now += pause
        finished += calls
        count.update(now, finished)
        assert 1 <= count.active <= size
        assert 1 <= count.chosen <= size
        assert count.trying or count.active == count.chosen
        assert count.chosen in (size, count.active) or count.trying
