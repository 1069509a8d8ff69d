"""Errors that point the right way: each names what is wrong and the fix, in one line, with no misleading
advice (a bad database number is not a Redis version problem, a wrong password is not an unreachable
server, a worker module's own broken import is not a PYTHONPATH problem)."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from flume_rx import ConfigError, Flume, StoreError
from flume_rx.model import config as config_module
from flume_rx.surfaces.embedded import RedisServer
from tests.faults.harness import ROOT


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FLUME_CONFIG", "FLUME_REDIS_URL")}
    return subprocess.run(
        [sys.executable, "-m", "flume_rx", *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_database_number_out_of_range_says_so(redis_url: str, tmp_path: Path) -> None:
    url = redis_url.rsplit("/", 1)[0] + "/99"
    with Flume(url, "m") as flume, pytest.raises(StoreError) as raised:
        flume.stats(["q"])
    message = str(raised.value)
    assert "has no database with that number (DB index is out of range)" in message
    assert "below its `databases` setting (16 by default)" in message and "version" not in message
    result = _cli("stats", "--redis-url", url, cwd=tmp_path)
    assert (
        result.returncode == 2
        and result.stderr.count("\n") == 1
        and "DB index is out of range" in result.stderr
    )


@pytest.fixture(scope="module")
def password_server() -> Iterator[RedisServer]:
    with RedisServer(password="right-one") as server:
        yield server


@pytest.mark.parametrize("credentials", [":wrong-one@", ""], ids=["wrong password", "no password"])
def test_a_wrong_or_missing_password_says_authentication_failed(
    password_server: RedisServer, credentials: str
) -> None:
    url = f"redis://{credentials}127.0.0.1:{password_server.port}/0"
    with Flume(url, "m") as flume, pytest.raises(StoreError) as raised:
        flume.stats(["q"])
    message = str(raised.value)
    assert message.startswith(
        f"Redis at redis://127.0.0.1:{password_server.port}/0 refused to authenticate us"
    )
    assert "check the user and password in redis_url" in message
    assert "cannot reach" not in message and "wrong-one" not in message
    with Flume(password_server.url, "m") as flume:
        assert flume.stats(["q"])["q"]["queued"] == 0, "the right password works"


@pytest.mark.parametrize(
    "make", [lambda url: Flume(url), lambda url: config_module.parse({"redis_url": url})]
)
def test_a_bad_url_lists_every_scheme_including_cluster(make: object) -> None:
    with pytest.raises(ConfigError) as raised:
        make("http://127.0.0.1:6379/0")  # type: ignore[operator]
    message = str(raised.value)
    assert "redis://..., rediss://..., unix://..., redis+cluster://..., rediss+cluster://..." in message


def _worker_with_module(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    package = tmp_path / "brokenapp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "workers.py").write_text(body)
    (tmp_path / "flume.toml").write_text(
        'redis_url = "redis://127.0.0.1:1/0"\nimports = ["brokenapp.workers"]\n[pipelines.main]\nqueue = "q"\n'
    )
    return _cli("worker", cwd=tmp_path)


def test_a_worker_module_whose_own_import_fails_shows_that_error_and_its_traceback(tmp_path: Path) -> None:
    result = _worker_with_module(tmp_path, "from flume_rx import worker\nimport requests_that_do_not_exist\n")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert f'File "{tmp_path / "brokenapp" / "workers.py"}", line 2, in <module>' in result.stderr
    assert "ModuleNotFoundError: No module named 'requests_that_do_not_exist'" in result.stderr
    assert "frozen importlib" not in result.stderr and "PYTHONPATH" not in result.stderr
    assert lines[-1] == (
        "flume-rx: worker module 'brokenapp.workers' listed in imports raised ModuleNotFoundError while being "
        "imported (No module named 'requests_that_do_not_exist'); fix the error in the traceback above"
    )


def test_a_worker_module_with_a_syntax_error_shows_it_too(tmp_path: Path) -> None:
    result = _worker_with_module(tmp_path, "def broken(:\n    pass\n")
    assert result.returncode == 2 and "SyntaxError" in result.stderr and "workers.py" in result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        "flume-rx: worker module 'brokenapp.workers' listed in imports"
    )


def test_a_worker_module_that_is_not_there_says_where_to_look(tmp_path: Path) -> None:
    (tmp_path / "flume.toml").write_text('imports = ["nothere.workers"]\n[pipelines.main]\nqueue = "q"\n')
    result = _cli("worker", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "flume-rx: cannot find worker module 'nothere.workers' listed in imports (No module named 'nothere'); "
        "check the name, and run the worker from the directory that holds it or pass --path DIR"
    )


class _NotSES(http.server.BaseHTTPRequestHandler):
    """An endpoint that is not SES: every request gets a multi-line HTML 404 page."""

    def do_GET(self) -> None:
        self._not_found()

    def do_POST(self) -> None:
        self._not_found()

    def _not_found(self) -> None:
        body = b"<!doctype html>\n<html>\n<head><title>404 Not Found</title></head>\n<body>\n<h1>Not Found</h1>\n</body>\n</html>\n"
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_from_ses_against_an_endpoint_without_get_account_names_the_setting_and_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("boto3")
    from flume_rx.integrations import ses

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotSES)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(ConfigError) as raised:
            ses.rate_from_ses(ses.default_client(endpoint_url=endpoint), 0.9)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    message = str(raised.value)
    assert "\n" not in message and "<" not in message and "retried" not in message
    assert message.startswith(
        f"rate_limiter.from_ses could not read the account's send rate: sesv2 GetAccount at {endpoint} failed "
        "(HTTP 404"
    )
    assert message.endswith(
        "point the worker at SES (an emulator needs GetAccount) or set rate_limiter.allowed instead of from_ses"
    )
