"""The command line as a user meets it: help, --version, ``python -m flume_rx``, where the config and the Redis
URL come from, ``enqueue --in/--at``, ``worker --queues``, and the dead-letter commands, all run as real
processes against a private Redis."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redis

from flume_rx import Flume
from flume_rx.surfaces.cli import build_parser
from tests.faults.harness import ROOT, toml_value

NS = "cli"
RETRY_NONE = {"max_retries": 0}


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None, stdin: str = "", redis_url: str = ""
) -> subprocess.CompletedProcess[str]:
    """``python -m flume_rx ARGS`` in ``cwd``, with FLUME_CONFIG and FLUME_REDIS_URL only if ``env`` sets them."""
    base = {k: v for k, v in os.environ.items() if k not in ("FLUME_CONFIG", "FLUME_REDIS_URL")}
    base.update(PYTHONPATH=str(ROOT), FLUME_TEST_REDIS_URL=redis_url)
    return subprocess.run(
        [sys.executable, "-m", "flume_rx", *args],
        cwd=cwd,
        env={**base, **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def write_config(
    path: Path, redis_url: str, *, namespace: str = NS, pipelines: dict[str, dict] | None = None
) -> Path:
    lines = [
        f"redis_url = {toml_value(redis_url)}",
        f"namespace = {toml_value(namespace)}",
        'imports = ["tests.integration.sample_workers"]',
    ]
    for name, table in (pipelines or {"main": {"queue": "jobs"}}).items():
        lines.append(f"[pipelines.{name}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in table.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---- help, version, entry points ---------------------------------------------------------------------------


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _parsers(sub)
    return found


def test_every_option_and_argument_of_every_command_has_a_help_line() -> None:
    missing = [
        f"{parser.prog}: {action.option_strings or action.dest}"
        for parser in _parsers(build_parser())
        for action in parser._actions
        if not action.help and not isinstance(action, argparse._SubParsersAction)
    ]
    assert missing == []


def test_bare_command_prints_help_and_version_and_python_m_work(tmp_path: Path) -> None:
    bare = ok(run(cwd=tmp_path))
    assert bare.startswith("usage: flume-rx") and "worker" in bare and "dead" in bare
    from importlib import metadata

    assert ok(run("--version", cwd=tmp_path)).strip() == f"flume-rx {metadata.version('flume_rx')}"
    dead_help = ok(run("dead", "--help", cwd=tmp_path))
    for action in ("list", "retry", "purge"):
        assert f"\n    {action} " in dead_help, dead_help
    assert ok(run("dead", cwd=tmp_path)) == dead_help, "dead without an action shows its help"
    installed = subprocess.run(
        [str(Path(sys.executable).parent / "flume-rx")], capture_output=True, text=True, timeout=60
    )
    assert installed.returncode == 0 and installed.stdout == bare


# ---- where the config and the Redis URL come from ------------------------------------------------------------


def test_redis_url_alone_is_enough_for_enqueue_stats_queue_and_dead(redis_url: str, tmp_path: Path) -> None:
    url = ["--redis-url", redis_url]
    job_id = ok(run("enqueue", *url, "jobs", "RecordWorker", '["a"]', cwd=tmp_path)).strip()
    stats = json.loads(ok(run("stats", *url, "--json", cwd=tmp_path)))
    assert stats["jobs"]["queued"] == 1
    [peeked] = json.loads(ok(run("queue", "peek", *url, "jobs", "--json", cwd=tmp_path)))
    assert peeked["id"] == job_id
    assert "0 of 0 dead job(s) of 'jobs' shown" in ok(run("dead", "list", *url, "jobs", cwd=tmp_path))
    assert "'jobs' paused" in ok(run("pause", *url, "jobs", cwd=tmp_path))
    with Flume(redis_url, "flume") as flume:
        assert flume.stats(["jobs"])["jobs"]["paused"], "the default namespace, as Flume() uses"


def test_config_comes_from_flag_then_FLUME_CONFIG_then_flume_toml_and_FLUME_REDIS_URL_overrides_it(
    redis_url: str, tmp_path: Path
) -> None:
    unreachable = "redis://127.0.0.1:1/0"
    write_config(tmp_path / "flume.toml", unreachable, namespace="from-cwd")
    write_config(tmp_path / "env.toml", unreachable, namespace="from-env")
    write_config(tmp_path / "flag.toml", unreachable, namespace="from-flag")
    env = {"FLUME_REDIS_URL": redis_url}
    ok(run("enqueue", "jobs", "RecordWorker", cwd=tmp_path, env=env))
    ok(run("enqueue", "jobs", "RecordWorker", cwd=tmp_path, env={**env, "FLUME_CONFIG": "env.toml"}))
    ok(
        run(
            "enqueue",
            "--config",
            "flag.toml",
            "jobs",
            "RecordWorker",
            cwd=tmp_path,
            env={**env, "FLUME_CONFIG": "env.toml"},
        )
    )
    queued = {}
    for namespace in ("from-cwd", "from-env", "from-flag"):
        with Flume(redis_url, namespace) as flume:
            queued[namespace] = flume.stats(["jobs"])["jobs"]["queued"]
    assert queued == {"from-cwd": 1, "from-env": 1, "from-flag": 1}
    # --redis-url beats FLUME_REDIS_URL, which beats the file
    refused = run("stats", "--redis-url", unreachable, cwd=tmp_path, env=env)
    assert refused.returncode == 2 and "127.0.0.1:1" in refused.stderr


def test_worker_without_a_config_and_a_directory_as_config_are_one_line_errors(tmp_path: Path) -> None:
    missing = run("worker", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip() == (
        "flume-rx: worker needs a config file and none was found; pass --config FILE, set FLUME_CONFIG, or "
        "write flume.toml in this directory"
    )
    directory = run("stats", "--config", str(tmp_path), cwd=tmp_path)
    assert directory.returncode == 2 and "Traceback" not in directory.stderr
    assert directory.stderr.strip() == (
        f"flume-rx: config file {str(tmp_path)!r} is a directory; pass the TOML file itself, e.g. "
        f"{str(tmp_path / 'flume.toml')!r}"
    )


# ---- enqueue --in / --at, worker --queues ---------------------------------------------------------------------


def test_enqueue_in_and_at_schedule_the_job(redis_url: str, tmp_path: Path) -> None:
    url = ["--redis-url", redis_url]
    before = time.time()
    later = ok(run("enqueue", *url, "--in", "3600", "jobs", "RecordWorker", cwd=tmp_path)).strip()
    at = ok(
        run("enqueue", *url, "--at", "2030-01-01T00:00:00+00:00", "jobs", "RecordWorker", cwd=tmp_path)
    ).strip()
    at_unix = ok(run("enqueue", *url, "--at", "1900000000", "jobs", "RecordWorker", cwd=tmp_path)).strip()
    rows = json.loads(ok(run("queue", "peek", *url, "jobs", "--where", "scheduled", "--json", cwd=tmp_path)))
    due = {row["id"]: row["due_at"] for row in rows}
    assert due[at] == 1_893_456_000.0 and due[at_unix] == 1_900_000_000.0
    assert (
        before + 3600 - 60 < due[later] < time.time() + 3600 + 60
    )  # Redis's clock, this host's: same machine
    both = run("enqueue", *url, "--in", "1", "--at", "1900000000", "jobs", "RecordWorker", cwd=tmp_path)
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_worker_queues_runs_only_the_pipelines_serving_those_queues(redis_url: str, tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "flume.toml",
        redis_url,
        pipelines={"mail": {"queue": "mail"}, "images": {"queue": "images"}},
    )
    with Flume(redis_url, NS) as flume:
        flume.enqueue("mail", "RecordWorker", ["m"])
        flume.enqueue("images", "RecordWorker", ["i"])
        ok(
            run(
                "worker",
                "--config",
                str(config),
                "--burst",
                "--queues",
                "images",
                cwd=tmp_path,
                redis_url=redis_url,
            )
        )
        stats = flume.stats(["mail", "images"])
        assert (stats["mail"]["queued"], stats["images"]["processed"]) == (1, 1)
        typo = run(
            "worker",
            "--config",
            str(config),
            "--burst",
            "--queues",
            "imgaes",
            cwd=tmp_path,
            redis_url=redis_url,
        )
        assert typo.returncode == 2
        assert (
            "--queues names 'imgaes', which no pipeline of the config serves (served: images, mail)"
            in typo.stderr
        )
    assert redis.Redis.from_url(redis_url).hgetall("test:runs") == {b"i": b"1"}


# ---- dead letters ---------------------------------------------------------------------------------------------


@pytest.fixture
def dead_jobs(redis_url: str, tmp_path: Path) -> tuple[Path, list[str]]:
    """Three FailingWorker jobs that a real worker ran once each and sent to the dead letters."""
    config = write_config(
        tmp_path / "flume.toml", redis_url, pipelines={"main": {"queue": "jobs", "retry": RETRY_NONE}}
    )
    with Flume(redis_url, NS) as flume:
        ids = [flume.enqueue("jobs", "FailingWorker", [name]) for name in ("ada", "bob", "cy")]
    ok(run("worker", "--burst", cwd=tmp_path, redis_url=redis_url))
    return config, ids


def test_dead_list_and_peek_show_the_traceback_and_the_time_of_death(
    redis_url: str, tmp_path: Path, dead_jobs: tuple[Path, list[str]]
) -> None:
    _, ids = dead_jobs
    listed = json.loads(ok(run("dead", "list", "jobs", "--json", cwd=tmp_path)))
    assert sorted(row["id"] for row in listed) == sorted(ids)
    assert [row["died_at"] for row in listed] == sorted((row["died_at"] for row in listed), reverse=True)
    now = time.time()
    for row in listed:
        assert row["error"].startswith("LookupError: no user") and row["attempt"] == 1
        assert "in _lookup_user" in row["traceback"] and "raise LookupError" in row["traceback"]
        assert now - 120 < row["died_at"] <= now + 5
    peeked = json.loads(ok(run("queue", "peek", "jobs", "--where", "dead", "--json", cwd=tmp_path)))
    assert [(r["id"], r["traceback"], r["died_at"]) for r in peeked] == [
        (r["id"], r["traceback"], r["died_at"]) for r in listed[::-1]
    ]
    text = ok(run("dead", "list", "jobs", cwd=tmp_path))
    for row in listed:
        died = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(row["died_at"]))
        assert f"{row['id']}  FailingWorker  attempts=1  died {died}  {row['error']}\n" in text
    assert "    Traceback (most recent call last):" in text and "LookupError: no user 'ada'" in text
    assert "3 of 3 dead job(s) of 'jobs' shown, newest first" in text


def test_dead_retry_by_id_resets_attempts_unless_asked_to_keep_them(
    redis_url: str, tmp_path: Path, dead_jobs: tuple[Path, list[str]]
) -> None:
    _, (ada, bob, cy) = dead_jobs
    assert "1 dead job(s) put back on 'jobs' with all their retries" in ok(
        run("dead", "retry", "jobs", ada, cwd=tmp_path)
    )
    kept = ok(run("dead", "retry", "jobs", bob, "--keep-attempts", cwd=tmp_path))
    assert "1 dead job(s) put back on 'jobs' with their attempts kept" in kept
    with Flume(redis_url, NS) as flume:
        queued = {job.id: job for job in flume.peek("jobs")}
        assert (queued[ada].attempt, queued[ada].error) == (0, None)
        assert queued[bob].attempt == 1 and queued[bob].error is not None
        assert [job.id for job in flume.dead_list("jobs")] == [cy]
    missing = run("dead", "retry", "jobs", ada, "nosuchid", cwd=tmp_path)
    assert missing.returncode == 1 and "2 of the JOB_IDs are not dead letters of 'jobs'" in missing.stderr
    assert "1 dead job(s) put back on 'jobs'" in ok(run("dead", "retry", "jobs", cwd=tmp_path)), "all of them"
    with Flume(redis_url, NS) as flume:
        assert (flume.peek("jobs")[-1].id, flume.peek("jobs")[-1].attempt) == (cy, 0)
        assert flume.dead_count("jobs") == 0


def test_dead_purge_asks_first_unless_yes(
    redis_url: str, tmp_path: Path, dead_jobs: tuple[Path, list[str]]
) -> None:
    declined = run("dead", "purge", "jobs", cwd=tmp_path, stdin="n\n")
    assert declined.returncode == 1
    assert (
        "Delete the 3 dead job(s) of 'jobs' for good? [y/N]" in declined.stderr
        and "nothing purged" in declined.stderr
    )
    no_answer = run("dead", "purge", "jobs", cwd=tmp_path)  # stdin at EOF: a script that forgot --yes
    assert no_answer.returncode == 1
    with Flume(redis_url, NS) as flume:
        assert flume.dead_count("jobs") == 3
        assert "3 dead job(s) purged from 'jobs'" in ok(run("dead", "purge", "jobs", "--yes", cwd=tmp_path))
        assert flume.dead_count("jobs") == 0


def test_the_dashboards_dead_letters_carry_the_traceback_and_the_time_of_death(
    redis_url: str, tmp_path: Path, dead_jobs: tuple[Path, list[str]]
) -> None:
    _, ids = dead_jobs
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = {k: v for k, v in os.environ.items() if k not in ("FLUME_CONFIG", "FLUME_REDIS_URL")}
    server = subprocess.Popen(
        [sys.executable, "-m", "flume_rx", "dashboard", "--port", str(port)],
        cwd=tmp_path,
        env={**base, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert server.stdout is not None
        assert "dashboard on http://" in server.stdout.readline().decode()

        def get(path: str) -> bytes:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
                        return bytes(answer.read())
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise
                    time.sleep(0.05)

        jobs = json.loads(get("/api/dead?queue=jobs"))["jobs"]
        page = get("/").decode()
    finally:
        server.terminate()
        server.communicate(timeout=30)
    assert sorted(job["id"] for job in jobs) == sorted(ids)
    assert all("in _lookup_user" in job["traceback"] and job["died_at"] > 0 for job in jobs)
    assert 'el("details"' in page and "job.traceback" in page and "job.died_at" in page
