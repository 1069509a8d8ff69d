"""``flume-rx dashboard`` in a process of its own, and plain HTTP requests to it with any headers."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from flume_rx.surfaces.embedded import free_port

from .harness import ROOT


@dataclass(frozen=True)
class Reply:
    status: int
    # Header names in lower case.
    headers: Mapping[str, str]
    body: str


@dataclass(frozen=True)
class Dashboard:
    host: str
    port: int

    def request(
        self,
        method: str,
        path: str,
        body: str | bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """One request over a fresh connection; a ``Host`` in ``headers`` replaces the real one."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            given = dict(headers or {})
            connection.putrequest(method, path, skip_host="Host" in given, skip_accept_encoding=True)
            for name, value in given.items():
                connection.putheader(name, value)
            data = body.encode() if isinstance(body, str) else body
            if data is not None:
                connection.putheader("Content-Length", str(len(data)))
            connection.endheaders(data)
            response = connection.getresponse()
            headers = {name.lower(): value for name, value in response.getheaders()}
            return Reply(response.status, headers, response.read().decode("utf-8", "replace"))
        finally:
            connection.close()


@contextmanager
def dashboard_process(config_file: Path, *args: str) -> Iterator[Dashboard]:
    """Start ``flume-rx dashboard --config FILE ARGS`` on a free port of 127.0.0.1; stop it after."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flume_rx",
            "dashboard",
            "--config",
            str(config_file),
            "--port",
            str(port),
            *args,
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    dashboard = Dashboard("127.0.0.1", port)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                dashboard.request("GET", "/api/overview", headers={"Host": f"127.0.0.1:{port}"})
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    _, stderr = process.communicate(timeout=5)
                    raise AssertionError(f"the dashboard did not start: {stderr.decode()}") from None
                time.sleep(0.1)
        yield dashboard
    finally:
        process.terminate()
        process.communicate(timeout=30)
