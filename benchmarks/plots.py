"""Matplotlib figures from a results JSON: what notebooks/benchmarks.ipynb shows and saves in docs/bench/."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

LIMIT = 400
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def load(path: str | Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(path).read_text())
    return data


def load_if_present(path: str | Path) -> dict[str, Any] | None:
    """The JSON a standalone script (``benchmarks.priorities``, ``benchmarks.per_key_limits``) left, if any."""
    return load(path) if Path(path).is_file() else None


def latest(results_dir: str | Path, *prefixes: str, scenario: str | None = None) -> Path | None:
    """The newest suite run among ``<prefix>-*.json`` in ``results_dir``, by the time it started (names do not
    sort by time: ``shapes-quiet-20261202`` sorts after ``shapes-20k-20261203``); with ``scenario``, the newest
    that measured it for at least one peer. Files that are not a suite run (no ``started``) are left out."""
    runs: list[tuple[str, Path]] = []
    for prefix in prefixes:
        for path in Path(results_dir).glob(f"{prefix}-*.json"):
            try:
                data = load(path)
            except (OSError, ValueError):
                continue
            if not isinstance(data, dict) or not isinstance(data.get("started"), str):
                continue
            if scenario is not None and not _ok(data, scenario):
                continue
            runs.append((data["started"], path))
    return max(runs)[1] if runs else None


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


def _spread(values: list[float]) -> tuple[float, float, float]:
    """Median, and its distance to the lowest and highest sample (for error bars)."""
    ordered = sorted(values)
    mid = statistics.median(ordered)
    return mid, mid - ordered[0], ordered[-1] - mid


def priorities(data: dict[str, Any]) -> Figure | None:
    """Bulk share against its weight's share, and the longest run without a bulk start, per scenario."""
    results = data.get("results") or []
    if not results:
        return None
    names = [r["scenario"] for r in results]
    fig, (share, runs) = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.4
    measured = [_spread([s["bulk_share"] for s in r.get("samples") or [r]]) for r in results]
    bars = share.bar(
        [i - width / 2 for i in range(len(names))],
        [m[0] for m in measured],
        width,
        yerr=[[m[1] for m in measured], [m[2] for m in measured]],
        label="measured (median, min-max)",
    )
    share.bar_label(bars, labels=[f"{m[0]:.3f}" for m in measured], fontsize=7, padding=2)
    expected = [r["bulk_share_expected"] for r in results]
    bars = share.bar([i + width / 2 for i in range(len(names))], expected, width, label="weight's share")
    share.bar_label(bars, labels=[f"{v:.3f}" for v in expected], fontsize=7, padding=2)
    share.set_xticks(range(len(names)), names, rotation=20, ha="right")
    share.set_ylabel("bulk share of starts, both backlogged")
    share.set_title("Fairness: bulk queue's share")
    share.legend(fontsize=8)
    longest = [r["longest_run_without_bulk"] for r in results]
    bars = runs.bar(range(len(names)), longest, color="tab:grey")
    runs.bar_label(bars, labels=[f"{v:,.0f}" for v in longest], fontsize=7, padding=2)
    runs.set_yscale("log")
    runs.set_xticks(range(len(names)), names, rotation=20, ha="right")
    runs.set_ylabel("starts (median, log scale)")
    runs.set_title("Longest run of starts without a bulk job")
    jobs = data.get("jobs_per_queue")
    fig.suptitle(f"Two queues of one pipeline, {jobs:,} jobs each" if jobs else "Two queues of one pipeline")
    fig.tight_layout()
    return fig


def per_key_limits(data: dict[str, Any]) -> Figure | None:
    """Redis round trips per job and the busiest second of any key, per repetition, with 1,000 keys."""
    samples = data.get("samples") or ([data] if "token_calls_per_job" in data else [])
    if not samples:
        return None
    reps = range(1, len(samples) + 1)
    fig, (calls, starts) = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.4
    for offset, key, label in (
        (-width / 2, "token_calls_per_job", "token calls (take_tokens_multi)"),
        (width / 2, "lua_round_trips_per_job", "all EVALSHA calls (fetch, tokens, settle)"),
    ):
        values = [s[key] for s in samples]
        bars = calls.bar([r + offset for r in reps], values, width, label=label)
        calls.bar_label(bars, labels=[f"{v:.3f}" for v in values], fontsize=7, padding=2)
    calls.set_xticks(list(reps))
    calls.set_xlabel("repetition")
    calls.set_ylabel("per job")
    calls.set_title("Redis round trips per job")
    calls.legend(fontsize=8)
    allowed = data.get("allowed_per_key_per_s")
    # Hand-offs are what the window bounds; first lines add the loop's lag (older files have only those).
    for offset, key, label in (
        (-width / 2, "most_handoffs_of_a_key_in_any_second", "hand-offs to the processor"),
        (width / 2, "most_starts_of_a_key_in_any_second", "first lines of the jobs"),
    ):
        if not all(key in s for s in samples):
            continue
        most = [s[key] for s in samples]
        # A run over the limit stands out in red rather than hiding among the others.
        colors = ["tab:red" if allowed and m > allowed else "tab:green" for m in most]
        hatch = "" if key.startswith("most_handoffs") else "//"
        bars = starts.bar([r + offset for r in reps], most, width, color=colors, hatch=hatch, label=label)
        starts.bar_label(bars, fontsize=7, padding=2)
    if allowed:
        starts.axhline(
            allowed, color="black", linestyle="--", linewidth=1, label=f"allowed {allowed}/s per key"
        )
        starts.set_ylim(0, allowed * 1.6)
    starts.set_xticks(list(reps))
    starts.set_xlabel("repetition")
    starts.set_title("Busiest second of any key (most in any 1 s)")
    starts.legend(fontsize=8, loc="upper left")
    keys, jobs = data.get("keys"), data.get("jobs")
    fig.suptitle(f"Per-key limits: {keys:,} keys, {jobs:,} jobs" if keys and jobs else "Per-key limits")
    fig.tight_layout()
    return fig


