"""The dashboard against hostile requests: other Hosts (DNS rebinding), other Origins, no page token, and
malformed input. Real ``flume-rx dashboard`` processes, real HTTP requests with the headers an attacker sends."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from flume_rx import Flume
from flume_rx.store import Keys
from flume_rx.surfaces.dashboard.guard import HostPolicy, PageTokens, same_origin, split_host

from .dashboard_process import Dashboard, Reply, dashboard_process
from .harness import QUEUE, write_config

EVIL = "http://evil.example"


@pytest.fixture
def config_file(redis_url: str, tmp_path: Path) -> Path:
    with Flume(redis_url, "t") as flume:
        flume.enqueue(QUEUE, "RecordWorker", ["secret-argument"])
    return write_config(tmp_path / "flume.toml", redis_url)


@pytest.fixture
def actions(config_file: Path) -> Iterator[Dashboard]:
    with dashboard_process(config_file, "--allow-actions") as dashboard:
        yield dashboard


@pytest.fixture
def read_only(config_file: Path) -> Iterator[Dashboard]:
    with dashboard_process(config_file) as dashboard:
        yield dashboard


def _own(dashboard: Dashboard) -> dict[str, str]:
    """The headers a browser on the dashboard's own page sends."""
    return {"Host": f"127.0.0.1:{dashboard.port}", "Origin": f"http://127.0.0.1:{dashboard.port}"}


def _token(dashboard: Dashboard) -> str:
    page = dashboard.request("GET", "/", headers={"Host": f"127.0.0.1:{dashboard.port}"})
    assert page.status == 200
    found = re.search(r'<meta name="flume-token" content="([^"]+)">', page.body)
    assert found, "the page carries no token"
    return found.group(1)


def _pause(dashboard: Dashboard, headers: dict[str, str], body: str | None = None) -> Reply:
    return dashboard.request(
        "POST",
        "/api/pause",
        body if body is not None else json.dumps({"queue": QUEUE}),
        {"Content-Type": "application/json", **headers},
    )


def _paused(redis_url: str) -> bool:
    client = redis.Redis.from_url(redis_url)
    try:
        return bool(client.exists(Keys("t").of("jobs").paused))
    finally:
        client.close()


def test_a_post_from_another_origin_is_refused(actions: Dashboard, redis_url: str) -> None:
    """Before: 200, and the queue was paused."""
    token = _token(actions)
    reply = _pause(actions, {**_own(actions), "Origin": EVIL, "X-Flume-Token": token})
    assert reply.status == 403 and "Origin" in json.loads(reply.body)["error"]
    for origin in ("null", f"{EVIL}:{actions.port}", f"http://127.0.0.1:{actions.port + 1}"):
        assert _pause(actions, {**_own(actions), "Origin": origin, "X-Flume-Token": token}).status == 403
    no_origin = {"Host": f"127.0.0.1:{actions.port}", "X-Flume-Token": token}
    assert _pause(actions, no_origin).status == 403
    assert not _paused(redis_url)


def test_a_rebound_host_is_refused_for_actions_and_for_reading(
    actions: Dashboard, read_only: Dashboard, redis_url: str
) -> None:
    """DNS rebinding: the attacker's name, resolving to 127.0.0.1. Before: 200 for the POST (the queue
    paused) and, read-only, GET /api/dead and friends answered with job args."""
    token = _token(actions)
    rebound = {"Host": f"evil.example:{actions.port}", "Origin": f"http://evil.example:{actions.port}"}
    reply = _pause(actions, {**rebound, "X-Flume-Token": token})
    assert reply.status == 400 and "Host" in json.loads(reply.body)["error"]
    assert not _paused(redis_url)
    for path in ("/", "/api/overview", f"/api/dead?queue={QUEUE}", "/api/consumers", "/api/rates"):
        got = read_only.request("GET", path, headers={"Host": f"evil.example:{read_only.port}"})
        assert got.status == 400, (path, got.status)
        assert "secret-argument" not in got.body
    assert read_only.request("GET", "/", headers={"Host": f"127.0.0.1:{read_only.port + 1}"}).status == 400


def test_an_action_needs_the_pages_token(actions: Dashboard, redis_url: str) -> None:
    assert _pause(actions, _own(actions)).status == 403
    assert _pause(actions, {**_own(actions), "X-Flume-Token": "forged.0123"}).status == 403
    assert not _paused(redis_url)
    reply = _pause(actions, {**_own(actions), "X-Flume-Token": _token(actions)})
    assert reply.status == 200, reply.body
    assert _paused(redis_url)
    # Every page gets a token of its own, and each stays good while the process runs.
    first, second = _token(actions), _token(actions)
    assert first != second
    resume = actions.request(
        "POST",
        "/api/resume",
        json.dumps({"queue": QUEUE}),
        {"Content-Type": "application/json", **_own(actions), "X-Flume-Token": first},
    )
    assert resume.status == 200 and not _paused(redis_url)


def test_the_page_cannot_be_framed_or_cached(read_only: Dashboard) -> None:
    page = read_only.request("GET", "/", headers={"Host": f"localhost:{read_only.port}"})
    assert page.status == 200
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    ("body", "what"),
    [
        ("{not json", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({"queue": QUEUE, "job_ids": 5}), "job_ids"),
        (json.dumps({"queue": QUEUE, "job_ids": [1, 2]}), "job_ids"),
        (json.dumps({"queue": "no-such-queue"}), "unknown queue"),
    ],
)
def test_malformed_action_bodies_answer_400(actions: Dashboard, body: Any, what: str, redis_url: str) -> None:
    """Before: 500 for bodies that are not JSON and for job_ids that are not a list."""
    reply = actions.request(
        "POST",
        "/api/retry",
        body,
        {"Content-Type": "application/json", **_own(actions), "X-Flume-Token": _token(actions)},
    )
    assert reply.status == 400, reply.body
    assert what in json.loads(reply.body)["error"]


