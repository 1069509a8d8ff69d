"""Where every standalone benchmark leaves its report (one JSON file, its folder made if need be), and the
commit each tree it measured was at."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any


def save_report(out: Path, report: dict[str, Any]) -> None:
    """Write ``report`` to ``out`` as indented JSON and say where it went."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"wrote {out}")


def commit_of(tree: Path, *, short: bool = True) -> str:
    """The commit ``tree`` (a checkout or worktree) has checked out; empty when git cannot say."""
    done = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", *(["--short"] if short else []), "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip()
