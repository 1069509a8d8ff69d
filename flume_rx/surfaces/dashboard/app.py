"""The dashboard's ASGI application (Starlette) and its server (uvicorn).

The page polls ``/api/overview`` (the same :func:`flume_rx.surfaces.watch.snapshot` as ``stats --watch``),
``/api/rates`` (the per-second buckets every worker writes to Redis, so the chart is the whole cluster's)
and ``/api/dead``. Actions are POSTs with a JSON body, from the dashboard's own page only: every request must
be addressed to the dashboard (``Host``), every POST must come from its origin (``Origin``) and carry the
page's token (see :mod:`flume_rx.surfaces.dashboard.guard`). Malformed bodies and parameters answer 400, unknown paths
404.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from flume_rx.model.config import FlumeConfig
from flume_rx.model.errors import ConfigError, FlumeError
from flume_rx.store import SyncStore
from flume_rx.surfaces.client import Flume
from flume_rx.surfaces.watch import job_row, snapshot

try:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    from flume_rx.surfaces.dashboard.guard import TOKEN_HEADER, Guard, HostPolicy, PageTokens
except ImportError:  # pragma: no cover - only without the extra
    Starlette = None  # type: ignore[assignment,misc]

logger = logging.getLogger("flume_rx.dashboard")

DEAD_SHOWN = 100
"""The most dead letters listed per queue in one answer (the page asks for the newest 10)."""


def _require_extra() -> None:
    if Starlette is None:
        raise ConfigError(
            "the dashboard needs Starlette and uvicorn, which are not installed; "
            "install them with `pip install 'flume_rx[dashboard]'`"
        )


def _page() -> str:
    return (
        importlib.resources.files("flume_rx.surfaces.dashboard")
        .joinpath("static", "index.html")
        .read_text(encoding="utf-8")
    )


ACTIONS = ("retry", "delete", "pause", "resume")
TOKEN_PLACEHOLDER = "{{flume-token}}"


def create_app(
    config: FlumeConfig,
    *,
    allow_actions: bool = False,
    host: str = "127.0.0.1",
    port: int = 8642,
    allowed_hosts: Sequence[str] = (),
) -> Starlette:
    """The dashboard for the pipelines of ``config`` (every known queue when it has none).

    Args:
        config: where Redis is, the namespace, and which pipelines to show.
        allow_actions: enable retrying and deleting dead letters and pausing queues; without it, every
            POST endpoint answers 403.
        host: the address it is bound to; requests must name it (or a loopback name when it is a loopback
            address, or any IP address and this machine's names when it is every interface) with ``port``.
        port: the port it is bound to.
        allowed_hosts: more names requests may use, on any port (the names a proxy in front serves it by).
    """
    _require_extra()
    store = SyncStore.from_url(config.redis_url, config.namespace)
    flume = Flume(config=config)
    page = _page()
    tokens = PageTokens()

    def queues() -> list[str]:
        return sorted({p.queue for p in config.pipelines}) or store.known_queues()

    def known(queue: str) -> str:
        # The overview also lists queues that hold jobs no pipeline serves; their dead letters can be acted on.
        if queue not in queues() and queue not in store.known_queues():
            raise _BadRequest(f"unknown queue {queue!r}; pick one of {', '.join(queues())}")
        return queue

    # Plain `def` endpoints: Starlette runs them in its thread pool, so the blocking Redis client never stalls
    # the event loop.
    def index(request: Request) -> Response:
        # A token per page: the page sends it back with each action, which no other site can read.
        return HTMLResponse(page.replace(TOKEN_PLACEHOLDER, tokens.new()), headers=_PAGE_HEADERS)

    def overview(request: Request) -> Response:
        return JSONResponse(
            {"time": time.time(), "allow_actions": allow_actions, "pipelines": snapshot(store, config)}
        )

    def rates(request: Request) -> Response:
        count = min(120, max(1, _int_param(request, "seconds", 120)))
        series = {q: store.rates(q, "second", count) for q in queues()}
        return JSONResponse({"time": time.time(), "series": series})

    def dead(request: Request) -> Response:
        queue = known(request.query_params.get("queue", ""))
        limit = min(DEAD_SHOWN, max(1, _int_param(request, "limit", 10)))
        jobs = [job_row(entry.job, entry.at, "dead") for entry in flume.dead_letters(queue, limit)]
        return JSONResponse({"queue": queue, "jobs": jobs})

    def job(request: Request) -> Response:
        job_id = request.query_params.get("id", "").strip()
        if not job_id or len(job_id) > 200:
            raise _BadRequest("give the job's id as ?id=JOB_ID (the id enqueue returned)")
        info = flume.job(job_id)
        workflow = flume.workflow_of(info)
        return JSONResponse({**info.as_dict(), "workflow": None if workflow is None else workflow.as_dict()})

    def consumers(request: Request) -> Response:
        return JSONResponse({"consumers": store.consumers(queues(), config.orphan_timeout_s)})

    def act(action: str, body: dict[str, Any]) -> dict[str, Any]:
        queue = known(str(body.get("queue", "")))
        job_ids = body.get("job_ids", [])
        if not isinstance(job_ids, list) or not all(isinstance(i, str) for i in job_ids):
            raise _BadRequest(f"job_ids must be a list of job id strings (got {job_ids!r})")
        if action == "retry":
            return {"retried": flume.dead_retry(queue, job_ids)}
        if action == "delete":
            return {"deleted": flume.delete(queue, job_ids)}
        if action == "pause":
            flume.pause(queue)
            return {"paused": True}
        flume.resume(queue)
        return {"paused": False}

    def endpoint(action: str) -> Callable[[Request], Any]:
        async def take(request: Request) -> Response:
            if not allow_actions:
                return JSONResponse(
                    {"error": "the dashboard is read-only; start it with --allow-actions to enable actions"},
                    status_code=403,
                )
            if not tokens.valid(request.headers.get(TOKEN_HEADER)):
                return JSONResponse(
                    {"error": f"send the page's token in {TOKEN_HEADER}; reload the dashboard's page"},
                    status_code=403,
                )
            if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
                return JSONResponse(
                    {"error": "send a JSON body (Content-Type: application/json)"}, status_code=415
                )
            try:
                body = json.loads(await request.body())
            except (ValueError, UnicodeDecodeError) as exc:
                return JSONResponse({"error": f"the body is not valid JSON ({exc})"}, status_code=400)
            if not isinstance(body, dict):
                return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
            from starlette.concurrency import run_in_threadpool

            try:
                result = await run_in_threadpool(act, action, body)
            except _BadRequest as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            logger.info("dashboard action %s on %s: %s", action, body.get("queue"), result)
            return JSONResponse(result)

        return take

    async def errors(request: Request, exc: Exception) -> Response:
        status = 400 if isinstance(exc, _BadRequest) else 503
        return JSONResponse({"error": str(exc)}, status_code=status)

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/api/overview", overview),
            Route("/api/rates", rates),
            Route("/api/dead", dead),
            Route("/api/consumers", consumers),
            Route("/api/job", job),
            *(Route(f"/api/{name}", endpoint(name), methods=["POST"]) for name in ACTIONS),
        ],
        middleware=[Middleware(Guard, hosts=HostPolicy.for_bind(host, port, allowed_hosts))],
        exception_handlers={_BadRequest: errors, FlumeError: errors},
    )
    app.state.store = store
    app.state.flume = flume
    return app


class _BadRequest(Exception):
    """A request naming an unknown queue, or with a malformed parameter or body."""


_PAGE_HEADERS = {
    # The page carries its token: no other site may frame it, and no cache may keep it.
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
}


def _int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise _BadRequest(f"query parameter {name!r} must be an integer (got {raw!r})") from None


def serve(
    config: FlumeConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8642,
    allow_actions: bool = False,
    allowed_hosts: Sequence[str] = (),
) -> int:
    """Serve the dashboard until Ctrl-C; returns the exit code."""
    _require_extra()
    import uvicorn

    app = create_app(config, allow_actions=allow_actions, host=host, port=port, allowed_hosts=allowed_hosts)
    mode = "actions enabled" if allow_actions else "read-only"
    print(f"flume_rx dashboard on http://{host}:{port}/ ({mode})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return 0
