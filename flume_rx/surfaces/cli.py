"""The ``flume-rx`` command line: worker, enqueue, stats, dead letters, pause/resume, demo."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flume_rx.model.errors import ConfigError, FlumeError, StoreError, WorkerModuleFailed
from flume_rx.model.logs import LOG_FORMATS, LOG_LEVELS, configure_logging
from flume_rx.surfaces.early_stop import catch_sigterm

if TYPE_CHECKING:
    from flume_rx.model.config import FlumeConfig
    from flume_rx.surfaces.client import Flume

logger = logging.getLogger("flume_rx.cli")

EXIT_USAGE = 2


CONFIG_HELP = (
    "the TOML config file (default: $FLUME_CONFIG, else ./flume.toml if there is one; stats, enqueue, dead, "
    "queue, consumers, pause and resume work without one)"
)
REDIS_URL_HELP = "the Redis to use, over $FLUME_REDIS_URL and the config's redis_url"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flume-rx",
        description="Background job pipelines on Redis, as reactive streams.",
        epilog="Run 'flume-rx COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"flume-rx {_version()}")
    _add_log_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    def command(
        where: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        text: str,
        *,
        config: bool = True,
    ) -> argparse.ArgumentParser:
        p = where.add_parser(name, help=text, description=text[:1].upper() + text[1:] + ".")
        _add_log_options(p, defaults=False)
        if config:
            p.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
            p.add_argument("--redis-url", metavar="URL", help=REDIS_URL_HELP)
        return p

    def json_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="print JSON for scripts")

    worker = command(commands, "worker", "run the pipelines of the config until SIGTERM or Ctrl-C")
    worker.add_argument(
        "--processes", type=int, default=1, metavar="N", help="worker processes in all (default 1)"
    )
    worker.add_argument(
        "--burst",
        nargs="?",
        const="drained",
        choices=("drained", "ready"),
        metavar="MODE",
        help="exit once no work is left, code 0. --burst (or --burst=drained): once the queues, the due "
        "scheduled jobs, the retries (not yet due too) and every in-flight list are empty, so failed jobs are "
        "retried first (scheduled jobs not yet due are left). --burst=ready: once nothing is ready to run "
        "now, leaving retries and scheduled jobs for later. A paused queue counts as empty",
    )
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
    worker.add_argument(
        "--queues",
        type=_names,
        metavar="Q1,Q2",
        help="run only the pipelines serving these queues (a multi-queue pipeline runs whole; default: all)",
    )

    enqueue = command(commands, "enqueue", "put one job on a queue")
    enqueue.add_argument("queue", help="the queue, e.g. email_service")
    enqueue.add_argument("worker", help="the registered worker name, e.g. EmailWorker")
    enqueue.add_argument(
        "args", nargs="?", default="[]", metavar="JSON_ARGS", help="a JSON list, e.g. '[42, \"welcome\"]'"
    )
    when = enqueue.add_mutually_exclusive_group()
    when.add_argument(
        "--in", dest="in_s", type=_seconds, metavar="SECONDS", help="run it this many seconds from now"
    )
    when.add_argument(
        "--at",
        type=_when,
        metavar="TIME",
        help="run it at this time: ISO 8601 (2026-12-24T08:00:00+01:00; no offset = local time) or unix seconds",
    )
    enqueue.add_argument("--unique-key", metavar="KEY", help="add nothing while a job with this key holds it")
    enqueue.add_argument(
        "--unique-for",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="most seconds the key is held (default 3600)",
    )
    enqueue.add_argument(
        "--unique-until",
        choices=["finish", "start", "expiry"],
        default="finish",
        help="when the job gives up its key (default: finish)",
    )

    stats = command(commands, "stats", "queue depths, counters, rates and consumers")
    json_option(stats)
    stats.add_argument("--watch", action="store_true", help="a live table, refreshed each second")

    queue = commands.add_parser(
        "queue",
        help="look at or delete jobs waiting on a queue",
        description="Look at or delete jobs waiting on a queue.",
    )
    queue_actions = queue.add_subparsers(dest="action", metavar="ACTION", title="actions")
    peek = command(queue_actions, "peek", "show jobs of a queue without taking them")
    peek.add_argument("queue", help="the queue")
    peek.add_argument(
        "--where",
        choices=["queued", "scheduled", "retry", "dead"],
        default="queued",
        help="which jobs: waiting to run (default), scheduled for later, waiting to retry, or dead",
    )
    peek.add_argument("--limit", type=int, default=20, metavar="N", help="show at most N jobs (default 20)")
    json_option(peek)
    delete = command(queue_actions, "delete", "remove jobs by id (not those a worker has taken)")
    delete.add_argument("queue", help="the queue")
    delete.add_argument("job_ids", nargs="+", metavar="JOB_ID", help="ids of the jobs to remove")

    job = command(
        commands, "job", "where one job is now: queued, scheduled, running, retry, dead or cancelled"
    )
    job.add_argument("job_id", metavar="JOB_ID", help="the id enqueue printed")
    job.add_argument("--queue", metavar="QUEUE", help="look only on this queue (default: every known queue)")
    json_option(job)
    cancel = command(commands, "cancel", "cancel jobs still waiting (queued, scheduled or waiting to retry)")
    cancel.add_argument("job_ids", nargs="+", metavar="JOB_ID", help="the ids enqueue printed")
    cancel.add_argument(
        "--queue", metavar="QUEUE", help="look only on this queue (default: every known queue)"
    )

    consumers = command(commands, "consumers", "list consumers with their last heartbeat")
    json_option(consumers)

    dashboard = command(commands, "dashboard", "serve a web page of the queues (read-only by default)")
    dashboard.add_argument("--port", type=int, default=8642, help="port to listen on (default 8642)")
    dashboard.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    dashboard.add_argument("--allow-actions", action="store_true", help="enable the retry and delete buttons")
    dashboard.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="answer requests for NAME too (a name a proxy serves it by); repeatable. By default only the "
        "bound address's names are answered, which stops DNS rebinding",
    )

    schedules = command(commands, "schedules", "list the cron schedules and their next runs")
    json_option(schedules)

    dead = commands.add_parser(
        "dead",
        help="list, retry or purge dead letters",
        description="Dead letters: jobs that failed their last attempt, or failed for good.",
    )
    dead_actions = dead.add_subparsers(dest="action", metavar="ACTION", title="actions")
    dead_list = command(
        dead_actions, "list", "show dead jobs, newest first, with time of death and traceback"
    )
    dead_list.add_argument("queue", help="the queue")
    dead_list.add_argument("--limit", type=int, default=20, metavar="N", help="show at most N (default 20)")
    json_option(dead_list)
    dead_retry = command(dead_actions, "retry", "put dead jobs back on their queue (all, or those named)")
    dead_retry.add_argument("queue", help="the queue")
    dead_retry.add_argument("job_ids", nargs="*", metavar="JOB_ID", help="retry only these (default: all)")
    dead_retry.add_argument(
        "--keep-attempts",
        action="store_true",
        help="keep each job's attempt count (default: start afresh with all its retries)",
    )
    dead_purge = command(dead_actions, "purge", "delete every dead job of a queue for good")
    dead_purge.add_argument("queue", help="the queue")
    dead_purge.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")

    for name, text in (
        ("pause", "stop every worker fetching from a queue"),
        ("resume", "let workers fetch from a paused queue again"),
    ):
        p = command(commands, name, text)
        p.add_argument("queue", help="the queue")

    demo = command(
        commands, "demo", "the SES demo: 3 processes at 400/s under a 450/s fake SES", config=False
    )
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
    demo.add_argument(
        "--adaptive",
        action="store_true",
        help="make the shared limit adaptive: with --ses-limit below --rate it finds and follows SES's rate",
    )
    demo.add_argument("--plain", action="store_true", help="no live view, just the summary")
    parser.set_defaults(help_of=parser)
    queue.set_defaults(help_of=queue)
    dead.set_defaults(help_of=dead)
    return parser


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("flume_rx")
    except metadata.PackageNotFoundError:  # a checkout on sys.path, not installed
        from flume_rx import __version__

        return __version__


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected queue names separated by commas (got {text!r})")
    return names


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds (got {text!r})") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0 (got {text!r})")
    return value


def _when(text: str) -> float:
    """Unix seconds of ``text``: a number, or an ISO 8601 time (local time when it has no offset)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 time like 2026-12-24T08:00:00+01:00, or unix seconds (got {text!r})"
        ) from None
    return moment.timestamp()  # a naive time is read as local time


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
    if args.command == "worker":
        catch_sigterm()  # before the slow part of starting (imports, config, Redis): see early_stop
    if args.command is None or (args.command in ("queue", "dead") and args.action is None):
        args.help_of.print_help()
        return 0
    configure_logging(_log_level(args), args.log_format)
    try:
        return _dispatch(args)
    except FlumeError as exc:
        if isinstance(exc, WorkerModuleFailed):
            print(exc.details, end="", file=sys.stderr)
        print(f"flume-rx: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _log_level(args: argparse.Namespace) -> str:
    return "DEBUG" if args.verbose else str(args.log_level)


NEEDS_CONFIG = ("worker", "schedules")
"""Commands that run what a config file describes; the others need only a Redis URL."""


def _config(args: argparse.Namespace) -> tuple[FlumeConfig, Path | None]:
    """The config and the file it came from: ``--config``, $FLUME_CONFIG, ./flume.toml, or none at all."""
    from flume_rx.model import config as config_module

    path = config_module.find_config(args.config)
    if path is not None:
        return config_module.load(path, redis_url=args.redis_url), path
    if args.command in NEEDS_CONFIG:
        raise ConfigError(
            f"{args.command} needs a config file and none was found; pass --config FILE, set FLUME_CONFIG, or "
            f"write {config_module.CONFIG_FILE} in this directory"
        )
    return config_module.parse({"redis_url": args.redis_url or config_module.default_redis_url()}), None


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from flume_rx.surfaces.demo import run_demo

        return run_demo(
            redis_url=args.redis_url,
            jobs=args.jobs,
            processes=args.processes,
            rate=args.rate,
            ses_limit=args.ses_limit,
            ses_endpoint=args.ses_endpoint,
            live=not args.plain,
            adaptive=args.adaptive,
        )

    from flume_rx.surfaces.client import Flume

    config, config_path = _config(args)
    if args.command == "worker":
        from flume_rx.model.config import select_pipelines
        from flume_rx.surfaces import processes, runtime

        if args.processes < 1:
            raise ConfigError(f"--processes must be 1 or more (got {args.processes})")
        if args.queues:
            config = select_pipelines(config, args.queues)
        runtime.add_import_paths(args.path or ["."])
        runtime.import_worker_modules(config.imports)
        _check_reachable(config)
        processes.check_cpus(config.cpu_affinity, args.processes)
        if args.processes == 1:
            return processes.run_worker_process(
                config, burst=args.burst or False, metrics_port=args.metrics_port
            )
        return processes.supervise(
            str(config_path),
            args.processes,
            redis_url=args.redis_url,
            burst=args.burst or False,
            metrics_port=args.metrics_port,
            log_level=_log_level(args),
            log_format=args.log_format,
            queues=args.queues,
        )
    if args.command == "schedules":
        return _print_schedules(config, as_json=args.json)
    if args.command == "dashboard":
        from flume_rx.surfaces.dashboard import serve

        return serve(
            config,
            host=args.host,
            port=args.port,
            allow_actions=args.allow_actions,
            allowed_hosts=args.allow_host,
        )

    flume = Flume.from_config(config)
    try:
        return _run_command(args, config, flume)
    finally:
        flume.close()


def _run_command(args: argparse.Namespace, config: FlumeConfig, flume: Flume) -> int:
    from flume_rx.surfaces import watch as views

    if args.command == "enqueue":
        _enqueue(args, flume)
    elif args.command == "stats" and args.watch:
        views.watch(config, as_json=args.json)
    elif args.command == "stats":
        _print_stats(config, as_json=args.json)
    elif args.command == "consumers":
        served = [q for p in config.pipelines for q in p.all_queues]
        views.print_consumers(flume.consumers(served or None), args.json)
    elif args.command == "queue" and args.action == "peek":
        views.print_jobs(flume.peek_entries(args.queue, args.where, args.limit), args.where, args.json)
    elif args.command == "queue":
        print(f"{flume.delete(args.queue, args.job_ids)} job(s) deleted from {args.queue!r}")
    elif args.command == "dead":
        return _dead(args, flume)
    elif args.command == "job":
        info = flume.job(args.job_id, args.queue)
        views.print_job_info(info, args.json, flume.workflow_of(info))
        return 0 if info.state != "unknown" else 1
    elif args.command == "cancel":
        return _cancel(args, flume)
    elif args.command == "pause":
        flume.pause(args.queue)
        print(f"{args.queue!r} paused")
    elif args.command == "resume":
        flume.resume(args.queue)
        print(f"{args.queue!r} resumed")
    return 0


def _enqueue(args: argparse.Namespace, flume: Flume) -> None:
    try:
        job_args = json.loads(args.args)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"JSON_ARGS is not valid JSON ({exc}); e.g. '[42, \"welcome\"]'") from None
    if not isinstance(job_args, list):
        raise ConfigError(f"JSON_ARGS must be a JSON list (got {args.args}); e.g. '[42]'")
    unique = {"unique_key": args.unique_key, "unique_for": args.unique_for, "unique_until": args.unique_until}
    if args.in_s is not None:
        job_id = flume.enqueue_in(args.queue, args.in_s, args.worker, job_args, **unique)
    elif args.at is not None:
        job_id = flume.enqueue_at(args.queue, args.at, args.worker, job_args, **unique)
    else:
        job_id = flume.enqueue(args.queue, args.worker, job_args, **unique)
    print(job_id)


