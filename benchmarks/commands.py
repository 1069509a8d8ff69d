"""Count the commands clients send to a Redis apart from the commands its scripts run, with MONITOR.

``INFO commandstats`` counts both alike (an EVALSHA whose script makes two calls counts three), so it shows
Redis's load but not how chatty a client is. MONITOR tags each command with its source: ``lua`` for a
script's own calls, an address for a client's. MONITOR slows Redis down, so count in a pass of its own,
never while timing.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis


@dataclass(slots=True)
class CommandCount:
    """Commands seen, split by where they came from, and by name."""

    client: int = 0
    script_internal: int = 0
    by_name: Counter[str] = field(default_factory=Counter)
    by_script: Counter[str] = field(default_factory=Counter)
    """EVALSHA calls by script SHA1."""

    def as_dict(self, jobs: int) -> dict[str, Any]:
        return {
            "client_commands": self.client,
            "script_internal_commands": self.script_internal,
            "client_commands_per_job": self.client / jobs if jobs else None,
            "script_internal_commands_per_job": self.script_internal / jobs if jobs else None,
            "client_commands_by_name": dict(self.by_name.most_common()),
        }

    def script_calls(self, sha: str) -> int:
        """EVALSHA calls of the script with this SHA1."""
        return self.by_script[sha.lower()]


class MonitorCounter:
    """Counts every command sent to ``url`` between :meth:`start` and :meth:`stop`, except its own.

    >>> counter = MonitorCounter(url)  # doctest: +SKIP
    >>> counter.start(); run_the_workload(); counts = counter.stop()  # doctest: +SKIP
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self._marker = f"bench-monitor-{uuid.uuid4().hex}"
        self._count = CommandCount()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._read, name="bench-monitor", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("MONITOR did not start within 10 s")
        # The marker tells the reader where counting starts: everything before it is set-up.
        redis.Redis.from_url(self._url).echo(self._marker + ":start")

    def stop(self, timeout_s: float = 120.0) -> CommandCount:
        """Ends the count once MONITOR has caught up with every command sent so far."""
        redis.Redis.from_url(self._url).echo(self._marker + ":end")
        assert self._thread is not None
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise RuntimeError(f"MONITOR did not catch up within {timeout_s:.0f} s")
        if self._error is not None:
            raise RuntimeError(f"MONITOR failed: {self._error}") from self._error
        return self._count

    def _read(self) -> None:
        counting = False
        try:
            client = redis.Redis.from_url(self._url)
            with client.monitor() as monitor:
                self._ready.set()
                for entry in monitor.listen():
                    command = str(entry.get("command", ""))
                    if self._marker in command:
                        if command.endswith(":end"):
                            return
                        counting = True
                        continue
                    if not counting:
                        continue
                    if entry.get("client_type") == "lua":
                        self._count.script_internal += 1
                    else:
                        self._count.client += 1
                        name, _, rest = command.partition(" ")
                        self._count.by_name[name.upper()] += 1
                        if name.upper() == "EVALSHA":
                            self._count.by_script[rest.partition(" ")[0].lower()] += 1
        except BaseException as error:  # reported by stop()
            self._error = error
            self._ready.set()
