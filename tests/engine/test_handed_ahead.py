"""How many sync jobs the processor hands its stage threads beyond the stages: everything it holds."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from flume_rx.engine.processor import handed_ahead


def test_the_defaults_hand_the_threads_all_the_processor_holds_beyond_its_stages() -> None:
    assert handed_ahead(10, 100) == 90  # flume_rx's defaults
    assert handed_ahead(5, 100) == 95  # the seed's 5 stages
    assert handed_ahead(200, 500) == 300


def test_never_fewer_than_the_stages_ahead() -> None:
    assert handed_ahead(10, None) == 10  # no max_demand: the processor holds its stages
    assert handed_ahead(10, 12) == 10


@given(stages=st.integers(1, 500), max_demand=st.one_of(st.none(), st.integers(1, 5000)))
def test_stages_and_those_ahead_cover_all_the_processor_holds(stages: int, max_demand: int | None) -> None:
    held = stages if max_demand is None else max_demand
    ahead = handed_ahead(stages, max_demand)
    assert ahead >= stages
    assert stages + ahead >= held
