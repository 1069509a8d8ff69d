"""Where every standalone benchmark leaves its report: one JSON file, its folder made if need be."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def save_report(out: Path, report: dict[str, Any]) -> None:
    """Write ``report`` to ``out`` as indented JSON and say where it went."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"wrote {out}")
