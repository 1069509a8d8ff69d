"""The soak: benchmarks/soak.py drains 1,000,000 jobs through 4 workers with 5 kills; no leak afterwards.

It takes 90 s alone, 135 s under pytest, on 2 cores (docs/reliability.md); ``python -m benchmarks.soak`` runs it by hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
JOBS = 1_000_000


# The timeouts catch a hang, not slowness: 135 s on a quiet machine took over 560 s at a load average of 18.
@pytest.mark.slow
@pytest.mark.timeout(1800)
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
        "5",
    ]
    completed = subprocess.run(
        [*command, "--redis-url", redis_url, "--out", str(out)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        timeout=1740,
    )
    assert completed.returncode == 0, completed.stderr.decode()[-3000:]
    result = json.loads(out.read_text())

    assert result["kills"] == 5
    assert result["processed"] >= JOBS  # each job acked at least once (a killed worker's job may run twice)
    assert (result["queued"], result["in_flight"], result["retry"], result["dead"]) == (0, 0, 0, 0)
    assert result["exit_codes"] == [0, 0, 0, 0]
    assert result["leaked_inflight"] == [] and result["leaked_consumers"] == []
    assert result["rate_keys_after_expiry"] == []  # the limiter's keys expire by themselves
    # Flat memory in the workers that ran the whole drain: growth under 20% plus 16 MiB of slack.
    for index, early in result["rss_kb_at_10pct"].items():
        assert result["rss_kb_at_end"][index] <= early * 1.2 + 16 * 1024, result
