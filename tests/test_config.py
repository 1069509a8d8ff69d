"""Config parsing on its own (no Redis): defaults, each section, and the errors users meet."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from flume_rx.model.config import load, pacing_burst, parse
from flume_rx.model.errors import ConfigError
from flume_rx.model.job import check_name
from flume_rx.model.registry import worker
from flume_rx.store.keys import Keys

URL = "redis://127.0.0.1:6390/0"


def one(pipeline: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"redis_url": URL, "pipelines": {"email": pipeline}, **top}


def test_an_empty_pipeline_gets_every_default() -> None:
    config = parse(one({}))
    (p,) = config.pipelines
    assert (p.name, p.queue, p.max_demand, p.processor.stages, p.processor.timeout_s) == (
        "email",
        "email",
        100,
        10,
        None,
    )
    assert (p.retry.max_retries, p.retry.backoff_initial_s, p.retry.backoff_max_s) == (5, 1.0, 3600.0)
    assert p.rate_limiter is None and p.batcher is None and p.operators == () and p.queues == ()
    assert (config.namespace, config.orphan_timeout_s, config.shutdown_timeout_s) == ("flume", 15.0, 30.0)
    assert (config.dead_max, config.dead_ttl_s) == (10_000, 7 * 24 * 3600.0)


def test_milliseconds_in_the_file_become_seconds() -> None:
    (p,) = parse(
        one(
            {
                "processor": {"stages": 3, "timeout": 2500},
                "rate_limiter": {"allowed": 40, "period": 2000, "hold": 50, "burst": 4},
                "batcher": {"size": 10, "timeout": 250},
                "retry": {"max_retries": 0, "backoff_initial": 10, "backoff_max": 20},
            }
        )
    ).pipelines
    assert p.processor.timeout_s == 2.5
    assert p.rate_limiter is not None
    assert (p.rate_limiter.allowed, p.rate_limiter.period_s, p.rate_limiter.hold_s) == (40, 2.0, 0.05)
    assert (p.rate_limiter.key, p.rate_limiter.burst) == ("email", 4)
    assert p.batcher is not None and (p.batcher.size, p.batcher.timeout_s) == (10, 0.25)
    assert (p.retry.max_retries, p.retry.backoff_initial_s, p.retry.backoff_max_s) == (0, 0.01, 0.02)


def test_a_multi_queue_pipeline_serves_its_queues_by_weight() -> None:
    table = {"queues": [{"name": "email/urgent", "weight": 3}, {"name": "email/bulk"}], "order": "strict"}
    (p,) = parse(one(table)).pipelines
    assert p.queue == "email/urgent"
    assert [(q.name, q.weight) for q in p.queues] == [("email/urgent", 3), ("email/bulk", 1)]
    assert p.order == "strict"


@pytest.mark.parametrize(
    ("pipeline", "says"),
    [
        ({"queue": "{q}"}, "pipelines.email.queue must be a non-empty string without braces"),
        ({"queues": [{"name": "a}"}]}, "pipelines.email.queues[0].name must be a non-empty string"),
        ({"max_demand": 0}, "pipelines.email.max_demand"),
        ({"bogus": 1}, "bogus"),
        ({"rate_limiter": {"period": 1000}}, "rate_limiter.allowed is missing"),
        ({"rate_limiter": {"allowed": 5, "burst": -1}}, "burst must be an integer >= 0"),
        ({"rate_limiter": {"allowed": 5, "key_from": "m:f", "adaptive": True}}, "cannot be combined"),
        ({"batcher": {"size": 500}}, "larger than pipelines.email.max_demand"),
        ({"batcher": {"timeout": 10}}, "batcher.size is missing"),
        ({"retry": {"backoff_initial": 10, "backoff_max": 5}}, "make the cap at least the first delay"),
        ({"operators": ["no_colon"]}, '"module:attribute"'),
        ({"order": "random"}, 'order must be "weighted" or "strict"'),
    ],
)
def test_a_wrong_pipeline_is_refused_naming_the_key(pipeline: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says.replace("[", r"\[").replace("]", r"\]")):
        parse(one(pipeline))


def test_a_bad_redis_url_is_refused_without_showing_its_password() -> None:
    with pytest.raises(ConfigError, match="redis_url") as caught:
        parse({"redis_url": "http://admin:s3cret@10.0.0.1:6379/0"})
    assert "s3cret" not in str(caught.value)
    assert "10.0.0.1:6379" in str(caught.value)


def test_two_pipelines_on_one_queue_are_refused() -> None:
    raw = {"redis_url": URL, "pipelines": {"a": {"queue": "q"}, "b": {"queue": "q"}}}
    with pytest.raises(ConfigError, match=r"pipelines\.a and pipelines\.b"):
        parse(raw)


def test_the_pacing_burst_defaults_to_a_twentieth_and_zero_turns_it_off() -> None:
    assert pacing_burst(400, None) == 20
    assert pacing_burst(10, None) == 1
    assert pacing_burst(400, 7) == 7
    assert pacing_burst(400, 0) is None


def test_load_reads_toml_and_a_missing_file_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "flume.toml"
    path.write_text(f'redis_url = "{URL}"\n[pipelines.email]\nmax_demand = 7\n')
    assert load(path).pipeline("email").max_demand == 7
    assert load(path, redis_url="redis://127.0.0.1:6391/1").redis_url == "redis://127.0.0.1:6391/1"
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "missing.toml")


@pytest.mark.parametrize("name", ["", "{email}", "em}ail"])
def test_every_place_that_takes_a_queue_name_refuses_a_brace_the_same_way(name: object) -> None:
    """One check (flume_rx.model.job.check_name) behind the config, the registry and the key builder."""
    with pytest.raises(ConfigError, match="must be a non-empty string without braces"):
        check_name(name)
    with pytest.raises(ConfigError, match="queue name must be a non-empty string without braces"):
        Keys("flume").of(name)
    with pytest.raises(ConfigError, match="must be a non-empty string without braces"):
        parse(one({"queue": name}))
    with pytest.raises(ConfigError, match="worker queue must be a non-empty string without braces"):
        worker("ConfigTestWorker", queue=name)  # type: ignore[call-overload]


@pytest.mark.parametrize("name", [3, None, b"email"])
def test_a_queue_name_that_is_no_string_is_refused(name: object) -> None:
    with pytest.raises(ConfigError, match="got"):
        check_name(name, "queue")


@pytest.mark.parametrize(
    ("value", "expected"), [("spread", "spread"), ("off", "off"), ([1], (1,)), ([2, 0], (2, 0))]
)
def test_cpu_affinity_is_spread_off_or_cpu_numbers(value: Any, expected: Any) -> None:
    assert parse({"cpu_affinity": value}).cpu_affinity == expected
    assert parse({}).cpu_affinity == "spread"


@pytest.mark.parametrize("value", ["all", [], [-1], [True], ["0"], 3])
def test_a_wrong_cpu_affinity_is_refused_naming_the_key_and_value(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"cpu_affinity must be .*\(got " + re.escape(repr(value))):
        parse({"cpu_affinity": value})
