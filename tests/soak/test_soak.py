"""The soak, at CI size: benchmarks/soak.py drains jobs through 4 workers with kills; no leak afterwards.

The full run is ``python -m benchmarks.soak`` (1,000,000 jobs, see docs/reliability.md for its figures).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
JOBS = 200_000


@pytest.mark.slow
def test_soak_with_kills_leaks_nothing(redis_url: str, tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    command = [
        sys.executable,
        "-m",
        "benchmarks.soak",
        "--jobs",
        str(JOBS),
        "--processes",
        "4",
        "--kills",
        "3",
    ]
    completed = subprocess.run(
        [*command, "--redis-url", redis_url, "--out", str(out)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        timeout=280,
    )
    assert completed.returncode == 0, completed.stderr.decode()[-3000:]
    result = json.loads(out.read_text())

    assert result["kills"] == 3
    assert result["processed"] >= JOBS and result["acked_twice"] >= 0  # each job acked at least once
    assert (result["queued"], result["in_flight"], result["retry"], result["dead"]) == (0, 0, 0, 0)
    assert result["exit_codes"] == [0, 0, 0, 0]
    assert result["leaked_inflight"] == [] and result["leaked_consumers"] == []
    assert result["rate_keys_after_expiry"] == []  # the limiter's keys expire by themselves
    # Flat memory in the workers that ran the whole drain: growth under 20% plus 16 MiB of slack.
    for index, early in result["rss_kb_at_10pct"].items():
        assert result["rss_kb_at_end"][index] <= early * 1.2 + 16 * 1024, result