def _cancel(args: argparse.Namespace, flume: Flume) -> int:
    refused = 0
    for job_id in args.job_ids:
        info = flume.cancel(job_id, args.queue)
        if info.state == "cancelled":
            print(f"{job_id}: cancelled")
        elif info.state == "running":
            print(f"{job_id}: running, abort asked (its worker stops it and records it as cancelled)")
        else:
            refused += 1
            print(
                f"{job_id}: not cancelled, it is {info.state} (only a job that has not run yet can be "
                "cancelled, and a running one aborted)"
            )
    return 1 if refused else 0


def _dead(args: argparse.Namespace, flume: Flume) -> int:
    from flume_rx.surfaces import watch as views

    queue = args.queue
    if args.action == "list":
        views.print_dead(queue, flume.dead_letters(queue, args.limit), flume.dead_count(queue), args.json)
        return 0
    if args.action == "retry":
        ids = args.job_ids or None
        moved = flume.dead_retry(queue, ids, keep_attempts=args.keep_attempts)
        fresh = "with their attempts kept" if args.keep_attempts else "with all their retries"
        print(f"{moved} dead job(s) put back on {queue!r} {fresh}")
        if ids is not None and moved < len(set(ids)):
            print(
                f"flume-rx: {len(set(ids)) - moved} of the JOB_IDs are not dead letters of {queue!r} (retried or "
                "purged already, or mistyped); see 'flume-rx dead list'",
                file=sys.stderr,
            )
            return 1
        return 0
    count = flume.dead_count(queue)
    if (
        count
        and not args.yes
        and not _confirm(f"Delete the {count} dead job(s) of {queue!r} for good? [y/N] ")
    ):
        print("nothing purged", file=sys.stderr)
        return 1
    print(f"{flume.dead_purge(queue)} dead job(s) purged from {queue!r}")
    return 0


