"""The ``flume-rx`` command line: worker, enqueue, stats, dead letters, pause/resume, demo."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from flume_rx.errors import ConfigError, FlumeError
from flume_rx.logs import LOG_FORMATS, LOG_LEVELS, configure_logging

logger = logging.getLogger("flume_rx.cli")

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flume-rx", description="Background job pipelines on Redis, as reactive streams."
    )
    _add_log_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        _add_log_options(p, defaults=False)
        p.add_argument("--config", required=True, metavar="FILE", help="the TOML config file")
        p.add_argument("--redis-url", metavar="URL", help="overrides redis_url from the config")
        return p

    worker = with_config(commands.add_parser("worker", help="run every pipeline of the config"))
    worker.add_argument(
        "--processes", type=int, default=1, metavar="N", help="worker processes in all (default 1)"
    )
    worker.add_argument("--burst", action="store_true", help="exit once the queues are drained")
    worker.add_argument(
        "--path",
        action="append",
        metavar="DIR",
        help="import the config's `imports` (and operators) from DIR, first on sys.path; repeatable "
        "(default: the current directory)",
    )
    worker.add_argument(
        "--metrics-port", type=int, metavar="N", help="serve Prometheus /metrics on N (process i on N + i)"
    )

    enqueue = with_config(commands.add_parser("enqueue", help="put one job on a queue"))
    enqueue.add_argument("queue")
    enqueue.add_argument("worker")
    enqueue.add_argument(
        "args", nargs="?", default="[]", metavar="JSON_ARGS", help="a JSON list, e.g. '[42, \"welcome\"]'"
    )
    enqueue.add_argument("--unique-key", metavar="KEY", help="add nothing while a job with this key holds it")
    enqueue.add_argument(
        "--unique-for", type=float, default=3600.0, metavar="SECONDS", help="most seconds the key is held"
    )
    enqueue.add_argument(
        "--unique-until",
        choices=["finish", "start", "expiry"],
        default="finish",
        help="when the job gives up its key (default: finish)",
    )

    stats = with_config(commands.add_parser("stats", help="queue depths and counters"))
    stats.add_argument("--json", action="store_true", help="print JSON for scripts")
    stats.add_argument("--watch", action="store_true", help="a live table, refreshed each second")

    queue = commands.add_parser("queue", help="look at or delete jobs waiting on a queue")
    queue_actions = queue.add_subparsers(dest="action", required=True, metavar="ACTION")
    peek = with_config(queue_actions.add_parser("peek", help="jobs of a queue, without taking them"))
    peek.add_argument("queue")
    peek.add_argument("--where", choices=["queued", "scheduled", "retry", "dead"], default="queued")
    peek.add_argument("--limit", type=int, default=20)
    peek.add_argument("--json", action="store_true")
    delete = with_config(queue_actions.add_parser("delete", help="remove jobs by id (not those in flight)"))
    delete.add_argument("queue")
    delete.add_argument("job_ids", nargs="+", metavar="JOB_ID")

    consumers = with_config(commands.add_parser("consumers", help="consumers with their last heartbeat"))
    consumers.add_argument("--json", action="store_true")

    dashboard = with_config(
        commands.add_parser("dashboard", help="a web page of the queues (read-only default)")
    )
    dashboard.add_argument("--port", type=int, default=8642)
    dashboard.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    dashboard.add_argument("--allow-actions", action="store_true", help="enable the retry and delete buttons")

    schedules = with_config(commands.add_parser("schedules", help="the cron schedules and their next runs"))
    schedules.add_argument("--json", action="store_true", help="print JSON for scripts")

    dead = commands.add_parser("dead", help="list, retry or purge dead letters")
    dead_actions = dead.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action in ("list", "retry", "purge"):
        p = with_config(dead_actions.add_parser(action))
        p.add_argument("queue")
        if action == "list":
            p.add_argument("--limit", type=int, default=20)
            p.add_argument("--json", action="store_true")

    for name, text in (
        ("pause", "stop fetching from a queue on every worker"),
        ("resume", "resume a paused queue"),
    ):
        p = with_config(commands.add_parser(name, help=text))
        p.add_argument("queue")

    demo = commands.add_parser("demo", help="the SES demo: 3 processes at 400/s under a 450/s fake SES")
    demo.add_argument("--redis-url", metavar="URL", help="use this Redis instead of an embedded one")
    demo.add_argument("--jobs", type=int, default=3000, help="emails to send (default 3000)")
    demo.add_argument("--processes", type=int, default=3, help="worker processes (default 3)")
    demo.add_argument(
        "--rate", type=int, default=400, help="the pipeline's shared limit per second (default 400)"
    )
    demo.add_argument(
        "--ses-limit", type=int, default=450, help="the fake SES's limit per second (default 450)"
    )
    demo.add_argument(
        "--ses-endpoint", metavar="URL", help="send through a real or emulated SES at this endpoint"
    )
    demo.add_argument("--plain", action="store_true", help="no live view, just the summary")
    return parser


def _add_log_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The logging options, accepted before the command and after it (``flume-rx worker --log-level debug``).

    Only the top-level parser holds defaults, so a subcommand that is not given an option keeps what was given
    before the command.
    """
    unset: Any = None if defaults else argparse.SUPPRESS
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=False if defaults else unset,
        help="same as --log-level DEBUG",
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default="INFO" if defaults else unset,
        help="the least severe records logged (default INFO; failed attempts are WARNING, dead jobs ERROR)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text" if defaults else unset,
        help="text for people, json for log shippers: one object per line (default text)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(_log_level(args), args.log_format)
    try:
        return _dispatch(args)
    except FlumeError as exc:
        print(f"flume-rx: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _log_level(args: argparse.Namespace) -> str:
    return "DEBUG" if args.verbose else str(args.log_level)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from flume_rx.demo import run_demo

        return run_demo(
            redis_url=args.redis_url,
            jobs=args.jobs,
            processes=args.processes,
            rate=args.rate,
            ses_limit=args.ses_limit,
            ses_endpoint=args.ses_endpoint,
            live=not args.plain,
        )

    from flume_rx import config as config_module
    from flume_rx.client import Flume

    config = config_module.load(args.config, redis_url=args.redis_url)
    if args.command == "worker":
        from flume_rx import runtime

        if args.processes < 1:
            raise ConfigError(f"--processes must be 1 or more (got {args.processes})")
        runtime.add_import_paths(args.path or ["."])
        runtime.import_worker_modules(config.imports)
        _check_reachable(config)
        if args.processes == 1:
            return runtime.run_worker_process(config, burst=args.burst, metrics_port=args.metrics_port)
        return runtime.supervise(
            args.config,
            args.processes,
            redis_url=args.redis_url,
            burst=args.burst,
            metrics_port=args.metrics_port,
            log_level=_log_level(args),
            log_format=args.log_format,
        )
    if args.command == "schedules":
        from flume_rx.schedules import print_schedules

        return print_schedules(config, as_json=args.json)
    if args.command == "dashboard":
        from flume_rx.dashboard import serve

        return serve(config, host=args.host, port=args.port, allow_actions=args.allow_actions)

    flume = Flume.from_config(config)
    try:
        if args.command == "enqueue":
            try:
                job_args = json.loads(args.args)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"JSON_ARGS is not valid JSON ({exc}); e.g. '[42, \"welcome\"]'") from None
            if not isinstance(job_args, list):
                raise ConfigError(f"JSON_ARGS must be a JSON list (got {args.args}); e.g. '[42]'")
            print(
                flume.enqueue(
                    args.queue,
                    args.worker,
                    job_args,
                    unique_key=args.unique_key,
                    unique_for=args.unique_for,
                    unique_until=args.unique_until,
                )
            )
        elif args.command == "stats" and args.watch:
            from flume_rx.watch import watch

            watch(config, as_json=args.json)
        elif args.command == "stats":
            queues = [q for p in config.pipelines for q in p.all_queues] or None
            _print_stats(flume.stats(queues), as_json=args.json)
        elif args.command in ("queue", "consumers"):
            from flume_rx import watch as views

            if args.command == "consumers":
                served = [q for p in config.pipelines for q in p.all_queues]
                views.print_consumers(flume.consumers(served or None), args.json)
            elif args.action == "peek":
                views.print_jobs(flume.peek(args.queue, args.where, args.limit), args.json)
            else:
                print(f"{flume.delete(args.queue, args.job_ids)} job(s) deleted from {args.queue!r}")
        elif args.command == "dead":
            if args.action == "list":
                jobs = flume.dead_list(args.queue, args.limit)
                rows = [
                    {
                        "id": j.id,
                        "worker": j.worker,
                        "attempt": j.attempt,
                        "args": _jsonable(j.args),
                        "error": None if j.error is None else f"{j.error.kind}: {j.error.message}",
                    }
                    for j in jobs
                ]
                if args.json:
                    print(json.dumps(rows, indent=2))
                else:
                    for row in rows:
                        print(f"{row['id']}  {row['worker']}  attempt={row['attempt']}  {row['error']}")
                    print(f"{len(rows)} dead job(s) shown")
            elif args.action == "retry":
                print(f"{flume.dead_retry(args.queue)} dead job(s) put back on {args.queue!r}")
            else:
                print(f"{flume.dead_purge(args.queue)} dead job(s) purged from {args.queue!r}")
        elif args.command == "pause":
            flume.pause(args.queue)
            print(f"{args.queue!r} paused")
        elif args.command == "resume":
            flume.resume(args.queue)
            print(f"{args.queue!r} resumed")
    finally:
        flume.close()
    return 0


def _check_reachable(config: Any) -> None:
    from flume_rx.store import SyncStore

    store = SyncStore.from_url(config.redis_url, config.namespace)
    try:
        store.known_queues()  # raises StoreError, naming the URL, when Redis is unreachable
    finally:
        store.close()


def _print_stats(stats: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(stats, indent=2, sort_keys=True))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="flume_rx queues")
    columns = ["queued", "in_flight", "scheduled", "retry", "dead", "processed", "failed"]
    table.add_column("queue")
    for column in columns:
        table.add_column(column, justify="right")
    for queue, row in sorted(stats.items()):
        table.add_row(queue, *(str(row.get(c, 0)) for c in columns))
    Console().print(table)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


if __name__ == "__main__":
    raise SystemExit(main())
