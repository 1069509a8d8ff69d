"""The dashboard's ASGI application (Starlette) and its server (uvicorn).

The page polls ``/api/overview`` (the same :func:`flume_rx.watch.snapshot` as ``stats --watch``),
``/api/rates`` (the per-second buckets every worker writes to Redis, so the chart is the whole cluster's)
and ``/api/dead``. Actions are POSTs with a JSON body, which a cross-site form cannot send without a CORS
preflight this app never grants.
"""

from __future__ import annotations

import importlib.resources
import logging
import time
from typing import Any

from flume_rx.client import Flume
from flume_rx.config import FlumeConfig
from flume_rx.errors import ConfigError, FlumeError
from flume_rx.store import SyncStore
from flume_rx.watch import job_row, snapshot

try:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route
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
        importlib.resources.files("flume_rx.dashboard")
        .joinpath("static", "index.html")
        .read_text(encoding="utf-8")
    )


def create_app(config: FlumeConfig, *, allow_actions: bool = False) -> Starlette:
    """The dashboard for the pipelines of ``config`` (every known queue when it has none).

    Args:
        config: where Redis is, the namespace, and which pipelines to show.
        allow_actions: enable retrying and deleting dead letters and pausing queues; without it, every
            POST endpoint answers 403.
    """
    _require_extra()
    store = SyncStore.from_url(config.redis_url, config.namespace)
    flume = Flume(config=config)
    page = _page()

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
        return HTMLResponse(page)

    def overview(request: Request) -> Response:
        return JSONResponse(
            {"time": time.time(), "allow_actions": allow_actions, "pipelines": snapshot(store, config)}
        )

    def rates(request: Request) -> Response:
        count = min(120, max(1, int(request.query_params.get("seconds", "120"))))
        series = {q: store.rates(q, "second", count) for q in queues()}
        return JSONResponse({"time": time.time(), "series": series})

    def dead(request: Request) -> Response:
        queue = known(request.query_params.get("queue", ""))
        limit = min(DEAD_SHOWN, max(1, int(request.query_params.get("limit", "10"))))
        jobs = [job_row(entry.job, entry.at, "dead") for entry in flume.dead_letters(queue, limit)]
        return JSONResponse({"queue": queue, "jobs": jobs})

    def consumers(request: Request) -> Response:
        return JSONResponse({"consumers": store.consumers(queues(), config.orphan_timeout_s)})

    def act(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        action = request.path_params["action"]
        queue = known(str(body.get("queue", "")))
        job_ids = [str(i) for i in body.get("job_ids", [])]
        if action == "retry":
            return {"retried": flume.dead_retry(queue, job_ids)}
        if action == "delete":
            return {"deleted": flume.delete(queue, job_ids)}
        if action == "pause":
            flume.pause(queue)
            return {"paused": True}
        if action == "resume":
            flume.resume(queue)
            return {"paused": False}
        raise _BadRequest(f"unknown action {action!r}; use retry, delete, pause or resume")

    async def action(request: Request) -> Response:
        if not allow_actions:
            return JSONResponse(
                {"error": "the dashboard is read-only; start it with --allow-actions to enable actions"},
                status_code=403,
            )
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return JSONResponse(
                {"error": "send a JSON body (Content-Type: application/json)"}, status_code=415
            )
        body = await request.json()
        if not isinstance(body, dict):
            return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
        from starlette.concurrency import run_in_threadpool

        try:
            result = await run_in_threadpool(act, request, body)
        except _BadRequest as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        logger.info("dashboard action %s on %s: %s", request.path_params["action"], body.get("queue"), result)
        return JSONResponse(result)

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
            Route("/api/{action}", action, methods=["POST"]),
        ],
        exception_handlers={_BadRequest: errors, FlumeError: errors},
    )
    app.state.store = store
    app.state.flume = flume
    return app


class _BadRequest(Exception):
    """A request naming an unknown queue or action."""


def serve(
    config: FlumeConfig, *, host: str = "127.0.0.1", port: int = 8642, allow_actions: bool = False
) -> int:
    """Serve the dashboard until Ctrl-C; returns the exit code."""
    _require_extra()
    import uvicorn

    app = create_app(config, allow_actions=allow_actions)
    mode = "actions enabled" if allow_actions else "read-only"
    print(f"flume_rx dashboard on http://{host}:{port}/ ({mode})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return 0
