"""flume_rx.testing: inline and fake modes, with no Redis at all."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flume_rx import EncodeError, UnknownWorker, worker
from flume_rx.model.errors import ConfigError
from flume_rx.model.registry import unregister
from flume_rx.testing import FlumeTest

NAMES = ("TSync", "TAsync", "TBatch", "TFails", "TChain")


@pytest.fixture
def seen() -> Iterator[list[Any]]:
    calls: list[Any] = []

    @worker("TSync")
    def sync_job(user_id: int, template: str) -> str:
        calls.append(("sync", user_id, template))
        return f"sent {template}"

    @worker("TAsync")
    async def async_job(values: list[int]) -> int:
        await asyncio.sleep(0)
        calls.append(("async", values))
        return sum(values)

    @worker("TBatch", batch=True)
    def batch_job(items: list[list[Any]]) -> None:
        calls.append(("batch", items))

    @worker("TFails")
    def failing_job() -> None:
        raise RuntimeError("smtp down")

    yield calls
    for name in NAMES:
        unregister(name)


def test_inline_runs_sync_async_and_batch_workers_at_enqueue(seen: list[Any]) -> None:
    flume = FlumeTest("inline")
    flume.enqueue("email", "TSync", [42, "welcome"])
    flume.enqueue("email", "TAsync", [(1, 2, 3)])
    flume.enqueue("email", "TBatch", [7])
    # Tuples come back as lists, exactly as a worker process would decode them.
    assert seen == [("sync", 42, "welcome"), ("async", [1, 2, 3]), ("batch", [[7]])]
    assert [r.result for r in flume.runs] == ["sent welcome", 6, None]
    assert flume.jobs() == []


def test_inline_reraises_the_worker_error_unless_told_not_to(seen: list[Any]) -> None:
    with pytest.raises(RuntimeError, match="smtp down"):
        FlumeTest("inline").enqueue("email", "TFails")
    quiet = FlumeTest("inline", raise_errors=False)
    quiet.enqueue("email", "TFails")
    assert not quiet.runs[0].ok and isinstance(quiet.runs[0].error, RuntimeError)


def test_inline_async_worker_from_inside_a_running_loop(seen: list[Any]) -> None:
    async def app() -> None:
        FlumeTest("inline").enqueue("q", "TAsync", [[4, 5]])

    asyncio.run(app())
    assert seen == [("async", [4, 5])]


def test_fake_records_then_drain_runs_in_order(seen: list[Any]) -> None:
    flume = FlumeTest()
    first = flume.enqueue("email", "TSync", [1, "a"])
    flume.bulk_enqueue("email", [("TSync", [2, "b"]), ("TAsync", [[1]])])
    assert seen == []
    assert flume.assert_enqueued("TSync", [1, "a"], queue="email").id == first
    flume.assert_enqueued("TSync", count=2)
    flume.assert_not_enqueued("TFails")
    assert [j.worker for j in flume.jobs()] == ["TSync", "TSync", "TAsync"]
    runs = flume.drain()
    assert [r.ok for r in runs] == [True, True, True]
    assert seen == [("sync", 1, "a"), ("sync", 2, "b"), ("async", [1])]
    assert flume.jobs() == []
    assert flume.drain() == []


def test_assertion_messages_list_what_was_enqueued(seen: list[Any]) -> None:
    flume = FlumeTest()
    flume.enqueue("email", "TSync", [1, "a"])
    with pytest.raises(AssertionError, match=r"found 0; enqueued: TSync\(1, 'a'\)"):
        flume.assert_enqueued("TSync", [2, "a"])
    with pytest.raises(AssertionError, match="expected 2 job"):
        flume.assert_enqueued("TSync", count=2)
    with pytest.raises(AssertionError, match="expected no job"):
        flume.assert_not_enqueued("TSync")


def test_drain_runs_jobs_enqueued_by_workers_and_filters_by_queue(seen: list[Any]) -> None:
    flume = FlumeTest()

    @worker("TChain")
    def chain(n: int) -> None:
        seen.append(("chain", n))
        if n > 0:
            flume.enqueue("chain", "TChain", [n - 1])

    flume.enqueue("chain", "TChain", [3])
    flume.enqueue("other", "TSync", [9, "x"])
    flume.drain("chain")
    assert seen == [("chain", 3), ("chain", 2), ("chain", 1), ("chain", 0)]
    assert [j.queue for j in flume.jobs()] == ["other"]


def test_drain_guards_against_endless_self_enqueueing(seen: list[Any]) -> None:
    flume = FlumeTest()

    @worker("TChain")
    def forever() -> None:
        flume.enqueue("q", "TChain")

    flume.enqueue("q", "TChain")
    with pytest.raises(RuntimeError, match="max_jobs"):
        flume.drain(max_jobs=50)


def test_drain_stops_at_the_first_failure_or_collects_them(seen: list[Any]) -> None:
    flume = FlumeTest()
    flume.enqueue("q", "TFails")
    flume.enqueue("q", "TSync", [1, "a"])
    with pytest.raises(RuntimeError):
        flume.drain()
    assert len(flume.jobs()) == 1  # the second waits for the next drain
    runs = flume.drain(raise_errors=False)
    assert [r.ok for r in runs] == [True]
    flume.enqueue("q", "Nobody")
    (run,) = flume.drain(raise_errors=False)
    assert isinstance(run.error, UnknownWorker)


def test_scheduled_jobs_drain_by_due_time(seen: list[Any]) -> None:
    now = [1000.0]
    flume = FlumeTest(clock=lambda: now[0])
    flume.enqueue_in("q", 60, "TSync", [2, "later"])
    flume.enqueue_at("q", 1030.0, "TSync", [1, "sooner"])
    flume.enqueue("q", "TSync", [0, "now"])
    flume.drain(until=1000.0)
    assert seen == [("sync", 0, "now")]
    flume.drain(until=1030.0)
    flume.drain()
    assert [s[2] for s in seen] == ["now", "sooner", "later"]


def test_unique_key_returns_the_waiting_job(seen: list[Any]) -> None:
    flume = FlumeTest()
    first = flume.enqueue("q", "TSync", [1, "a"], unique_key="welcome:1", unique_for=60)
    assert flume.enqueue("q", "TSync", [1, "a"], unique_key="welcome:1") == first
    assert len(flume.jobs()) == 1
    flume.drain()
    assert flume.enqueue("q", "TSync", [1, "a"], unique_key="welcome:1") != first


def test_unique_until_expiry_holds_the_key_for_unique_for_on_the_clock(seen: list[Any]) -> None:
    now = [1000.0]
    flume = FlumeTest(clock=lambda: now[0])
    first = flume.enqueue("q", "TSync", [1, "a"], unique_key="k", unique_for=60, unique_until="expiry")
    flume.drain()
    assert flume.enqueue("q", "TSync", [1, "a"], unique_key="k", unique_until="expiry") == first
    now[0] += 61
    assert flume.enqueue("q", "TSync", [1, "a"], unique_key="k", unique_until="expiry") != first
    assert flume.jobs()[-1].unique_until == "expiry"


def test_bulk_enqueue_takes_unique_keys_as_flume_does(seen: list[Any]) -> None:
    flume = FlumeTest()
    ids = flume.bulk_enqueue(
        "q", [("TSync", [1, "a"]), ("TSync", [1, "a"]), ("TSync", [2, "b"])], unique_keys=["k", "k", None]
    )
    assert ids[0] == ids[1] != ids[2]
    assert len(flume.jobs()) == 2
    with pytest.raises(ConfigError, match="one key"):
        flume.bulk_enqueue("q", [("TSync", [1, "a"])], unique_keys=["k", "k"])
    with pytest.raises(ConfigError, match="unique_until"):
        flume.enqueue("q", "TSync", [1, "a"], unique_key="k", unique_until="never")  # type: ignore[arg-type]


def test_validation_matches_production(seen: list[Any]) -> None:
    flume = FlumeTest("inline")
    with pytest.raises(EncodeError):
        flume.enqueue("q", "TSync", [object(), "a"])
    with pytest.raises(EncodeError, match="over the limit"):
        FlumeTest(max_payload_bytes=100).enqueue("q", "TSync", [1, "x" * 200])
    with pytest.raises(ConfigError):
        flume.enqueue("{bad}", "TSync", [1, "a"])
    with pytest.raises(ConfigError):
        flume.bulk_enqueue("q", [("TSync", [1, "a"]), ("TSync", "not a list")])
    assert seen == [] and flume.enqueued == []  # a bad bulk adds none
    with pytest.raises(ValueError, match="mode"):
        FlumeTest("eager")  # type: ignore[arg-type]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=10,
)


@given(st.lists(json_values, max_size=5))
def test_workers_see_the_args_a_worker_process_would_decode(args: list[Any]) -> None:
    flume = FlumeTest()
    flume.enqueue("q", "Anything", args)
    flume.assert_enqueued("Anything", args)
    assert flume.jobs()[0].args == args
