"""``flume-rx stats`` hides nothing: queues holding jobs that no pipeline serves, the paused state, a 5 s rate
beside the 60 s one, and every column whole when the output is piped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import redis

from flume_rx import Flume
from flume_rx.store import Keys
from flume_rx.store.commands import RATE_SECONDS
from tests.faults.harness import ROOT

NS = "sv"


def _stats(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FLUME_CONFIG", "FLUME_REDIS_URL")}
    result = subprocess.run(
        [sys.executable, "-m", "flume_rx", "stats", *args],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,  # a pipe, as in `flume-rx stats | grep ...`
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result


def test_stats_shows_a_misspelt_queue_and_the_paused_state_with_every_column_when_piped(
    redis_url: str, tmp_path: Path
) -> None:
    (tmp_path / "flume.toml").write_text(
        f'redis_url = "{redis_url}"\nnamespace = "{NS}"\n'
        '[pipelines.email_service]\nqueue = "email_service"\n'
        '[pipelines.a_pipeline_with_a_long_name]\nqueue = "reports_for_the_board_every_monday"\n'
    )
    with Flume(redis_url, NS) as flume:
        flume.enqueue("email_service", "EmailWorker", [1])
        flume.bulk_enqueue("emial_service", [("EmailWorker", [2]), ("EmailWorker", [3])])  # the typo
        flume.enqueue("empty_and_unserved", "EmailWorker", [4])
        flume.delete("empty_and_unserved", [j.id for j in flume.peek("empty_and_unserved")])
        flume.pause("email_service")

    text = _stats(tmp_path)
    lines = text.stdout.splitlines()
    header = next(line for line in lines if "pipeline" in line and "queue" in line)
    for column in (
        "state",
        "queued",
        "in flight",
        "dead",
        "done/s 5s",
        "done/s 60s",
        "failed/s 5s",
        "consumers",
    ):
        assert column in header, header
    assert "…" not in text.stdout, "nothing cut to fit 80 columns"
    row = {line.split("│")[2].strip(): line for line in lines if line.count("│") > 5 and line != header}
    assert set(row) == {"email_service", "reports_for_the_board_every_monday", "emial_service"}
    assert "a_pipeline_with_a_long_name" in row["reports_for_the_board_every_monday"]
    assert "paused" in row["email_service"] and "active" in row["reports_for_the_board_every_monday"]
    assert "(no pipeline)" in row["emial_service"]
    assert text.stderr.strip() == (
        "flume-rx: queue 'emial_service' holds 2 job(s) that no pipeline of this config serves: a misspelt queue "
        "name at enqueue? look with `flume-rx queue peek emial_service`"
    )

    printed = json.loads(_stats(tmp_path, "--json").stdout)
    assert set(printed) == {"email_service", "reports_for_the_board_every_monday", "emial_service"}
    assert printed["emial_service"]["pipeline"] is None and printed["emial_service"]["queued"] == 2
    assert printed["email_service"]["pipeline"] == "email_service" and printed["email_service"]["paused"]
    assert {"processed_per_s_5s", "failed_per_s_5s", "processed_per_s", "consumers"} <= set(
        printed["email_service"]
    )


def test_the_short_rate_covers_the_last_5_seconds_and_the_long_one_60(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    now_s = int(client.time()[0])
    ring: dict[str, int] = {}
    # 10 jobs/s in the last seconds (and a little ahead, so a second ticking before stats reads its clock moves
    # nothing out of the short window), 1 job/s before; failures at a tenth of that.
    for bucket in range(now_s - 70, now_s + 3):
        slot = bucket % RATE_SECONDS
        recent = bucket >= now_s - 7
        ring |= {f"t{slot}": bucket, f"p{slot}": 10 if recent else 1, f"f{slot}": 1 if recent else 0}
    client.hset(Keys(NS).of("rates").seconds, mapping=ring)  # type: ignore[arg-type]
    with Flume(redis_url, NS) as flume:
        stats = flume.stats(["rates"])["rates"]
    assert (stats["processed_per_s_5s"], stats["failed_per_s_5s"]) == (10.0, 1.0)
    assert 1.0 < stats["processed_per_s"] < 3.0 and 0.0 < stats["failed_per_s"] < 0.3
    client.close()
