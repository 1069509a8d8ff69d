"""A worker module whose import waits at a gate: it holds a worker process in the middle of its start-up.

A test names it in the config's ``imports`` and sets FLUME_TEST_IMPORT_GATE to a path. The import writes
``<gate>.reached``, then waits until ``<gate>`` exists (at most a minute, so a broken test cannot hang).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_gate = Path(os.environ["FLUME_TEST_IMPORT_GATE"])
_gate.with_suffix(".reached").touch()
_deadline = time.monotonic() + 60
while not _gate.exists() and time.monotonic() < _deadline:
    time.sleep(0.01)
