"""A worker process logs every failed attempt (WARNING) and every dead letter (ERROR, with the traceback's
tail), as text or as one JSON object per line."""

from __future__ import annotations

import json
from pathlib import Path

import redis

from flume_rx import Flume
from tests.faults.harness import QUEUE, WorkerProcess, runs, wait_until, write_config

RETRY = {"max_retries": 1, "backoff_initial": 1, "backoff_max": 1}


def _fail_one_job(redis_url: str, tmp_path: Path, *log_args: str) -> tuple[str, str]:
    """Run a worker until one FailingWorker job is dead; returns its id and the worker's log."""
    config = write_config(tmp_path / "flume.toml", redis_url, {"retry": RETRY})
    worker = WorkerProcess(config, redis_url, extra_args=log_args)
    client = redis.Redis.from_url(redis_url)
    with Flume(redis_url, "t") as flume:
        job_id = flume.enqueue(QUEUE, "FailingWorker", ["ada"])
        try:
            wait_until(lambda: flume.stats([QUEUE])[QUEUE]["dead"] == 1, 60, "the job to die")
            wait_until(lambda: "dead letters" in worker.log(), 30, "the dead letter's log record")
        finally:
            assert worker.terminate() == 0, worker.log()
    assert runs(client) == {"ada": 2}
    client.close()
    return job_id, worker.log()


def test_failed_attempts_are_warnings_and_the_dead_letter_an_error_with_its_traceback(
    redis_url: str, tmp_path: Path
) -> None:
    job_id, log = _fail_one_job(redis_url, tmp_path)
    lines = log.splitlines()
    retried = [line for line in lines if "WARNING" in line and job_id in line]
    assert len(retried) == 1, log
    assert f"job {job_id} of 'jobs' (worker FailingWorker) failed on attempt 1 of 2" in retried[0]
    assert "LookupError: no user 'ada'; next try in" in retried[0]
    dead_at = next(i for i, line in enumerate(lines) if "ERROR" in line and job_id in line)
    assert "went to the dead letters after its last attempt (attempt 2 of 2)" in lines[dead_at]
    tail = "\n".join(lines[dead_at : dead_at + 14])
    assert "in _lookup_user" in tail and 'raise LookupError(f"no user {token!r}")' in tail, tail


def test_json_log_format_gives_one_object_per_line_with_the_jobs_fields(
    redis_url: str, tmp_path: Path
) -> None:
    # Two processes: the worker processes the supervisor spawns log in the format asked for too.
    job_id, log = _fail_one_job(
        redis_url, tmp_path, "--log-format", "json", "--log-level", "warning", "--processes", "2"
    )
    records = [json.loads(line) for line in log.splitlines() if line.strip()]
    mine = [r for r in records if r.get("job_id") == job_id]
    assert [r["level"] for r in mine] == ["WARNING", "ERROR"], records
    retried, dead = mine
    assert retried["queue"] == "jobs" and retried["worker"] == "FailingWorker"
    assert (retried["attempt"], retried["max_attempts"]) == (1, 2)
    assert retried["error"] == "LookupError: no user 'ada'" and retried["retry_in_s"] > 0
    assert (dead["attempt"], dead["max_attempts"]) == (2, 2)
    assert retried["process"].startswith("flume-worker-") and dead["process"].startswith("flume-worker-")
    assert "in _lookup_user" in dead["traceback"]
    assert all(r["level"] in ("WARNING", "ERROR") for r in records), "--log-level warning drops INFO"
