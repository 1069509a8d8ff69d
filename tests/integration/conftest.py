"""Fixtures of the integration tests: a RedisStore on the private Redis, and a private moto server emulating
AWS SES on 127.0.0.1 with boto3 clients pointed at it.

The server runs in its own process (``python -m moto.server``) so its threads and warnings stay out of the
test process, and worker processes spawned by a pipeline test reach it over HTTP like any SES endpoint.
Credentials are dummies set in the environment; nothing here can reach AWS.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import boto3
import pytest

from flume_rx.store import RedisStore

if TYPE_CHECKING:
    from mypy_boto3_ses import SESClient
    from mypy_boto3_sesv2 import SESV2Client

REGION = "us-east-1"
SENDER = "sender@flume.example"

_DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    # Only the variable boto3 reads: setting AWS_REGION too once hid that boto3 ignores it.
    "AWS_DEFAULT_REGION": REGION,
    # No shared config or credentials file of the machine may leak into the tests.
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
    "NO_PROXY": "127.0.0.1,localhost",
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class MotoServer:
    """A ``moto.server`` process serving every AWS API moto emulates on ``url``."""

    def __init__(self, port: int, process: subprocess.Popen[bytes], log_path: str) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.process = process
        self.log_path = log_path

    def reset(self) -> None:
        """Forget every identity, message and counter (moto's own reset endpoint)."""
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def sent_messages(self) -> list[dict[str, object]]:
        """What moto recorded as sent, from its model dump (``/moto-api/data.json``)."""
        with urllib.request.urlopen(f"{self.url}/moto-api/data.json", timeout=30) as response:
            data = json.load(response)
        messages: list[dict[str, object]] = data.get("ses", {}).get("Message", [])
        return messages

    def log_tail(self) -> str:
        with open(self.log_path, errors="replace") as log:
            return log.read()[-2000:]


def _wait_until_up(server: MotoServer, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"moto server exited with {server.process.returncode}: {server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.url}/moto-api/", timeout=1) as response:
                response.read()
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    raise RuntimeError(
        f"moto server did not answer on {server.url} within {timeout_s} s: {server.log_tail()}"
    )


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One moto server for the session, on a free port of 127.0.0.1, with dummy AWS credentials in the env.

    The env also points boto3's default chain at it (``AWS_ENDPOINT_URL_SESV2`` / ``_SES``), so
    `flume_rx.integrations.ses.default_client()` in a spawned worker process finds it too.
    """
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="flume-moto-") as tmp:
        log_path = os.path.join(tmp, "moto.log")
        env = {**os.environ, **_DUMMY_ENV}
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        server = MotoServer(port, process, log_path)
        try:
            _wait_until_up(server)
            with pytest.MonkeyPatch.context() as patch:
                for key, value in _DUMMY_ENV.items():
                    patch.setenv(key, value)
                patch.setenv("AWS_ENDPOINT_URL_SESV2", server.url)
                patch.setenv("AWS_ENDPOINT_URL_SES", server.url)
                yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def ses_server(moto_server: MotoServer) -> MotoServer:
    """The moto server, reset, with ``SENDER`` verified as an SES identity (through SESv2)."""
    moto_server.reset()
    sesv2_client(moto_server).create_email_identity(EmailIdentity=SENDER)
    return moto_server


@pytest.fixture
def sesv2(moto_server: MotoServer) -> SESV2Client:
    """A plain SESv2 client on the moto server."""
    return sesv2_client(moto_server)


@pytest.fixture
def ses_v1(moto_server: MotoServer) -> SESClient:
    """An SES v1 client, for what moto only emulates there: send statistics and the send quota."""
    return boto3.session.Session().client("ses", region_name=REGION, endpoint_url=moto_server.url)


def sesv2_client(server: MotoServer) -> SESV2Client:
    return boto3.session.Session().client("sesv2", region_name=REGION, endpoint_url=server.url)


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    s = RedisStore.from_url(redis_url)
    yield s
    await s.aclose()
