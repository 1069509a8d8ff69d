"""Where the command line's tables go: a terminal, or a pipe or file that must get every column whole."""

from __future__ import annotations

import sys

from rich.console import Console

PIPED_WIDTH = 100_000
"""Wide enough that rich never cuts or wraps a table for lack of room."""


def table_console() -> Console:
    """A console of the terminal's width, or of unlimited width when stdout is piped or redirected, so a script
    or a file gets every column and cell whole (rich would otherwise fit tables into 80 columns)."""
    return Console() if sys.stdout.isatty() else Console(width=PIPED_WIDTH)
