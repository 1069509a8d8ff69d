"""The benchmarks notebook executes headless, end to end, in quick mode on a small scenario set.

It runs real worker processes against a private Redis, so it is the one place where CI notices the suite or
the notebook rotting. It asserts what the notebook produced, never how fast anything was.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

nbformat = pytest.importorskip(
    "nbformat", reason="the notebook test needs the bench extra: pip install -e .[bench]"
)
nbclient = pytest.importorskip(
    "nbclient", reason="the notebook test needs the bench extra: pip install -e .[bench]"
)

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "benchmarks.ipynb"


@pytest.mark.timeout(240)
def test_notebook_runs_quick_mode_and_saves_plots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "results.json"
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
