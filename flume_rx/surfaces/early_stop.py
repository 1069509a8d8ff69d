"""A SIGTERM that comes while a worker process still starts: kept, so the worker stops gracefully once it runs.

A worker process spends its first moments (seconds on a loaded machine) importing flume_rx and the worker
modules, reading the config and checking Redis before its event loop handles SIGTERM. A SIGTERM then, from a
supervisor, a deploy or a test stopping what it just started, would end the process by the default action
(exit -15). Caught here from the command's first lines, it is remembered instead, and the runtime stops at once
when it starts: nothing was fetched, so nothing is handed back, and the exit code is 0.

Kept light (the standard library only) so the command line can import it before anything slow. SIGINT is left
to Python: during start-up it raises KeyboardInterrupt, which ends the command at once with nothing held.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

_caught = threading.Event()


def catch_sigterm() -> None:
    """From now on, SIGTERM is remembered (see :func:`take_sigterm`) rather than ending the process.

    Only in the main thread, where Python runs signal handlers; elsewhere it does nothing. The worker's event
    loop later puts its own handler in place of this one.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _remember)


def take_sigterm() -> bool:
    """Whether a SIGTERM was caught since :func:`catch_sigterm` and not taken yet; taking it forgets it."""
    caught = _caught.is_set()
    _caught.clear()
    return caught


def _remember(_signum: int, _frame: FrameType | None) -> None:
    _caught.set()