def test_malformed_query_parameters_answer_400_and_unknown_paths_404(read_only: Dashboard) -> None:
    """Before: 500 for the parameters, 405 for unknown paths under /api/."""
    host = {"Host": f"127.0.0.1:{read_only.port}"}
    for path in (f"/api/dead?queue={QUEUE}&limit=ten", "/api/rates?seconds=1e3", "/api/rates?seconds="):
        reply = read_only.request("GET", path, headers=host)
        assert reply.status == 400, (path, reply.status, reply.body)
        assert "must be an integer" in json.loads(reply.body)["error"]
    for method, path in (
        ("GET", "/api/nope"),
        ("POST", "/api/nope"),
        ("GET", "/nope"),
        ("GET", "/api/retry/x"),
    ):
        headers = {**host, "Origin": f"http://127.0.0.1:{read_only.port}"}
        assert read_only.request(method, path, headers=headers).status == 404, (method, path)
    assert read_only.request("GET", f"/api/dead?queue={QUEUE}&limit=5", headers=host).status == 200


def test_allow_host_admits_a_proxy_name(config_file: Path, redis_url: str) -> None:
    with dashboard_process(config_file, "--allow-actions", "--allow-host", "flume.internal") as dashboard:
        proxied = {"Host": "flume.internal", "Origin": "https://flume.internal"}
        page = dashboard.request("GET", "/", headers=proxied)
        assert page.status == 200
        token = re.search(r'content="([^"]+\.[0-9a-f]+)"', page.body)
        assert token
        assert _pause(dashboard, {**proxied, "X-Flume-Token": token.group(1)}).status == 200
        assert dashboard.request("GET", "/", headers={"Host": "other.internal"}).status == 400
    assert _paused(redis_url)


def test_host_policy_for_the_bound_address() -> None:
    loopback = HostPolicy.for_bind("127.0.0.1", 8642)
    assert all(
        loopback.allows(h) for h in ("127.0.0.1:8642", "localhost:8642", "[::1]:8642", "LOCALHOST:8642")
    )
    assert not any(
        loopback.allows(h)
        for h in ("evil.example:8642", "127.0.0.1:8643", "127.0.0.1", "10.0.0.5:8642", "", "[::1", "a:b:c")
    )
    everywhere = HostPolicy.for_bind("0.0.0.0", 80, ["dash.example.com"])
    assert everywhere.allows("10.0.0.5") and everywhere.allows("[fe80::1]:80")
    assert everywhere.allows("dash.example.com:8443")
    assert not everywhere.allows("evil.example") and not everywhere.allows("10.0.0.5:81")
    one_address = HostPolicy.for_bind("10.0.0.5", 9000)
    assert one_address.allows("10.0.0.5:9000") and not one_address.allows("localhost:9000")
    assert split_host("[::1]:8642") == ("::1", 8642) and split_host("x:99999") == ("", None)
    assert same_origin("http://localhost:8642", "localhost:8642")
    assert not same_origin("http://localhost:8642/path", "localhost:8642")
    assert not same_origin("file://", "localhost:8642")
    tokens = PageTokens()
    assert tokens.valid(tokens.new()) and not PageTokens().valid(tokens.new()) and not tokens.valid(None)


def test_a_job_is_looked_up_by_id_and_only_by_its_own_host(read_only: Dashboard, redis_url: str) -> None:
    with Flume(redis_url, "t") as flume:
        job_id = flume.enqueue(QUEUE, "RecordWorker", ["looked-up"])
    host = {"Host": f"127.0.0.1:{read_only.port}"}
    reply = read_only.request("GET", f"/api/job?id={job_id}", headers=host)
    assert reply.status == 200, reply.body
    found = json.loads(reply.body)
    assert (found["state"], found["queue"], found["args"]) == ("queued", QUEUE, ["looked-up"])
    assert (
        json.loads(read_only.request("GET", "/api/job?id=" + "0" * 32, headers=host).body)["state"]
        == "unknown"
    )
    assert read_only.request("GET", "/api/job", headers=host).status == 400
    # A rebound name reads no job's args.
    assert read_only.request("GET", f"/api/job?id={job_id}", headers={"Host": "evil.example"}).status in (
        400,
        403,
    )


def test_a_looked_up_job_shows_its_chain(read_only: Dashboard, redis_url: str) -> None:
    with Flume(redis_url, "t") as flume:
        chain = flume.chain([(QUEUE, "RecordWorker", ["step-1"]), (QUEUE, "RecordWorker", ["step-2"])])
    reply = read_only.request(
        "GET", f"/api/job?id={chain.ids[1]}", headers={"Host": f"127.0.0.1:{read_only.port}"}
    )
    assert reply.status == 200, reply.body
    found = json.loads(reply.body)
    assert (found["state"], found["after"]) == ("waiting", chain.ids[0])
    workflow = found["workflow"]
    assert (workflow["kind"], workflow["id"]) == ("chain", chain.ids[0])
    assert [(j["id"], j["worker"], j["state"]) for j in workflow["jobs"]] == [
        (chain.ids[0], "RecordWorker", "queued"),
        (chain.ids[1], "RecordWorker", "waiting"),
    ]
