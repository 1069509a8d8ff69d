"""The shapes scenario measures every peer's rows rep by rep, so rows compared in a ratio are minutes apart,
and takes enqueue-to-start in the same repetitions when asked, so every goal comes from one hour.

The drains and latency samples themselves are replaced by a recorder: what is checked is the order the suite
runs them in, that a failing peer loses only its own rows, and that each repetition's results are handed on to
be saved.
"""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks import runner
from benchmarks.peers import PEERS, PeerSpec

FLUME = next(spec for spec in PEERS if spec.name == "flume_rx")
HUEY = next(spec for spec in PEERS if spec.name == "huey")


class Recorder:
    def __init__(self, failing: str | None = None, failing_latency: str | None = None) -> None:
        self.drains: list[tuple[str, str | None, str]] = []
        self.counts: list[tuple[str, str | None, str]] = []
        self.failing = failing
        self.failing_latency = failing_latency
        self.order: list[str] = []  # "shape" or "latency", one per drain or sample, in the order they ran
        self.latency: list[tuple[str, str | None]] = []

    def drain_once(
        self, bench: Any, spec: PeerSpec, n: int, processes: int, *, variant: Any = None, env: Any = None
    ) -> dict[str, Any]:
        if spec.name == self.failing and len([d for d in self.drains if d[0] == spec.name]) == 2:
            raise runner.PeerFailed(f"{spec.name} stopped answering")
        self.drains.append((spec.name, variant, env["BENCH_SHAPE"]))
        self.order.append("shape")
        return {"jobs_per_s": 1000.0 + len(self.drains), "redis_calls_per_job": 1.0}

    def latency_sample(self, bench: Any, spec: PeerSpec, rate: float, variant: str | None) -> dict[str, Any]:
        if spec.name == self.failing_latency:
            raise runner.PeerFailed(f"{spec.name} recorded no wait")
        self.latency.append((spec.name, variant))
        self.order.append("latency")
        p50 = 0.3 + len(self.latency) / 100
        return {"p50_ms": p50, "p99_ms": 2 * p50, "max_ms": 3 * p50}

    def count_commands(
        self, bench: Any, spec: PeerSpec, n: int, *, variant: Any = None, env: Any = None
    ) -> dict[str, Any]:
        self.counts.append((spec.name, variant, env["BENCH_SHAPE"]))
        return {"client_commands_per_job": 0.5}


@pytest.fixture
def bench() -> runner.Bench:
    # No server is reached: drain_once and count_commands are replaced; the clients are never used.
    settings = runner.Settings.for_mode(quick=False)
    settings.reps = 3
    return runner.Bench("redis://127.0.0.1:1/0", "redis://127.0.0.1:1/1", settings, log=lambda _: None)


