"""The README's Quickstart, followed literally in an empty directory, so the README cannot rot.

Every code block of the section is used as written: a block whose first line is a comment naming a file
(``# myapp/workers.py``) is written to that file, and each line of the shell block is run as shown, with the
installed ``flume-rx`` script, from that directory, with no PYTHONPATH. The one change: the README's Redis URL
(``redis://127.0.0.1:6379/0``) becomes the test's private server, so 6379 is never touched.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from flume_rx import Flume

ROOT = Path(__file__).resolve().parents[1]
README_REDIS_URL = "redis://127.0.0.1:6379/0"
NAMESPACE = "flume"
QUEUE = "email_service"


@dataclass
class Quickstart:
    files: dict[str, str]  # path -> text, as shown
    commands: list[str]  # each line of the shell block, comments dropped


def parse_quickstart(readme: str) -> Quickstart:
    """The files and shell commands of the README's ``## Quickstart`` section."""
    match = re.search(r"^## Quickstart\n(.*?)^## ", readme, re.S | re.M)
    assert match, "README.md has no '## Quickstart' section followed by another section"
    files: dict[str, str] = {}
    commands: list[str] = []
    for language, body in re.findall(r"^```(\w*)\n(.*?)^```", match.group(1), re.S | re.M):
        first = body.splitlines()[0]
        named = re.fullmatch(r"#\s*([\w./-]+\.\w+)\s*", first)
        if language == "sh":
            commands += [line for line in body.splitlines() if shlex.split(line, comments=True)]
        else:
            assert named, f"a {language} block of the Quickstart does not name its file: {first!r}"
            files[named.group(1)] = body
    return Quickstart(files, commands)


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    directory = tmp_path / "newcomer"
    directory.mkdir()
    return directory


@pytest.fixture
def env() -> dict[str, str]:
    """The user's shell: the venv's scripts first on PATH, no PYTHONPATH pointing into this checkout."""
    scripts = str(Path(sys.executable).parent)
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FLUME_REDIS_URL")}
    environ["PATH"] = scripts + os.pathsep + environ.get("PATH", "")
    return environ


@pytest.fixture
def background() -> Iterator[list[subprocess.Popen[str]]]:
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(30)


def _argv(command: str) -> list[str]:
    argv = shlex.split(command, comments=True)
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    if argv[0] == "flume-rx":
        script = Path(sys.executable).parent / "flume-rx"
        assert script.exists(), f"the flume-rx script is not installed next to {sys.executable}"
        return [str(script), *argv[1:]]
    raise AssertionError(f"the Quickstart runs a command this test does not know: {command!r}")


# Generous bounds: they catch a hang, and a shared machine may be slow to start five Python processes.
@pytest.mark.timeout(900)
def test_the_readme_quickstart_works_as_written(
    redis_url: str, workdir: Path, env: dict[str, str], background: list[subprocess.Popen[str]]
) -> None:
    quickstart = parse_quickstart((ROOT / "README.md").read_text(encoding="utf-8"))
    assert set(quickstart.files) == {"myapp/workers.py", "enqueue.py", "flume.toml"}
    substituted = 0
    for name, text in quickstart.files.items():
        substituted += text.count(README_REDIS_URL)
        text = text.replace(README_REDIS_URL, redis_url)
        assert "6379" not in text, f"{name} of the Quickstart names a Redis other than {README_REDIS_URL}"
        path = workdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert substituted == 2, (
        "the Quickstart's enqueue.py and flume.toml each name the README's Redis URL once"
    )
    assert all("6379" not in command for command in quickstart.commands)

    worker_commands = [c for c in quickstart.commands if _argv(c)[1:2] == ["worker"]]
    assert len(worker_commands) == 1, "the Quickstart starts one worker"
    outputs: dict[str, str] = {}
    worker_log = workdir.parent / "worker.log"
    for command in quickstart.commands:
        if command in worker_commands:  # it keeps running: a terminal of its own
            with open(worker_log, "w") as log:  # a file, not a pipe nobody reads while it runs
                worker = subprocess.Popen(
                    _argv(command), cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, text=True
                )
            background.append(worker)
            continue
        result = subprocess.run(
            _argv(command), cwd=workdir, env=env, capture_output=True, text=True, timeout=180
        )
        assert result.returncode == 0, f"`{command}` failed:\n{result.stdout}\n{result.stderr}"
        outputs[command] = result.stdout

    enqueued_by_cli = next(out for command, out in outputs.items() if " enqueue " in command).strip()
    assert re.fullmatch(r"\S+", enqueued_by_cli), (
        f"flume-rx enqueue printed {enqueued_by_cli!r}, not a job id"
    )
    with Flume(redis_url, NAMESPACE) as flume:
        # enqueue.py: one job, a bulk of two, one due in 5 s and one in 2030; the CLI: one more.
        def done() -> bool:
            assert worker.poll() is None, f"the worker exited:\n{worker_log.read_text()}"
            stats = flume.stats([QUEUE])[QUEUE]
            return stats["processed"] == 5 and stats["in_flight"] == 0

        _wait(done, 300, "the Quickstart's jobs to be done")
        stats = flume.stats([QUEUE])[QUEUE]
        assert (stats["queued"], stats["scheduled"], stats["retry"], stats["dead"]) == (0, 1, 0, 0)
        assert stats["failed"] == 0 and not stats["paused"]

    worker.send_signal(signal.SIGTERM)
    assert worker.wait(120) == 0, worker_log.read_text()
    assert "Traceback" not in worker_log.read_text(), worker_log.read_text()