def adaptive_rate(data: dict[str, Any]) -> Figure | None:
    """The adaptive window's effective rate and SES's limit over time, with what SES accepted in the trailing
    second and each refusal, one panel per repetition (``benchmarks.rate_limit --mode adaptive``)."""
    runs = [r for r in data.get("runs", []) if r.get("timeline")]
    if not runs:
        return None
    fig, axes = plt.subplots(len(runs), 1, figsize=(10, 2.8 * len(runs)), sharex=True, squeeze=False)
    for index, (ax, run) in enumerate(zip(axes[:, 0], runs, strict=True)):
        t, rate, limit, accepted = (list(column) for column in zip(*run["timeline"], strict=True))
        ax.step(t, limit, where="post", color="black", linestyle="--", linewidth=1, label="SES's limit")
        ax.plot(t, rate, color="tab:blue", linewidth=1.5, label="window's effective rate")
        ax.plot(t, accepted, color="tab:green", linewidth=1, alpha=0.8, label="accepted by SES, trailing 1 s")
        refusals = [x for x in run.get("refusals_at_s", []) if x <= t[-1]]
        if refusals:
            ax.plot(refusals, [min(limit) * 0.55] * len(refusals), "|", color="tab:red", markersize=10,
                    label=f"refusals ({len(refusals)})")  # fmt: skip
        allowed = run.get("limit_per_s")
        if allowed:
            ax.axhline(allowed, color="grey", linewidth=0.8, linestyle=":", label=f"allowed {allowed}/s")
        ax.set_ylim(min(limit) * 0.5, (allowed or max(limit)) * 1.08)
        ax.set_ylabel("per second")
        shares = ", ".join(
            f"{p['share_of_downstream']:.0%} of {p['downstream_limit_per_s']}/s" for p in run["phases"]
        )
        ax.set_title(
            f"repetition {index + 1}: accepted from {run.get('settle_s', 3):g} s after each change: {shares}",
            fontsize=9,
        )
        if index == 0:
            ax.legend(fontsize=7, loc="lower right", ncol=3)
    axes[-1, 0].set_xlabel("seconds since SES's first call")
    load = data.get("medians", {}).get("load_average_1m")
    fig.suptitle(
        "Adaptive window (400/s allowed) following SES at 300/s, then 380/s"
        + (
            f" (load average {load[0]:.1f} to {load[1]:.1f} on {data.get('machine', {}).get('cores')} cores)"
            if load
            else ""
        )
    )
    fig.tight_layout()
    return fig


SHAPE_TITLES = {
    "incr": "(a) one INCR",
    "await1": "(b) await 1 ms",
    "sleep1": "(c) sleep 1 ms",
    "noop": "no-op",
}


def _shape_matrix(data: dict[str, Any], key: str) -> tuple[list[str], dict[str, list[float]]]:
    """Series names (flume_rx per config, then each peer) and, per series, one value per shape."""
    results = _ok(data, "shapes")
    series: dict[str, list[float]] = {}
    for peer, result in results.items():
        for entry in result.values():
            name = f"flume_rx ({entry['config']})" if peer == "flume_rx" else peer
            values = series.setdefault(name, [0.0] * len(SHAPE_TITLES))
            index = list(SHAPE_TITLES).index(entry["shape"])
            value = (
                entry.get(key)
                if key != "client"
                else entry.get("commands", {}).get("client_commands_per_job")
            )
            values[index] = float(value or 0.0)
    names = sorted(series, key=lambda n: (not n.startswith("flume_rx"), n))
    return names, series


def _grouped_bars(ax: Any, names: list[str], series: dict[str, list[float]], fmt: str) -> None:
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        positions = [x + (i - (len(names) - 1) / 2) * width for x in range(len(SHAPE_TITLES))]
        bars = ax.bar(positions, series[name], width, label=name)
        ax.bar_label(bars, labels=[format(v, fmt) if v else "" for v in series[name]], fontsize=6,
                     rotation=90, padding=2)  # fmt: skip
    ax.set_xticks(range(len(SHAPE_TITLES)), list(SHAPE_TITLES.values()))


