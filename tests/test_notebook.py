"""The benchmarks notebook executes headless, end to end, in quick mode on a small scenario set.

It runs real worker processes against a private Redis, so it is the one place where CI notices the suite or
the notebook rotting. It asserts what the notebook produced, never how fast anything was.
"""

from __future__ import annotations

import json
from pathlib import Path

# The test extra carries nbformat, nbclient and the kernel: CI runs the notebook, it never skips it.
import nbclient
import nbformat
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from benchmarks import plots, stats
from benchmarks.redis_server import OWNER_KEY, given_database

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "benchmarks.ipynb"


@pytest.mark.timeout(240)
def test_notebook_runs_quick_mode_against_the_users_redis_and_saves_plots(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "The user's Redis": database 7 of the session's private server, with a key of the user's in database 0.
    users_redis = redis_url.rsplit("/", 1)[0] + "/7"
    keeper = redis.Redis.from_url(redis_url)
    keeper.set("users:own:key", "kept")
    out = tmp_path / "results.json"
    monkeypatch.setenv("FLUME_BENCH_REDIS_URL", users_redis)
    monkeypatch.setenv("FLUME_BENCH_ONLY", "throughput,latency")
    monkeypatch.setenv("FLUME_BENCH_PEERS", "flume_rx,huey")
    monkeypatch.setenv("FLUME_BENCH_SOURCE", "fresh")
    monkeypatch.setenv("FLUME_BENCH_PLOTS", str(tmp_path / "plots"))
    monkeypatch.setenv("FLUME_BENCH_OUT", str(out))
    notebook = nbformat.read(NOTEBOOK, as_version=4)

    nbclient.NotebookClient(
        notebook, timeout=200, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()

    results = json.loads(out.read_text())
    assert results["quick"] is True
    assert results["redis"] == {"under_test": "given", "probe": "private"}
    assert keeper.get("users:own:key") == b"kept", "only the given database is flushed"
    assert redis.Redis.from_url(users_redis).dbsize() == 0, "the run leaves its database empty"
    assert set(results["scenarios"]) == {"throughput", "latency"}
    # Every peer asked for is in the results, as measured or as failed with its error: never silently dropped.
    for scenario in ("throughput", "latency"):
        assert set(results["scenarios"][scenario]) == {"flume_rx", "huey"}
        for entry in results["scenarios"][scenario].values():
            assert entry["status"] in {"ok", "failed"}
            assert entry["status"] == "ok" or entry["error"]
    assert {"cpu", "cores", "python", "redis_server"} <= set(results["machine"])
    saved = {p.name for p in (tmp_path / "plots").glob("*.png")}
    expected = {
        name
        for name, scenario in (("throughput.png", "throughput"), ("latency.png", "latency"))
        if any(e["status"] == "ok" for e in results["scenarios"][scenario].values())
    }
    assert expected <= saved
    # The standalone scripts' saved results are plotted too, whatever the fresh run measured.
    standalone = {
        f"{name}.png" for name in plots.STANDALONE if (plots.RESULTS_DIR / f"{name}.json").is_file()
    }
    assert standalone <= saved


def test_save_all_draws_standalone_results_only_when_their_json_exists(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    assert plots.save_all({}, tmp_path / "none", results) == []

    sample = {"bulk_share": 0.09, "longest_run_without_bulk": 46}
    entry = {"scenario": "weighted 10:1", "bulk_share_expected": 0.0909, **sample, "samples": [sample]}
    (results / "priorities.json").write_text(json.dumps({"jobs_per_queue": 10, "results": [entry]}))
    written = plots.save_all({}, tmp_path / "one", results)
    assert [p.name for p in written] == ["priorities.png"]

    keyed = {
        "token_calls_per_job": 0.01,
        "lua_round_trips_per_job": 0.05,
        "most_starts_of_a_key_in_any_second": 5,
    }
    (results / "per_key_limits.json").write_text(
        json.dumps({"keys": 2, "jobs": 4, "allowed_per_key_per_s": 5, **keyed, "samples": [keyed]})
    )
    written = plots.save_all({}, tmp_path / "both", results)
    assert [p.name for p in written] == ["priorities.png", "per_key_limits.png"]


def test_a_given_database_must_be_empty_or_the_suites_and_is_emptied_after(redis_url: str) -> None:
    base = redis_url.rsplit("/", 1)[0]
    users = redis.Redis.from_url(f"{base}/3")
    users.set("orders:1", "paid")
    with pytest.raises(RuntimeError, match=r"holds 1 keys.*empty database"), given_database(f"{base}/3"):
        pass
    assert users.get("orders:1") == b"paid"

    leftover = redis.Redis.from_url(f"{base}/4")
    leftover.mset({OWNER_KEY: "1", "bench:queue": "x"})  # what a crashed run left
    with given_database(f"{base}/4") as url:
        assert url == f"{base}/4"
        leftover.set("bench:new", "y")
    assert leftover.dbsize() == 0
    assert users.get("orders:1") == b"paid"


def test_a_password_never_reaches_the_message() -> None:
    from benchmarks.redis_server import redacted

    assert redacted("redis://:s3cret@db.internal:6379/15") == "redis://***@db.internal:6379/15"
    assert redacted("rediss://bench:s3cret@db.internal/2") == "rediss://***@db.internal/2"
    assert redacted("redis://127.0.0.1:6380/0") == "redis://127.0.0.1:6380/0"


# The numbers the notebook plots come from these pure helpers: checked against brute force.
_times = st.lists(st.floats(min_value=0, max_value=5, allow_nan=False), max_size=60).map(sorted)


@given(_times)
def test_max_in_window_matches_brute_force(times: list[float]) -> None:
    brute = max((sum(1 for u in times if t <= u < t + 1.0) for t in times), default=0)
    assert stats.max_in_window(times, 1.0) == brute


@given(_times)
def test_mean_in_window_never_exceeds_the_busiest_window(times: list[float]) -> None:
    mean = stats.mean_in_window(times, 1.0)
    assert (
        0
        <= mean
        <= max(stats.max_in_window(times, 1.0), len(times) if times and times[-1] - times[0] <= 1 else 0)
    )


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (stats.percentile(values, 50), stats.percentile(values, 99), stats.percentile(values, 100)) == (
        50,
        99,
        100,
    )
