"""TLS (CA, then client certificates) and an ACL user against real redis-servers; passwords never leak."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import pytest
import redis

from flume_rx import Flume, worker
from flume_rx.model import config as config_module
from flume_rx.model.errors import StoreError
from flume_rx.model.registry import unregister
from flume_rx.surfaces.embedded import RedisServer, TlsFiles, find_redis_server, free_port
from flume_rx.surfaces.runtime import WorkerRuntime

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "s3cret-Pa55word-do-not-log"
USER = "flume"


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = tmp_path_factory.mktemp("certs")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "2", "-subj", "/CN=flume-test-ca", cwd=d)  # fmt: skip
    for name, usage in (("server", "serverAuth"), ("client", "clientAuth")):
        (d / f"{name}.ext").write_text(f"subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN=flume-test-{name}", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d)  # fmt: skip
    return Certs(d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key")


def _tls_url(port: int, certs: Certs, *, user: str | None, password: str | None, client_cert: bool) -> str:
    query = {"ssl_ca_certs": str(certs.ca)}
    if client_cert:
        query |= {"ssl_certfile": str(certs.client_cert), "ssl_keyfile": str(certs.client_key)}
    auth = f"{user or ''}:{password}@" if password else ""
    return f"rediss://{auth}127.0.0.1:{port}/0?{urlencode(query)}"


def _add_acl_user(admin: redis.Redis) -> None:
    # The user may touch the test namespace only, and no admin commands; default can no longer log in.
    admin.execute_command(
        "ACL", "SETUSER", USER, "on", f">{PASSWORD}", "~{t:*", "~t:*", "&*", "+@all", "-@admin", "-@dangerous",
        "+script|load", "+time", "+info",
    )  # fmt: skip
    admin.execute_command("ACL", "SETUSER", "default", "off")


@pytest.fixture(scope="module")
def mtls_server(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A redis-server that serves TLS only and demands a client certificate, with an ACL user."""
    workdir = tmp_path_factory.mktemp("mtls-redis")
    port = free_port()
    args = [
        find_redis_server(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
        "--tls-cert-file", str(certs.server_cert), "--tls-key-file", str(certs.server_key),
        "--tls-ca-cert-file", str(certs.ca), "--tls-auth-clients", "yes",
        "--dir", str(workdir), "--save", "", "--appendonly", "no", "--logfile", str(workdir / "redis.log"),
    ]  # fmt: skip
    process = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    admin = redis.Redis.from_url(_tls_url(port, certs, user=None, password=None, client_cert=True))
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                admin.ping()
                break
            except redis.exceptions.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"TLS redis-server did not start: {(workdir / 'redis.log').read_text()}"
                    ) from None
                time.sleep(0.05)
        _add_acl_user(admin)
        yield port
    finally:
        admin.close()
        process.terminate()
        process.wait(10)


@pytest.fixture
def echo_worker() -> Iterator[list[int]]:
    seen: list[int] = []

    async def echo(n: int) -> None:
        seen.append(n)

    worker("TlsEcho")(echo)
    yield seen
    unregister("TlsEcho")


def _drain(url: str) -> None:
    config = config_module.parse(
        {"redis_url": url, "namespace": "t", "pipelines": {"main": {"queue": "jobs", "max_demand": 10}}}
    )
    asyncio.run(WorkerRuntime(config, burst=True).run())


def test_tls_with_a_ca_and_no_client_certificate(certs: Certs, echo_worker: list[int]) -> None:
    files = TlsFiles(str(certs.server_cert), str(certs.server_key), str(certs.ca))
    with RedisServer(tls=files) as server:
        url = _tls_url(server.port, certs, user=None, password=None, client_cert=False)
        with Flume(url, "t") as flume:
            flume.bulk_enqueue("jobs", [("TlsEcho", [i]) for i in range(30)])
            _drain(url)
            assert sorted(echo_worker) == list(range(30))
            assert flume.stats(["jobs"])["jobs"]["processed"] == 30
        # Plain TCP to a TLS port is refused, with an error naming the endpoint.
        with (
            pytest.raises(StoreError, match="cannot reach Redis"),
            Flume(f"redis://127.0.0.1:{server.port}/0", "t") as plain,
        ):
            plain.stats(["jobs"])


def test_acl_user_with_client_certificates_end_to_end(
    mtls_server: int, certs: Certs, echo_worker: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = _tls_url(mtls_server, certs, user=USER, password=PASSWORD, client_cert=True)
    with Flume(url, "t") as flume:
        flume.bulk_enqueue("jobs", [("TlsEcho", [i]) for i in range(50)])
        _drain(url)
        stats = flume.stats(["jobs"])
    assert sorted(echo_worker) == list(range(50))
    assert stats["jobs"]["processed"] == 50
    assert PASSWORD not in caplog.text and PASSWORD not in repr(stats)


def test_refusals_name_the_endpoint_but_never_the_password(mtls_server: int, certs: Certs) -> None:
    wrong_password = _tls_url(mtls_server, certs, user=USER, password=PASSWORD + "x", client_cert=True)
    no_client_cert = _tls_url(mtls_server, certs, user=USER, password=PASSWORD, client_cert=False)
    for url in (wrong_password, no_client_cert):
        with pytest.raises(StoreError) as caught, Flume(url, "t") as flume:
            flume.enqueue("jobs", "TlsEcho", [1])
        message = str(caught.value)
        assert f"127.0.0.1:{mtls_server}" in message
        assert PASSWORD not in message and "Pa55word" not in message


def test_cli_output_never_shows_the_password(mtls_server: int, certs: Certs, tmp_path: Path) -> None:
    good = _tls_url(mtls_server, certs, user=USER, password=PASSWORD, client_cert=True)
    bad = _tls_url(mtls_server, certs, user=USER, password=PASSWORD + "x", client_cert=True)
    outputs = []
    for url in (good, bad):
        path = tmp_path / "c.toml"
        path.write_text(f'redis_url = "{url}"\nnamespace = "t"\n[pipelines.main]\nqueue = "jobs"\n')
        for command in (["stats", "--json"], ["worker", "--burst"]):
            result = subprocess.run(
                [sys.executable, "-m", "flume_rx", command[0], "--config", str(path), *command[1:]],
                cwd=ROOT,
                env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                capture_output=True,
                timeout=60,
            )
            outputs.append((url is good, command[0], result.returncode, result.stdout + result.stderr))
    for is_good, command, code, text in outputs:
        assert PASSWORD.encode() not in text and b"Pa55word" not in text, (command, text)
        if command == "stats":
            assert code == (0 if is_good else 2), text
    worker_bad = [text for is_good, command, _, text in outputs if command == "worker" and not is_good]
    assert b"WRONGPASS" in worker_bad[0] or b"invalid username-password" in worker_bad[0]
