"""Markdown tables from a results JSON: ``python -m benchmarks table PATH`` (what benchmarks/README.md quotes)."""

from __future__ import annotations

from typing import Any

GOAL_THROUGHPUT_RATIO = 5.0
GOAL_MAX_PER_S = 404
GOAL_UTILIZATION = 0.97
GOAL_P50_MS = 2.0
GOAL_RSS_GROWTH_MB = 30.0


def _ok(data: dict[str, Any], scenario: str) -> dict[str, Any]:
    entries = data.get("scenarios", {}).get(scenario, {})
    return {n: e["result"] for n, e in entries.items() if isinstance(e, dict) and e.get("status") == "ok"}


def _num(value: float | None, fmt: str = ",.0f") -> str:
    return "-" if value is None else format(value, fmt)


def tables(data: dict[str, Any]) -> str:
    """Every scenario's medians as Markdown, then the goals of issue 5 against the measured figures."""
    out: list[str] = []
    m = data.get("machine", {})
    out.append(
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gb')} GB, Python {m.get('python')}, "
        f"Redis {m.get('redis_server')}; {'quick' if data.get('quick') else 'full'} run of {data.get('started')}."
    )
    tp = _ok(data, "throughput")
    enq = _ok(data, "enqueue")
    lat = _ok(data, "latency")
    if tp or enq or lat:
        out += ["", "| peer | drain, 1 process (jobs/s) | drain, 2 processes | bulk enqueue (jobs/s) |"
                " Redis calls/job (drain) | latency p50 / p99 / max (ms) at 500/s |", "|---|---|---|---|---|---|"]  # fmt: skip
        names = sorted(
            set(tp) | set(enq) | set(lat),
            key=lambda n: -(tp.get(n, {}).get("processes_1", {}).get("median_jobs_per_s") or 0),
        )
        for name in names:
            one = tp.get(name, {}).get("processes_1", {})
            two = tp.get(name, {}).get("processes_2", {})
            calls = [s["redis_calls_per_job"] for s in one.get("samples", [])]
            lt = lat.get(name)
            lat_cell = (
                f"{lt['median_p50_ms']:.2f} / {lt['median_p99_ms']:.1f} / {lt['median_max_ms']:.0f}"
                if lt
                else "-"
            )
            out.append(
                f"| {name} | {_num(one.get('median_jobs_per_s'))} | {_num(two.get('median_jobs_per_s'))} | "
                f"{_num(enq.get(name, {}).get('median_jobs_per_s'))} | "
                f"{_num(sorted(calls)[len(calls) // 2] if calls else None, '.2f')} | {lat_cell} |"
            )
    rl = _ok(data, "rate_limit")
    if rl:
        out += ["", "| limiter (3 processes, 400/s) | most starts in any 1 s | utilization | Redis calls/job |",
                "|---|---|---|---|"]  # fmt: skip
        for name, r in rl.items():
            shapes = [(name, r)] + [
                (f"{name}, {label}", r[key])
                for key, label in (
                    ("seed_stages", "5 stages"),
                    ("demo_shape", "5 stages, sync job of a few ms"),
                )
                if r.get(key)
            ]
            for label, shape in shapes:
                out.append(
                    f"| {label} | {shape['median_max_starts_in_any_1s']} | {shape['median_utilization']:.1%} | "
                    f"{shape['median_redis_calls_per_job']:.2f} |"
                )
    sd = _ok(data, "slow_downstream")
    if sd:
        out += ["", "| slow downstream (1 process) | jobs/s at 5 ms | jobs/s at 200 ms | max taken-not-done |"
                " max RSS (MB) |", "|---|---|---|---|---|"]  # fmt: skip
        for name, r in sd.items():
            out.append(
                f"| {name} | {_num(r['jobs_per_s_at_5ms'])} | {_num(r['jobs_per_s_at_200ms'])} | "
                f"{r['max_in_flight']} | {_num(r['rss_max_mb'])} |"
            )
    mem = _ok(data, "memory")
    for name, r in mem.items():
        out.append(
            f"\nMemory, {name}: {r['jobs']:,} jobs of {r['job_ms']:.0f} ms, RSS {r['rss_start_mb']:.1f} MB → "
            f"max {r['rss_max_mb']:.1f} MB (growth {r['rss_growth_mb']:.1f} MB)."
        )
    bt = _ok(data, "batching").get("flume_rx")
    if bt:
        cells = ", ".join(
            f"size {k.split('_')[1]}: {_num(v['median_jobs_per_s'])} jobs/s, "
            f"{v['median_redis_calls_per_job']:.2f} Redis calls/job"
            for k, v in bt.items()
        )
        out.append(f"\nBatching, flume_rx, 1 process: {cells}.")
    ceiling = data.get("scenarios", {}).get("redis_ceiling", {})
    if ceiling.get("status") == "ok":
        cells = ", ".join(f"{k} {_num(v['ops_per_s'])}" for k, v in ceiling["result"]["results"].items())
        out.append(f"\nRedis ceiling (redis-benchmark, ops/s): {cells}.")
    out += _shape_tables(data)
    out += ["", _goals(data)]
    return "\n".join(out) + "\n"


