"""Telemetry: the bus itself, then the events a real pipeline run emits, kind by kind, in order."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from flume_rx import Flume, worker
from flume_rx.model import config as config_module
from flume_rx.model.registry import unregister
from flume_rx.model.telemetry import EVENT_NAMES, Event, Telemetry
from flume_rx.store.keys import Keys
from flume_rx.surfaces.runtime import WorkerRuntime

QUEUE = "tq"

# ------------------------------------------------------------------------------------------------ the bus


def test_attach_rejects_an_unknown_name_and_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown telemetry event 'job\.exploded'.*job\.succeeded"):
        Telemetry().attach(["job.exploded"], lambda event: None)


def test_handlers_get_their_names_only_and_stop_after_detach() -> None:
    telemetry = Telemetry()
    got: list[str] = []
    detach = telemetry.attach(["job.succeeded", "job.dead"], lambda event: got.append(event.name))
    everything: list[str] = []
    telemetry.attach("*", lambda event: everything.append(event.name))

    telemetry.emit("job.succeeded", queue="q")
    telemetry.emit("job.failed", queue="q")
    detach()
    telemetry.emit("job.dead", queue="q")

    assert got == ["job.succeeded"]
    assert everything == ["job.succeeded", "job.failed", "job.dead"]


def test_events_is_an_observable_to_pipe_like_any_stream() -> None:
    from reactivex import operators as ops

    telemetry = Telemetry()
    durations: list[float] = []

    def is_success(event: Event) -> bool:
        return event.name == "job.succeeded"

    def duration(event: Event) -> float:
        return float(event.fields["duration_ms"])

    subscription = telemetry.events.pipe(ops.filter(is_success), ops.map(duration)).subscribe(
        durations.append
    )
    telemetry.emit("job.succeeded", duration_ms=3.0)
    telemetry.emit("job.started", wait_ms=1.0)
    subscription.dispose()
    telemetry.emit("job.succeeded", duration_ms=4.0)
    assert durations == [3.0]


def test_a_broken_handler_does_not_stop_the_others_or_the_emitter(caplog: pytest.LogCaptureFixture) -> None:
    telemetry = Telemetry()
    got: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("handler bug")

    telemetry.attach("job.succeeded", broken)
    telemetry.attach("job.succeeded", got.append)
    telemetry.emit("job.succeeded", queue="q")
    assert len(got) == 1
    assert "handler bug" in caplog.text


def test_nobody_listening_means_inactive_and_no_event_is_built() -> None:
    telemetry = Telemetry()
    assert not telemetry.active
    telemetry.emit("job.succeeded", queue="q")  # nothing to call, nothing raised
    detach = telemetry.attach("*", lambda event: None)
    assert telemetry.active
    detach()
    assert not telemetry.active


# --------------------------------------------------------------------------------- events of a real run


@pytest.fixture
def recorder() -> Iterator[tuple[Telemetry, list[Event]]]:
    telemetry = Telemetry()
    events: list[Event] = []
    lock = threading.Lock()

    def record(event: Event) -> None:
        with lock:
            events.append(event)

    telemetry.attach("*", record)
    yield telemetry, events


@pytest.fixture
def register() -> Iterator[Callable[..., None]]:
    names: list[str] = []

    def add(name: str, fn: Any, *, batch: bool = False) -> None:
        worker(name, batch=batch)(fn)
        names.append(name)

    yield add
    for name in names:
        unregister(name)


def _config(redis_url: str, **pipeline: Any) -> config_module.FlumeConfig:
    table: dict[str, Any] = {"queue": QUEUE, "max_demand": 20, "processor": {"stages": 4}}
    table.update(pipeline)
    return config_module.parse(
        {
            "redis_url": redis_url,
            "namespace": "tel",
            "orphan_timeout": 600,
            "shutdown_timeout": 2000,
            "pipelines": {"main": table},
        }
    )


def _run(runtime: WorkerRuntime, until: Callable[[], bool] | None = None, timeout_s: float = 30.0) -> None:
    async def main() -> None:
        task = asyncio.create_task(runtime.run())
        if until is not None:
            deadline = time.monotonic() + timeout_s
            while not until() and time.monotonic() < deadline and not task.done():
                await asyncio.sleep(0.02)
            runtime.stop()
        await asyncio.wait_for(task, timeout_s)

    asyncio.run(main())


def _named(events: list[Event], *names: str) -> list[Event]:
    return [e for e in events if e.name in names]


def _of_job(events: list[Event], job_id: str) -> list[str]:
    return [e.name for e in events if e.fields.get("job_id") == job_id]


def test_a_successful_run_emits_enqueued_fetched_started_succeeded_between_joined_and_left(
    redis_url: str, recorder: tuple[Telemetry, list[Event]], register: Callable[..., None]
) -> None:
    telemetry, events = recorder

    async def ok(n: int) -> None:
        await asyncio.sleep(0)

    register("TelOk", ok)
    flume = Flume(redis_url, "tel", telemetry=telemetry)
    ids = flume.bulk_enqueue(QUEUE, [("TelOk", [i]) for i in range(5)])

    _run(WorkerRuntime(_config(redis_url), telemetry=telemetry, burst=True))

    names = [e.name for e in events]
    assert names[0] == "job.enqueued" and events[0].fields == {"queue": QUEUE, "count": 5}
    assert names[1] == "consumer.joined" and events[1].fields["queues"] == [QUEUE]
    assert names[-1] == "consumer.left" and events[-1].fields["returned"] == 0
    assert sum(e.fields["count"] for e in _named(events, "job.fetched")) == 5
    first_fetch = names.index("job.fetched")
    for job_id in ids:
        assert _of_job(events, job_id) == ["job.started", "job.succeeded"]
        started = next(e for e in events if e.name == "job.started" and e.fields["job_id"] == job_id)
        assert events.index(started) > first_fetch
        assert started.fields["attempt"] == 0 and started.fields["wait_ms"] >= 0
    for done in _named(events, "job.succeeded"):
        assert (
            done.fields["queue"] == QUEUE
            and done.fields["worker"] == "TelOk"
            and done.fields["duration_ms"] >= 0
        )


def test_a_failing_job_emits_failed_retried_then_failed_dead(
    redis_url: str, recorder: tuple[Telemetry, list[Event]], register: Callable[..., None]
) -> None:
    telemetry, events = recorder

    async def fails() -> None:
        raise ValueError("no luck")

    register("TelFails", fails)
    flume = Flume(redis_url, "tel")
    job_id = flume.enqueue(QUEUE, "TelFails")
    config = _config(redis_url, retry={"max_retries": 1, "backoff_initial": 10, "backoff_max": 20})

    _run(WorkerRuntime(config, telemetry=telemetry), until=lambda: flume.stats([QUEUE])[QUEUE]["dead"] == 1)

    assert _of_job(events, job_id) == [
        "job.started",
        "job.failed",
        "job.retried",
        "job.started",
        "job.failed",
        "job.dead",
    ]
    failed = _named(events, "job.failed")
    assert [e.fields["attempt"] for e in failed] == [0, 1]
    assert failed[0].fields["error"] == "ValueError: no luck"
    (retried,) = _named(events, "job.retried")
    assert retried.fields["attempt"] == 1 and 0 <= retried.fields["delay_ms"] <= 20
    (dead,) = _named(events, "job.dead")
    assert dead.fields["reason"] == "ValueError: no luck" and dead.fields["worker"] == "TelFails"


def test_batches_are_flushed_by_count_and_then_by_time(
    redis_url: str, recorder: tuple[Telemetry, list[Event]], register: Callable[..., None]
) -> None:
    telemetry, events = recorder
    seen: list[int] = []

    def batch(items: list[list[Any]]) -> None:
        seen.extend(n for (n,) in items)

    register("TelBatch", batch, batch=True)
    flume = Flume(redis_url, "tel")
    flume.bulk_enqueue(QUEUE, [("TelBatch", [i]) for i in range(7)])
    config = _config(redis_url, batcher={"size": 3, "timeout": 100})

    _run(WorkerRuntime(config, telemetry=telemetry), until=lambda: len(seen) == 7)

    flushed = [(e.fields["size"], e.fields["trigger"]) for e in _named(events, "batch.flushed")]
    assert flushed[-1] == (1, "time")
    assert flushed.count((3, "count")) == 2
    assert sum(size for size, _ in flushed) == 7
    assert all(e.fields["queue"] == QUEUE for e in _named(events, "batch.flushed"))


def test_the_throttle_reports_grants_and_waits_with_the_current_rate(
    redis_url: str, recorder: tuple[Telemetry, list[Event]], register: Callable[..., None]
) -> None:
    telemetry, events = recorder

    async def ok(n: int) -> None:
        await asyncio.sleep(0)

    register("TelLimited", ok)
    flume = Flume(redis_url, "tel")
    flume.bulk_enqueue(QUEUE, [("TelLimited", [i]) for i in range(8)])
    config = _config(redis_url, rate_limiter={"allowed": 5, "period": 300, "key": "tel-limit"})

    _run(
        WorkerRuntime(config, telemetry=telemetry),
        until=lambda: flume.stats([QUEUE])[QUEUE]["processed"] == 8,
    )

    granted = _named(events, "throttle.granted")
    waited = _named(events, "throttle.waited")
    assert sum(e.fields["tokens"] for e in granted) >= 8
    assert waited, "8 jobs under 5 per period must wait for the window at least once"
    for event in granted + waited:
        assert event.fields["key"] == "tel-limit" and event.fields["rate"] == 5.0
    assert all(e.fields["wait_ms"] > 0 for e in waited)
    # A wait is reported right after the grant it belongs to.
    for event in waited:
        before = events[events.index(event) - 1]
        assert before.name == "throttle.granted" and before.fields["wait_ms"] == event.fields["wait_ms"]


def test_back_pressure_engages_when_demand_is_exhausted_and_releases_after(
    redis_url: str, recorder: tuple[Telemetry, list[Event]], register: Callable[..., None]
) -> None:
    telemetry, events = recorder
    release = threading.Event()

    def slow(n: int) -> None:
        release.wait(5)

    register("TelSlow", slow)
    flume = Flume(redis_url, "tel")
    flume.bulk_enqueue(QUEUE, [("TelSlow", [i]) for i in range(6)])
    config = _config(redis_url, max_demand=2, processor={"stages": 2})

    def engaged_then_let_go() -> bool:
        if _named(events, "backpressure.engaged"):
            release.set()
        return flume.stats([QUEUE])[QUEUE]["processed"] == 6

    _run(WorkerRuntime(config, telemetry=telemetry), until=engaged_then_let_go)

    pressure = _named(events, "backpressure.engaged", "backpressure.released")
    assert pressure[0].name == "backpressure.engaged" and pressure[0].fields["in_flight"] == 2
    assert pressure[1].name == "backpressure.released" and pressure[1].fields["held_ms"] >= 0
    kinds = [e.name for e in pressure]
    assert all(a != b for a, b in itertools.pairwise(kinds)), "engaged and released alternate"


def test_consumers_join_beat_and_recover_the_jobs_of_a_dead_one(
    redis_url: str, recorder: tuple[Telemetry, list[Event]], register: Callable[..., None]
) -> None:
    telemetry, events = recorder
    ran: list[int] = []

    async def ok(n: int) -> None:
        ran.append(n)

    register("TelRecover", ok)
    flume = Flume(redis_url, "tel")
    flume.bulk_enqueue(QUEUE, [("TelRecover", [i]) for i in range(3)])
    # A consumer that fetched the three jobs and died long ago: its heartbeat is from 1970.
    client = redis.Redis.from_url(redis_url)
    for _ in range(3):
        client.lmove(Keys("tel").of(QUEUE).queue, Keys("tel").of(QUEUE).inflight("ghost"), "RIGHT", "LEFT")
    client.zadd(Keys("tel").of(QUEUE).consumers, {"ghost": 1})

    runtime = WorkerRuntime(_config(redis_url), telemetry=telemetry)
    _run(runtime, until=lambda: len(ran) == 3 and len(_named(events, "consumer.heartbeat")) >= 2)

    (joined,) = _named(events, "consumer.joined")
    assert joined.fields["consumer"] == runtime.consumer
    beats = _named(events, "consumer.heartbeat")
    assert all(e.fields["consumer"] == runtime.consumer for e in beats)
    (recovered,) = _named(events, "consumer.recovered")
    assert recovered.fields == {"queue": QUEUE, "consumer": "", "jobs": 3}
    assert sorted(ran) == [0, 1, 2]
    assert events.index(joined) < events.index(recovered) < events.index(_named(events, "consumer.left")[0])


def test_every_event_name_is_documented_once() -> None:
    assert len(set(EVENT_NAMES)) == len(EVENT_NAMES)
    assert all(name.count(".") == 1 for name in EVENT_NAMES)
