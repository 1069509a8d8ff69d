"""Bad input: garbage in the queue, the scheduled and retry sets; oversized jobs; invalid configs."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flume_rx import Flume, worker
from flume_rx.model import codec
from flume_rx.model import config as config_module
from flume_rx.model.errors import DecodeError, EncodeError
from flume_rx.model.registry import unregister
from flume_rx.store.keys import Keys
from flume_rx.surfaces.embedded import free_port
from flume_rx.surfaces.runtime import WorkerRuntime

from .harness import QUEUE, ROOT, toml_value, wait_until, write_config

KEYS = Keys("t").of(QUEUE)


class _LiveWorker:
    """A worker runtime running in a thread of this process for the whole module."""

    def __init__(self, redis_url: str) -> None:
        self.seen: list[int] = []
        worker("GarbageTestOk")(self._ok)
        config = config_module.parse(
            {
                "redis_url": redis_url,
                "namespace": "t",
                "orphan_timeout": 5000,
                "pipelines": {"main": {"queue": QUEUE, "max_demand": 20, "processor": {"stages": 4}}},
            }
        )
        self.runtime = WorkerRuntime(config, block_s=0.2)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()

    async def _ok(self, n: int) -> None:
        self.seen.append(n)

    def _main(self) -> None:
        try:
            asyncio.run(self.runtime.run())
        except BaseException as exc:  # reported by the test, which must see the worker die
            self.error = exc

    def close(self) -> None:
        self.runtime.stop()
        self.thread.join(30)
        unregister("GarbageTestOk")


@pytest.fixture(scope="module")
def live(redis_server: Any) -> Iterator[tuple[_LiveWorker, redis.Redis, Flume]]:
    url = redis_server.url
    client = redis.Redis.from_url(url)
    client.flushall()
    flume = Flume(url, "t")
    running = _LiveWorker(url)
    yield running, client, flume
    running.close()
    flume.close()
    client.close()


def _is_garbage(blob: bytes) -> bool:
    try:
        codec.decode(blob)
    except DecodeError:
        return True
    return False


_structures = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=12) | st.dictionaries(st.text(max_size=5), inner, max_size=5),
    max_leaves=20,
)
_garbage = st.binary(max_size=300) | _structures.map(lambda v: msgpack.packb(v, use_bin_type=True))


# Each example's good job carries a number no earlier example used: the module's worker remembers every
# number it saw, so a repeated one would let an earlier example's job satisfy this example's wait.
_good_job_numbers = itertools.count()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=st.lists(_garbage.filter(_is_garbage), min_size=1, max_size=12, unique=True))
def test_garbage_in_queue_scheduled_and_retry_goes_to_the_dead_letters(
    live: tuple[_LiveWorker, redis.Redis, Flume], items: list[bytes]
) -> None:
    running, client, flume = live
    n = next(_good_job_numbers)
    client.delete(KEYS.dead)
    for i, blob in enumerate(items):
        if i % 3 == 0:
            client.lpush(KEYS.queue, blob)
        elif i % 3 == 1:
            client.zadd(KEYS.scheduled, {blob: 0})  # due long ago: promotion moves it to the queue
        else:
            client.zadd(KEYS.retry, {blob: 0})
    flume.enqueue(QUEUE, "GarbageTestOk", [n])

    wait_until(lambda: n in running.seen and client.zcard(KEYS.dead) == len(items), 15, "garbage settled")

    assert running.thread.is_alive() and running.error is None  # the worker kept running
    dead = flume.dead_list(QUEUE, limit=100)
    assert len(dead) == len(items)
    for job in dead:
        assert job.error is not None and job.error.kind == "DecodeError" and job.error.message
        assert job.id.startswith("undecodable-")
    assert sorted(job.args[0] for job in dead) == sorted(items)  # each bad payload kept for inspection
    stats = flume.stats([QUEUE])[QUEUE]
    assert stats["queued"] == 0 and stats["scheduled"] == 0 and stats["retry"] == 0


def test_oversized_jobs_are_refused_at_enqueue_and_nothing_is_written(redis_url: str) -> None:
    # Its own namespace: the module's live worker serves namespace t.
    client = redis.Redis.from_url(redis_url)
    with Flume(redis_url, "big") as flume:
        with pytest.raises(EncodeError, match="over the limit"):
            flume.enqueue(QUEUE, "AnyWorker", [b"x" * (1024 * 1024)])  # the default limit is 1 MiB
        with pytest.raises(EncodeError):
            flume.bulk_enqueue(QUEUE, [("AnyWorker", [1]), ("AnyWorker", [b"x" * (1024 * 1024)])])
        with pytest.raises(EncodeError):
            flume.enqueue_in(QUEUE, 5.0, "AnyWorker", ["y" * (1024 * 1024)])
        flume.enqueue(QUEUE, "AnyWorker", [b"x" * (512 * 1024)])  # under the limit: fine
    with Flume(redis_url, "big", max_payload_bytes=1000) as small, pytest.raises(EncodeError, match="1000"):
        small.enqueue(QUEUE, "AnyWorker", ["z" * 1000])
    assert client.llen(Keys("big").of(QUEUE).queue) == 1
    assert client.zcard(Keys("big").of(QUEUE).scheduled) == 0


def _bad_configs(redis_url: str) -> dict[str, tuple[str, str]]:
    """name -> (TOML text, a word the error must contain)."""
    good = {"queue": QUEUE, "max_demand": 10, "processor": {"stages": 2}}

    def doc(pipeline: dict[str, Any] | None = None, **top: Any) -> str:
        document: dict[str, Any] = {"redis_url": redis_url, "namespace": "bad", "imports": []}
        document.update(top)
        lines = [f"{k} = {toml_value(v)}" for k, v in document.items()]
        return "\n".join(
            [*lines, "[pipelines.main]", *(f"{k} = {toml_value(v)}" for k, v in (pipeline or good).items())]
        )

    return {
        "unknown_key": (doc(concurency=4), "concurency"),
        "unknown_pipeline_key": (doc({**good, "stagez": 3}), "pipelines.main.stagez"),
        "wrong_type": (doc({**good, "max_demand": "ten"}), "pipelines.main.max_demand"),
        "negative_rate": (
            doc({**good, "rate_limiter": {"allowed": -5, "period": 1000}}),
            "rate_limiter.allowed",
        ),
        "batch_over_demand": (doc({**good, "batcher": {"size": 50, "timeout": 10}}), "batcher.size"),
        "min_demand_at_max": (doc({**good, "min_demand": 10}), "pipelines.main.min_demand"),
        "unreachable_redis": (doc(redis_url=f"redis://127.0.0.1:{free_port()}/0"), "cannot reach Redis"),
        "missing_module": (doc(imports=["no_such_module_for_flume"]), "no_such_module_for_flume"),
        "not_toml": ("redis_url = ", "TOML"),
    }


def test_invalid_configs_exit_2_with_one_sentence_and_start_nothing(redis_url: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_url)
    cases = _bad_configs(redis_url)
    started: dict[str, subprocess.Popen[bytes]] = {}
    for name, (text, _) in cases.items():
        path = tmp_path / f"{name}.toml"
        path.write_text(text + "\n", encoding="utf-8")
        started[name] = subprocess.Popen(
            [sys.executable, "-m", "flume_rx", "worker", "--config", str(path)],
            cwd=ROOT,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    for name, process in started.items():
        out, err = process.communicate(timeout=60)
        message = err.decode().strip()
        assert process.returncode == 2, (name, message)
        lines = message.splitlines()
        assert len(lines) == 1 and lines[0].startswith("flume-rx: "), (name, message)
        assert cases[name][1] in lines[0], (name, message)
        assert "Traceback" not in message and not out
    # Nothing started: no consumer ever joined a queue.
    assert not [k for k in client.scan_iter(match="{bad:*")]


def test_a_valid_config_next_to_the_bad_ones_does_start(redis_url: str, tmp_path: Path) -> None:
    """The control for the test above: the same command with a good config runs and stops on SIGTERM."""
    config = write_config(tmp_path / "good.toml", redis_url, namespace="good")
    process = subprocess.Popen(
        [sys.executable, "-m", "flume_rx", "worker", "--config", str(config)],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "FLUME_TEST_REDIS_URL": redis_url},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    client = redis.Redis.from_url(redis_url)
    try:
        wait_until(lambda: client.zcard(Keys("good").of(QUEUE).consumers) == 1, 30, "the worker to join")
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err.decode()
