"""An adaptive window's effective rate is visible: stats (and --json), stats --watch's rows, the dashboard's
overview, and telemetry events for every change (the Prometheus gauge follows them, see test_metrics)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flume_rx.engine.rate_watch import RateWatch
from flume_rx.model.config import load
from flume_rx.model.telemetry import Event, Telemetry
from flume_rx.operators import InProcessWindow
from flume_rx.store import RedisStore, RedisTokenWindow, SyncStore
from flume_rx.surfaces import watch

ROOT = Path(__file__).resolve().parents[2]
NS = "vis"


def _lower_the_rate(redis_url: str) -> float:
    """Start 300 of the window's 400 and have the downstream refuse 100 of them: the rate drops to ~194."""

    async def run() -> float:
        store = RedisStore.from_url(redis_url, NS)
        try:
            window = RedisTokenWindow(store, "ses-account", 400, 60.0, adaptive=True)
            await window.take_async(300, 300)
            return (await window.refuse(100)).effective_allowed
        finally:
            await store.aclose()

    return asyncio.run(run())


def _config(redis_url: str, tmp_path: Path) -> Path:
    path = tmp_path / "flume.toml"
    path.write_text(
        f'redis_url = "{redis_url}"\nnamespace = "{NS}"\n[pipelines.email]\nmax_demand = 5\n'
        'rate_limiter = { allowed = 400, period = 60000, key = "ses-account", adaptive = true }\n'
    )
    return path


def test_stats_json_watch_rows_and_the_dashboard_show_the_effective_rate(
    redis_url: str, tmp_path: Path
) -> None:
    rate = _lower_the_rate(redis_url)
    assert rate < 400
    config_path = _config(redis_url, tmp_path)

    result = subprocess.run(
        [sys.executable, "-m", "flume_rx", "stats", "--config", str(config_path), "--json"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    limit = json.loads(result.stdout)["email"]["rate_limit"]
    assert limit["key"] == "ses-account" and limit["allowed"] == 400 and limit["adaptive"] is True
    assert limit["rate"] == rate

    config = load(config_path)
    with SyncStore.from_url(redis_url, NS) as store:
        (row,) = watch.snapshot(store, config)  # what --watch and the dashboard's /api/overview show
    assert row["rate_limit"] == rate and row["rate_limit_allowed"] == 400
    table = watch.render([row])
    cells = [str(cell) for column in table.columns for cell in column._cells]
    assert f"[yellow]{rate:,.0f}[/] of 400" in cells


def test_a_quiet_window_shows_its_configured_allowed(redis_url: str, tmp_path: Path) -> None:
    config = load(_config(redis_url, tmp_path))
    with SyncStore.from_url(redis_url, NS) as store:
        (row,) = watch.snapshot(store, config)
    assert row["rate_limit"] == 400.0 and row["rate_limit_allowed"] == 400


def test_every_change_of_the_rate_is_an_event() -> None:
    now = [0.0]
    window = InProcessWindow(100, 1.0, 0.0, clock=lambda: now[0], adaptive=True)
    telemetry = Telemetry()
    events: list[Event] = []
    telemetry.attach("*", events.append)
    rate_watch = RateWatch(window, "ses", telemetry)
    window.grant(80, 80)
    now[0] = 0.5
    rate_watch.refused(20)  # 80 started, 20 refused: 60 accepted
    changed = [e.fields for e in events if e.name == "throttle.rate_changed"]
    penalized: list[dict[str, Any]] = [dict(e.fields) for e in events if e.name == "throttle.penalized"]
    assert penalized == [{"key": "ses", "rate": window.current_rate(), "refused": 20}]
    assert changed == [{"key": "ses", "rate": window.current_rate(), "previous": 100.0, "cause": "refused"}]
    # As the probe raises the rate, grants show it: one event per step of 1% of allowed, not per grant.
    seen = []
    for step in range(1, 200):
        now[0] = 0.5 + step * 0.05
        window.grant(100, 1)  # the window is used: the probe only climbs while it is
        seen.append(rate_watch.seen())
    probes = [e.fields for e in events if e.name == "throttle.rate_changed" and e.fields["cause"] == "probe"]
    assert probes and probes[-1]["rate"] == 100.0  # back at allowed, and said so
    assert all(abs(p["rate"] - p["previous"]) >= 1.0 or p["rate"] == 100.0 for p in probes)
    assert len(probes) < len(seen)


@pytest.mark.anyio
@pytest.mark.parametrize("heard_first", [False, True], ids=["from_the_grant", "from_the_message"])
async def test_a_cut_another_process_made_is_said_to_come_from_there(
    store: RedisStore, heard_first: bool
) -> None:
    # This process holds a grant at 400; another one's downstream refuses and cuts the shared rate. The next
    # grant shows the lower rate, whether or not this process heard the cut's message first: the change is
    # that process's refusal ("refused_elsewhere"), not this process's probe.
    holder = RedisTokenWindow(store, "ses", 400, 60.0, adaptive=True)
    elsewhere = RedisTokenWindow(store, "ses", 400, 60.0, adaptive=True)
    telemetry = Telemetry()
    events: list[Event] = []
    telemetry.attach("throttle.rate_changed", events.append)
    rate_watch = RateWatch(holder, "ses", telemetry)
    await holder.take_async(10, 10)
    assert rate_watch.seen() == 400.0 and events == []
    await elsewhere.take_async(290, 290)
    cut = await elsewhere.refuse(100)
    if heard_first:
        assert holder.heard_cut(f"{cut.at_us} elsewhere")
    await holder.take_async(1, 1)
    rate = rate_watch.seen()
    assert rate == pytest.approx(cut.effective_allowed, abs=1.0)  # the probe has moved it a hair since
    assert [e.fields for e in events] == [
        {"key": "ses", "rate": rate, "previous": 400.0, "cause": "refused_elsewhere"}
    ]
    # Told once: the grants after it show the same rate and the same cut.
    await holder.take_async(1, 1)
    rate_watch.seen()
    assert len(events) == 1