SHAPE_TITLES = {
    "incr": "(a) one INCR to another Redis",
    "await1": "(b) await 1 ms",
    "sleep1": "(c) sleep 1 ms",
    "noop": "no-op",
}


def shape_rows(data: dict[str, Any]) -> list[tuple[str, str, str, float | None, float | None, float | None]]:
    """(shape, peer, config, jobs/s, client commands/job, script-internal commands/job) of the shapes scenario."""
    rows = []
    for peer, result in _ok(data, "shapes").items():
        for entry in result.values():
            commands = entry.get("commands", {})
            rows.append(
                (
                    entry["shape"],
                    peer,
                    entry["config"],
                    entry.get("median_jobs_per_s"),
                    commands.get("client_commands_per_job"),
                    commands.get("script_internal_commands_per_job"),
                )
            )
    return rows


def _shape_tables(data: dict[str, Any]) -> list[str]:
    rows = shape_rows(data)
    out: list[str] = []
    if rows:
        out += ["", "Jobs in users' shapes, 1 process (flume_rx at its defaults, stages 10, and at the seed's "
                "stages = 5; every peer at its documented defaults):", "",
                "| shape | peer | jobs/s | x Dramatiq | client commands/job | script-internal/job |",
                "|---|---|---|---|---|---|"]  # fmt: skip
        for shape in SHAPE_TITLES:
            of_shape = [r for r in rows if r[0] == shape]
            dramatiq = next((r[3] for r in of_shape if r[1] == "dramatiq"), None)
            for _, peer, config, rate, client, internal in sorted(of_shape, key=lambda r: -(r[3] or 0)):
                name = f"{peer} ({config})" if peer == "flume_rx" else peer
                ratio = f"{rate / dramatiq:.2f}" if rate and dramatiq else "-"
                out.append(
                    f"| {SHAPE_TITLES[shape]} | {name} | {_num(rate)} | {ratio} | {_num(client, '.3f')} | "
                    f"{_num(internal, '.2f')} |"
                )
    lat = _ok(data, "latency_sync")
    if lat:
        out += ["", "| enqueue to start at 200 jobs/s, sync worker | p50 (ms) | p99 (ms) | max (ms) |",
                "|---|---|---|---|"]  # fmt: skip
        for peer, result in sorted(lat.items()):
            for config, r in result.items():
                name = f"{peer} ({config})" if peer == "flume_rx" else peer
                out.append(
                    f"| {name} | {r['median_p50_ms']:.2f} | {r['median_p99_ms']:.2f} | {r['median_max_ms']:.1f} |"
                )
    return out


def _goals(data: dict[str, Any]) -> str:
    s = data.get("summary", {})
    rows = ["| goal (issue 5) | measured | met |", "|---|---|---|"]
    ratio = s.get("flume_vs_best_peer")
    best = s.get("best_peer", {})
    if ratio is not None:
        rows.append(
            f"| no-op throughput per process ≥ {GOAL_THROUGHPUT_RATIO:.0f}x the fastest peer | {ratio:.2f}x "
            f"{best.get('name')} ({_num(best.get('jobs_per_s'))} jobs/s) | {'yes' if ratio >= 5 else 'no'} |"
        )
    rl = _ok(data, "rate_limit").get("flume_rx")
    if rl:
        most, util = rl["median_max_starts_in_any_1s"], rl["median_utilization"]
        rows.append(
            f"| most starts in any 1 s ≤ {GOAL_MAX_PER_S} | {most} | {'yes' if most <= 404 else 'no'} |"
        )
        rows.append(f"| utilization ≥ 97% | {util:.1%} | {'yes' if util >= GOAL_UTILIZATION else 'no'} |")
    lt = _ok(data, "latency").get("flume_rx")
    if lt:
        p50 = lt["median_p50_ms"]
        rows.append(
            f"| p50 latency ≤ 2 ms at 500/s | {p50:.2f} ms | {'yes' if p50 <= GOAL_P50_MS else 'no'} |"
        )
    mem = _ok(data, "memory").get("flume_rx")
    if mem:
        growth = mem["rss_growth_mb"]
        rows.append(
            f"| RSS growth ≤ 30 MB draining {mem['jobs']:,} jobs | {growth:.1f} MB | "
            f"{'yes' if growth <= GOAL_RSS_GROWTH_MB else 'no'} |"
        )
    return "\n".join(rows)