def shapes(data: dict[str, Any]) -> Figure | None:
    """Jobs/s per shape and peer, one process: the users' shapes, beside the no-op."""
    names, series = _shape_matrix(data, "median_jobs_per_s")
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(11, 4.8))
    _grouped_bars(ax, names, series, ",.0f")
    ax.set_ylabel("jobs/s (median), 1 process")
    ax.set_title(
        "Jobs in users' shapes: flume_rx at its defaults, the seed's 5 stages and one CPU; peers at theirs"
    )
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    return fig


def client_commands(data: dict[str, Any]) -> Figure | None:
    """Commands each job costs the clients (scripts' own calls left out), per shape and peer."""
    names, series = _shape_matrix(data, "client")
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(11, 4.8))
    _grouped_bars(ax, names, series, ".2f")
    ax.set_yscale("log")
    ax.set_ylabel("client commands to Redis per job (log)")
    ax.set_title("Round trips each job costs, counted under MONITOR (script-internal calls apart)")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    return fig


_LATENCY_STYLES: dict[str, dict[str, Any]] = {
    "flume_rx": {"linestyle": "-", "linewidth": 2.0},
    "floor": {"linestyle": ":", "linewidth": 1.5, "color": "black"},
}
"""How :func:`latency_sync` draws flume_rx's configs and the floor; every other peer dashed."""


def latency_sync(data: dict[str, Any]) -> Figure | None:
    results = _ok(data, "latency_sync")
    if not results:
        return None
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for peer, result in results.items():
        for config, r in result.items():
            cdf = r["samples"][0]["cdf_ms"]
            name = f"flume_rx ({config})" if peer == "flume_rx" else peer
            # Eleven lines outrun the ten colours of the cycle: the style tells flume_rx, the peers and the
            # floor apart even where a colour comes round again.
            style = _LATENCY_STYLES.get(peer, {"linestyle": "--", "linewidth": 1.0})
            ax.plot(cdf, [i / (len(cdf) - 1) for i in range(len(cdf))], label=name, **style)
    ax.set_xscale("log")
    ax.set_xlabel("enqueue to start (ms, log scale)")
    ax.set_ylabel("fraction of jobs")
    ax.set_title("Latency at 200 jobs/s offered, sync worker, 1 process (first repetition)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def sync_ceiling(data: dict[str, Any]) -> Figure | None:
    """A sync job of one ``INCR``: bare threads, the least a consumer on flume_rx's scripts spends, flume_rx and
    huey, alternated in one run (``benchmarks.sync_ceiling``); the dashed line is five times huey's median."""
    runs: dict[str, list[dict[str, Any]]] = data.get("runs", {})
    if not runs:
        return None
    names = list(runs)
    rates = [[r["jobs_per_s"] for r in runs[name]] for name in names]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    bars = ax.bar(names, [statistics.median(r) for r in rates], color="#9ecae1")
    ax.bar_label(bars, fmt="{:,.0f}", fontsize=7, padding=2)
    for x, rep_rates in enumerate(rates):
        ax.plot([x] * len(rep_rates), rep_rates, "k.", markersize=4)
    if "huey" in runs:
        goal = 5 * statistics.median(r["jobs_per_s"] for r in runs["huey"])
        ax.axhline(goal, color="red", linestyle="--", linewidth=1, label="5 x huey (median)")
        ax.legend(fontsize=7)
    ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    ax.set_ylabel("jobs (or calls) per second, 1 process; dots: repetitions")
    ax.set_title("One redis-py INCR per job: how much room a queue leaves")
    fig.tight_layout()
    return fig


FIGURES = {
    "throughput": throughput,
    "rate_limit": rate_limit,
    "slow_downstream": slow_downstream,
    "memory": memory,
    "latency": latency,
    "shapes": shapes,
    "client_commands": client_commands,
    "latency_sync": latency_sync,
}


# Figures of the standalone scripts, each drawn from its own ``<name>.json`` in the results directory.
STANDALONE = {
    "priorities": priorities,
    "per_key_limits": per_key_limits,
    "adaptive_rate": adaptive_rate,
    "sync_ceiling": sync_ceiling,
}


def _figures(data: dict[str, Any], results_dir: str | Path | None) -> Iterator[tuple[str, Figure | None]]:
    # A generator, so each figure is saved and closed before the next one is drawn.
    for name, make in FIGURES.items():
        yield name, make(data)
    if results_dir is None:
        return
    for name, make_standalone in STANDALONE.items():
        saved = load_if_present(Path(results_dir) / f"{name}.json")
        yield name, make_standalone(saved) if saved else None


def save_all(
    data: dict[str, Any], out_dir: str | Path, results_dir: str | Path | None = RESULTS_DIR
) -> list[Path]:
    """Render every figure the data allows and save each as ``<name>.png``; returns the files written.

    The standalone scripts' figures come from their JSON in ``results_dir`` (``None`` skips them); a script
    that has not been run leaves no file and no figure.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in _figures(data, results_dir):
        if fig is None:
            continue
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