def _confirm(question: str) -> bool:
    """Ask on stderr, read the answer from stdin; anything but y/yes (or no stdin at all) is a no."""
    print(question, end="", file=sys.stderr, flush=True)
    try:
        answer = sys.stdin.readline()
    except (OSError, ValueError):
        return False
    return answer.strip().lower() in ("y", "yes")


def _check_reachable(config: Any) -> None:
    from flume_rx.store import SyncStore

    store = SyncStore.from_url(config.redis_url, config.namespace)
    try:
        store.known_queues()  # raises StoreError, naming the URL, when Redis is unreachable
    finally:
        store.close()


def _print_stats(config: FlumeConfig, *, as_json: bool) -> None:
    """``stats``: one table (or JSON object) of every queue of the config, and of any other queue that holds
    jobs no pipeline serves."""
    from flume_rx.store import SyncStore
    from flume_rx.surfaces import watch as views
    from flume_rx.surfaces.terminal import table_console

    with SyncStore.from_url(config.redis_url, config.namespace) as store:
        if as_json:
            by_queue = views.queue_stats(store, config)
            limits = views.rate_limits(store, config)
            print(
                json.dumps(
                    {q: {**s, "pipeline": p, "rate_limit": limits.get(q)} for q, (p, s) in by_queue.items()},
                    indent=2,
                    sort_keys=True,
                )
            )
            return
        rows = views.snapshot(store, config)
    table_console().print(views.render(rows, title="flume_rx queues"))
    if config.pipelines:
        for warning in views.unserved_warnings(rows):
            print(f"flume-rx: {warning}", file=sys.stderr)


def _print_schedules(config: Any, *, as_json: bool = False) -> int:
    """``flume-rx schedules``: each schedule with its next run and, when Redis answers, its last tick.

    Returns:
        The exit code, 0.
    """
    import time

    from flume_rx.model import schedules
    from flume_rx.store import SyncStore

    last: dict[str, int | None] = {}
    with SyncStore.from_url(config.redis_url, config.namespace, socket_timeout_s=5.0) as store:
        for schedule in config.schedules:
            try:
                last[schedule.name] = store.cron_last(schedule.queue, schedule.name)
            except StoreError as exc:
                logger.warning("cannot read last ticks from Redis (%s); showing next runs only", exc)
                break
    rows = schedules.describe(config.schedules, time.time(), last)
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no [schedules.NAME] tables in the config")
        return 0
    from rich.table import Table

    from flume_rx.surfaces.terminal import table_console

    table = Table("schedule", "cron", "queue", "worker", "missed", "next run (UTC)", "last tick (UTC)")
    for row in rows:
        table.add_row(
            row["name"], f"{row['cron']} ({row['timezone']})", row["queue"], row["worker"], row["missed"],
            row["next_run"], row["last_tick"] or "never",
        )  # fmt: skip
    table_console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
