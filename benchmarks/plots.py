"""Matplotlib figures from a results JSON: what notebooks/benchmarks.ipynb shows and saves in docs/bench/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

LIMIT = 400


def load(path: str | Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(path).read_text())
    return data


def latest(results_dir: str | Path, prefix: str) -> Path | None:
    """The newest ``<prefix>-*.json`` in ``results_dir`` (names sort by time)."""
    found = sorted(Path(results_dir).glob(f"{prefix}-*.json"))
    return found[-1] if found else None


def _ok(data: dict[str, Any], scenario: str) -> dict[str, Any]:
    entries = data.get("scenarios", {}).get(scenario, {})
    return {
        name: e["result"] for name, e in entries.items() if isinstance(e, dict) and e.get("status") == "ok"
    }


def failures(data: dict[str, Any]) -> list[str]:
    """One line per peer and scenario that failed, so no failure goes unseen."""
    out = []
    for scenario, entries in data.get("scenarios", {}).items():
        if isinstance(entries, dict) and entries.get("status") == "failed":
            out.append(f"{scenario}: {entries.get('error')}")
            continue
        for name, entry in entries.items():
            if isinstance(entry, dict) and entry.get("status") == "failed":
                out.append(f"{scenario} / {name}: {entry.get('error')}")
    return out


def throughput(data: dict[str, Any]) -> Figure | None:
    results = _ok(data, "throughput")
    if not results:
        return None
    names = sorted(results, key=lambda n: -(results[n].get("processes_1", {}).get("median_jobs_per_s") or 0))
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.4
    for offset, key, label in (
        (-width / 2, "processes_1", "1 process"),
        (width / 2, "processes_2", "2 processes"),
    ):
        values = [results[n].get(key, {}).get("median_jobs_per_s") or 0 for n in names]
        bars = ax.bar([i + offset for i in range(len(names))], values, width, label=label)
        ax.bar_label(
            bars, labels=[f"{v:,.0f}" if v else "" for v in values], fontsize=7, rotation=90, padding=2
        )
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("no-op jobs/s (median)")
    ax.set_title("Draining a backlog of no-op jobs")
    ax.legend()
    fig.tight_layout()
    return fig


def rate_limit(data: dict[str, Any]) -> Figure | None:
    results = _ok(data, "rate_limit")
    if not results:
        return None
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, result in results.items():
        counts = result["samples"][0]["starts_per_100ms"]
        # Starts in the trailing second at each 100 ms step: the quantity the limit bounds.
        rolling = [sum(counts[max(0, i - 9) : i + 1]) for i in range(len(counts))]
        ax.plot([i / 10 for i in range(len(rolling))], rolling, label=name)
    ax.axhline(LIMIT, color="black", linestyle="--", linewidth=1, label=f"limit {LIMIT}/s")
    ax.set_xlabel("seconds since the first start")
    ax.set_ylabel("starts in the trailing 1 s")
    ax.set_title("Shared rate limit, 3 processes")
    ax.legend()
    fig.tight_layout()
    return fig


def slow_downstream(data: dict[str, Any]) -> Figure | None:
    results = _ok(data, "slow_downstream")
    if not results:
        return None
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for name, result in results.items():
        series = result["series"]
        t = [row["t_s"] for row in series]
        top.plot(t, [row["in_flight"] for row in series], label=name)
        bottom.plot(t, [row["rss_mb"] for row in series], label=name)
        switch = next((row["t_s"] for row in series if row["delay_ms"] == 200), None)
        if switch is not None:
            top.axvline(switch, color="grey", linewidth=0.8)
            bottom.axvline(switch, color="grey", linewidth=0.8)
    top.set_ylabel("jobs taken, not done")
    top.set_title("Job latency 5 ms, then 200 ms (grey line)")
    bottom.set_ylabel("worker RSS (MB)")
    bottom.set_xlabel("seconds since the workers started")
    top.legend()
    fig.tight_layout()
    return fig


def memory(data: dict[str, Any]) -> Figure | None:
    results = _ok(data, "memory")
    if not results:
        return None
    fig, ax = plt.subplots(figsize=(9, 4))
    for name, result in results.items():
        series = result["series"]
        ax.plot([row["done"] for row in series], [row["rss_mb"] for row in series], label=name)
    ax.set_xlabel("jobs done")
    ax.set_ylabel("worker RSS (MB)")
    ax.set_title("Draining a backlog with a 10 ms job")
    ax.legend()
    fig.tight_layout()
    return fig


def latency(data: dict[str, Any]) -> Figure | None:
    results = _ok(data, "latency")
    if not results:
        return None
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, result in results.items():
        cdf = result["samples"][0]["cdf_ms"]
        ax.plot(cdf, [i / (len(cdf) - 1) for i in range(len(cdf))], label=name)
    ax.set_xscale("log")
    ax.set_xlabel("enqueue to start (ms, log scale)")
    ax.set_ylabel("fraction of jobs")
    ax.set_title("Latency at 500 jobs/s offered, 1 worker process")
    ax.legend()
    fig.tight_layout()
    return fig


FIGURES = {
    "throughput": throughput,
    "rate_limit": rate_limit,
    "slow_downstream": slow_downstream,
    "memory": memory,
    "latency": latency,
}


def save_all(data: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Render every figure the data allows and save each as ``<name>.png``; returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, make in FIGURES.items():
        fig = make(data)
        if fig is None:
            continue
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