def test_every_row_runs_once_per_rep_before_any_row_runs_again(
    bench: runner.Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder()
    monkeypatch.setattr(runner, "drain_once", recorder.drain_once)
    monkeypatch.setattr(runner, "count_commands", recorder.count_commands)
    saved: list[dict[str, Any]] = []

    entries = runner.shapes_interleaved(bench, [FLUME, HUEY], saved.append)["shapes"]

    rows = len(runner.SHAPE_KINDS) * (len(runner.SHAPE_CONFIGS) + 1)  # flume_rx's configs, huey's defaults
    assert len(recorder.drains) == 3 * rows
    first, second, third = (recorder.drains[i * rows : (i + 1) * rows] for i in range(3))
    assert first == second == third, "each repetition drains every row once, in the same order"
    # Within a rep, one shape's rows for every peer come together: a ratio's two rows are minutes apart.
    shapes_in_order = [shape for _, _, shape in first]
    assert shapes_in_order == sorted(shapes_in_order, key=list(runner.SHAPE_KINDS).index)
    for shape in runner.SHAPE_KINDS:
        peers_of_shape = [name for name, _, s in first if s == shape]
        assert set(peers_of_shape) == {"flume_rx", "huey"}
    assert sorted(recorder.counts) == sorted(first), "one command count per row, after the reps"
    assert len(saved) == 3, "each rep's results are handed on to be saved"
    assert all(entry["status"] == "ok" for entry in entries.values())
    incr = entries["huey"]["result"]["incr/defaults"]
    assert len(incr["samples"]) == 3
    assert incr["median_jobs_per_s"] == sorted(s["jobs_per_s"] for s in incr["samples"])[1]
    assert incr["commands"] == {"client_commands_per_job": 0.5}
    assert set(entries["flume_rx"]["result"]) == {
        f"{shape}/{config}" for shape in runner.SHAPE_KINDS for config in runner.SHAPE_CONFIGS
    }


def test_a_peer_that_fails_loses_its_own_rows_and_no_other_peers(
    bench: runner.Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder(failing="huey")
    monkeypatch.setattr(runner, "drain_once", recorder.drain_once)
    monkeypatch.setattr(runner, "count_commands", recorder.count_commands)

    entries = runner.shapes_interleaved(bench, [FLUME, HUEY])["shapes"]

    assert entries["huey"]["status"] == "failed"
    assert "huey stopped answering" in entries["huey"]["error"]
    assert [d for d in recorder.drains if d[0] == "huey"] == [("huey", None, "noop"), ("huey", None, "incr")]
    assert not any(name == "huey" for name, _, _ in recorder.counts), "a failed peer is not counted"
    flume = entries["flume_rx"]
    assert flume["status"] == "ok"
    assert all(len(row["samples"]) == 3 for row in flume["result"].values())


def _recording(monkeypatch: pytest.MonkeyPatch, recorder: Recorder) -> None:
    monkeypatch.setattr(runner, "drain_once", recorder.drain_once)
    monkeypatch.setattr(runner, "count_commands", recorder.count_commands)
    monkeypatch.setattr(runner, "_latency_sample", recorder.latency_sample)


def test_latency_samples_come_in_each_repetition_after_its_shapes(
    bench: runner.Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder()
    _recording(monkeypatch, recorder)
    saved: list[dict[str, Any]] = []

    entries = runner.shapes_interleaved(bench, [FLUME, HUEY], saved.append, latency_specs=[FLUME, HUEY])

    rows = len(runner.SHAPE_KINDS) * (len(runner.SHAPE_CONFIGS) + 1)
    samples = len(runner.SHAPE_CONFIGS) + 1  # flume_rx's configs, huey's defaults
    assert recorder.order == (["shape"] * rows + ["latency"] * samples) * 3
    first = recorder.latency[:samples]
    assert recorder.latency == first * 3, "every config of every peer once per repetition, in one order"
    assert first == [("flume_rx", f"{config}:sync") for config in runner.SHAPE_CONFIGS] + [("huey", None)]
    assert set(saved[0]) == {"shapes", "latency_sync"}, "each rep saves both scenarios"
    latency = entries["latency_sync"]
    assert set(latency["flume_rx"]["result"]) == set(runner.SHAPE_CONFIGS)
    huey = latency["huey"]["result"]["defaults"]
    assert len(huey["samples"]) == 3
    assert huey["median_p50_ms"] == sorted(x["p50_ms"] for x in huey["samples"])[1]
    assert all(entry["status"] == "ok" for entry in entries["shapes"].values())


def test_a_peer_whose_latency_fails_keeps_its_shape_rows(
    bench: runner.Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder(failing_latency="huey")
    _recording(monkeypatch, recorder)

    entries = runner.shapes_interleaved(bench, [FLUME, HUEY], latency_specs=[FLUME, HUEY])

    assert entries["latency_sync"]["huey"]["status"] == "failed"
    assert "recorded no wait" in entries["latency_sync"]["huey"]["error"]
    assert entries["shapes"]["huey"]["status"] == "ok"
    assert all(len(row["samples"]) == 3 for row in entries["shapes"]["huey"]["result"].values())
    assert entries["latency_sync"]["flume_rx"]["status"] == "ok"
    assert {name for name, _ in recorder.latency} == {"flume_rx"}


def test_without_latency_peers_only_shapes_are_returned(
    bench: runner.Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder()
    _recording(monkeypatch, recorder)

    entries = runner.shapes_interleaved(bench, [HUEY])

    assert set(entries) == {"shapes"}
    assert recorder.latency == []
