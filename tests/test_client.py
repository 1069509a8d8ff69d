"""The client on its own: what Flume checks and builds before it ever talks to Redis.

The URL points at a port nothing listens on; every call here must fail or succeed without a round trip.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from typing import Any

import pytest

from flume_rx import Flume
from flume_rx.engine.priorities import WeightedSource
from flume_rx.model.errors import ConfigError
from flume_rx.surfaces.producer import Producer
from flume_rx.testing import FlumeTest

NOWHERE = "redis://127.0.0.1:9/0"  # the discard port: nothing answers


@pytest.fixture
def flume() -> Iterator[Flume]:
    client = Flume(NOWHERE, "unit")
    yield client
    client.close()


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (lambda f: f.enqueue("{q}", "W"), "queue must be a non-empty string without braces"),
        (lambda f: f.enqueue("q", ""), "worker must be the registered worker's name"),
        (lambda f: f.enqueue("q", "W", "not a list"), "args must be a list"),
        (lambda f: f.enqueue("q", "W", [], cost=-1), "cost must be an integer >= 0"),
        (lambda f: f.enqueue("q", "W", [], unique_key=""), "unique_key must be a non-empty string"),
        (lambda f: f.enqueue("q", "W", [], unique_key="k", unique_for=0), "unique_for must be a positive"),
        (
            lambda f: f.enqueue("q", "W", [], unique_key="k", unique_until="never"),
            "unique_until must be one of",
        ),
        (lambda f: f.enqueue_in("q", math.nan, "W"), "must be a finite number of seconds"),
        (lambda f: f.enqueue_at("q", math.inf, "W"), "must be a finite number of seconds"),
        (lambda f: f.bulk_enqueue("q", [("W", [])], unique_keys=["a", "b"]), "one key \\(or None\\) per job"),
    ],
)
def test_a_wrong_enqueue_is_refused_before_any_round_trip(flume: Flume, call: Any, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        call(flume)


def test_a_window_paces_at_a_twentieth_of_its_limit_unless_told(flume: Flume) -> None:
    assert flume.window("k", 400).burst == 20
    assert flume.window("k", 400, burst=7).burst == 7
    assert flume.window("k", 400, burst=0).burst == 0  # the plain sliding window


def test_a_source_over_several_queues_is_one_weighted_source(flume: Flume) -> None:
    flume.source([("mail/urgent", 3), "mail/bulk"], order="strict", max_demand=7)
    ((source, config),) = flume._sources
    assert isinstance(source, WeightedSource)
    assert (source.queues, source.weights, source.order, source.max_demand) == (
        ("mail/urgent", "mail/bulk"),
        (3, 1),
        "strict",
        7,
    )
    assert (config.queue, config.all_queues) == ("mail/urgent", ("mail/urgent", "mail/bulk"))


def test_queues_of_different_groups_cannot_share_a_source(flume: Flume) -> None:
    with pytest.raises(ConfigError):
        flume.source(["mail/urgent", "sms/bulk"])


def test_run_refuses_pipelines_that_do_not_match_the_sources_made(flume: Flume) -> None:
    """Before, run() paired pipelines with sources by position and dropped the extra ones silently."""
    first = flume.source("a").pipe(flume.process())
    flume.source("b")  # made, never piped into a pipeline
    with pytest.raises(ConfigError, match=r"run\(\) got 1 pipeline\(s\) but 2 source\(s\)"):
        asyncio.run(flume.run(first))


def test_run_needs_a_pipeline_and_a_source(flume: Flume) -> None:
    with pytest.raises(ConfigError, match="at least one pipeline"):
        asyncio.run(flume.run())


@pytest.mark.parametrize("verb", ["enqueue", "bulk_enqueue", "enqueue_in", "enqueue_at"])
def test_the_test_stand_in_enqueues_through_the_same_code(verb: str) -> None:
    """FlumeTest and Flume share one enqueue API (flume_rx.surfaces.producer), so they accept and refuse alike."""
    assert getattr(Flume, verb) is getattr(Producer, verb) is getattr(FlumeTest, verb)


def test_the_test_stand_in_refuses_what_flume_refuses() -> None:
    with FlumeTest() as fake, pytest.raises(ConfigError, match="unique_until must be one of"):
        fake.enqueue("q", "W", [], unique_key="k", unique_until="never")  # type: ignore[arg-type]
