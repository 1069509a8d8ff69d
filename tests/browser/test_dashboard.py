"""The dashboard in a real headless Chromium (Debian's, driven by Playwright's Python client).

The page must load with no network but 127.0.0.1, show a queue this test fills, list a dead job with its
error and, with ``--allow-actions``, retry it from a button so that it is back on its queue. Without the
flag the page has no buttons and the server refuses actions with 403.

Set FLUME_SCREENSHOTS=<dir> to save ``dashboard.png`` there (docs/screenshots/ is made that way).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from flume_rx import Flume, worker
from flume_rx.model import config as config_module
from flume_rx.model.registry import unregister
from flume_rx.store import RedisStore
from flume_rx.surfaces.runtime import WorkerRuntime

QUEUE = "emails"
NS = "dash"
ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail(
            "chromium is not on PATH, and the dashboard test needs a real browser; "
            "install it with `apt-get install -y chromium` (`make test` does, through .ci/system-deps)"
        )
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = _chromium()
    # What the page shows comes from the server's polls (every 2 s), which a loaded machine answers slowly:
    # expect() waits for it up to 30 s instead of 5.
    expect.set_options(timeout=30_000)
    try:
        with sync_playwright() as playwright:
            launched = playwright.chromium.launch(
                executable_path=executable, args=CHROMIUM_ARGS, headless=True
            )
            yield launched
            launched.close()
    finally:
        expect.set_options(timeout=None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config_file(redis_url: str, tmp_path: Path) -> Path:
    path = tmp_path / "flume.toml"
    path.write_text(
        f'redis_url = "{redis_url}"\nnamespace = "{NS}"\n'
        f'[pipelines.email_service]\nqueue = "{QUEUE}"\n'
        '[pipelines.email_service.rate_limiter]\nallowed = 400\nperiod = 1000\nkey = "ses"\n'
    )
    return path


@pytest.fixture
def dashboard(redis_url: str, tmp_path: Path) -> Iterator[Callable[[bool], str]]:
    """Starts ``flume-rx dashboard`` in a process of its own; returns its URL."""
    processes: list[subprocess.Popen[bytes]] = []
    config = _config_file(redis_url, tmp_path)

    def start(allow_actions: bool) -> str:
        port = _free_port()
        command = [
            sys.executable,
            "-m",
            "flume_rx",
            "dashboard",
            "--config",
            str(config),
            "--port",
            str(port),
        ]
        if allow_actions:
            command.append("--allow-actions")
        process = subprocess.Popen(
            command,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        processes.append(process)
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return url
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    _, stderr = process.communicate(timeout=5)
                    raise AssertionError(f"the dashboard did not start: {stderr.decode()}") from None
                time.sleep(0.1)

    yield start
    for process in processes:
        process.terminate()
        process.communicate(timeout=30)


@pytest.fixture
def filled(redis_url: str) -> Iterator[tuple[Flume, str]]:
    """A queue with settled history (one dead job with its error) and 12 jobs waiting."""

    def send(n: int) -> None:
        if n == 13:
            raise ValueError("mailbox 13 does not exist")

    worker("DashSend")(send)
    flume = Flume(redis_url, NS)
    flume.bulk_enqueue(QUEUE, [("DashSend", [n]) for n in range(40)])
    config = config_module.parse(
        {
            "redis_url": redis_url,
            "namespace": NS,
            "pipelines": {"email_service": {"queue": QUEUE, "retry": {"max_retries": 0}}},
        }
    )
    # Playwright's sync API keeps an event loop running in this thread: the worker gets a thread of its own.
    runner = threading.Thread(target=asyncio.run, args=(WorkerRuntime(config, burst=True).run(),))
    runner.start()
    runner.join(60)
    (dead,) = flume.dead_list(QUEUE)
    flume.bulk_enqueue(QUEUE, [("DashSend", [n]) for n in range(100, 112)])
    yield flume, dead.id
    unregister("DashSend")
    flume.close()


def _row(page: Page, queue: str) -> Any:
    return page.locator(f'#queues tr[data-queue="{queue}"]')


def test_the_page_shows_the_queue_and_a_dead_job_can_be_retried_from_it(
    browser: Browser, dashboard: Callable[[bool], str], filled: tuple[Flume, str]
) -> None:
    flume, dead_id = filled
    url = dashboard(True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(url)

    expect(page).to_have_title("flume_rx")
    expect(page.locator("#mode")).to_have_text("actions enabled")
    row = _row(page, QUEUE)
    expect(row.locator("td.queued")).to_have_text("12")
    expect(row).to_contain_text("email_service")
    dead_row = page.locator(f'#dead tr[data-job="{dead_id}"]')
    expect(dead_row).to_contain_text("ValueError: mailbox 13 does not exist")
    if os.environ.get("FLUME_SCREENSHOTS"):
        page.wait_for_timeout(2500)  # one more poll, so the chart has drawn
        page.screenshot(path=str(Path(os.environ["FLUME_SCREENSHOTS"]) / "dashboard.png"), full_page=True)

    dead_row.locator("button.retry").click()

    expect(dead_row).to_have_count(0)
    expect(row.locator("td.queued")).to_have_text("13")
    assert dead_id in [job.id for job in flume.peek(QUEUE, limit=100)], "the retried job is back on its queue"
    assert flume.stats([QUEUE])[QUEUE]["dead"] == 0
    assert all(r.startswith(url) for r in requests), f"the page fetched something not local: {requests}"
    page.close()


def test_read_only_by_default_no_buttons_and_actions_refused(
    browser: Browser, dashboard: Callable[[bool], str], filled: tuple[Flume, str]
) -> None:
    flume, dead_id = filled
    url = dashboard(False)
    page = browser.new_page()
    page.goto(url)

    expect(page.locator("#mode")).to_have_text("read-only")
    dead_row = page.locator(f'#dead tr[data-job="{dead_id}"]')
    expect(dead_row).to_contain_text("mailbox 13")
    # The error opens onto the stored traceback, which stays open across the page's refreshes.
    traceback = dead_row.locator("details pre.traceback")
    expect(traceback).to_be_hidden()
    dead_row.locator("details summary").click()
    expect(traceback).to_be_visible()
    expect(traceback).to_contain_text("in send")
    expect(traceback).to_contain_text('raise ValueError("mailbox 13 does not exist")')
    # Mark the table's nodes, then wait for the next poll to replace them.
    page.evaluate(
        "document.querySelectorAll('#dead details').forEach((d) => d.setAttribute('data-stale', ''))"
    )
    expect(page.locator("#dead details[data-stale]")).to_have_count(0)
    expect(traceback).to_be_visible()
    expect(dead_row.locator("td.died")).not_to_be_empty()
    expect(page.locator("main button:not(#lookup button)")).to_have_count(0)  # no action buttons
    status = page.evaluate(
        """async ([queue, id]) => (await fetch('/api/retry', {
            method: 'POST', headers: {'Content-Type': 'application/json'},
            body: JSON.stringify({queue, job_ids: [id]})})).status""",
        [QUEUE, dead_id],
    )
    assert status == 403
    assert flume.stats([QUEUE])[QUEUE]["dead"] == 1, "a refused action changes nothing"
    page.close()


def test_a_dead_job_is_found_by_its_id(
    browser: Browser, dashboard: Callable[[bool], str], filled: tuple[Flume, str]
) -> None:
    _, dead_id = filled
    page = browser.new_page()
    page.goto(dashboard(False))
    page.locator("#job-id").fill(dead_id)
    page.locator("#lookup button").click()

    expect(page.locator("#job .state")).to_contain_text(f"{dead_id}: dead on {QUEUE}")
    expect(page.locator("#job details summary")).to_contain_text("ValueError: mailbox 13 does not exist")
    page.close()


def test_a_chain_step_is_shown_with_its_chain(
    browser: Browser, dashboard: Callable[[bool], str], redis_url: str
) -> None:
    with Flume(redis_url, NS) as flume:
        chain = flume.chain([("wf/resize", "Resize", ["a.jpg"]), ("wf/upload", "Upload", [])])
    page = browser.new_page()
    page.goto(dashboard(False))
    page.locator("#job-id").fill(chain.ids[1])
    page.locator("#lookup button").click()

    expect(page.locator("#job .state")).to_contain_text(f"{chain.ids[1]}: waiting on wf/upload")
    expect(page.locator("#job .workflow p")).to_contain_text("chain of 2 step(s)")
    rows = page.locator("#job .workflow tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text(f"{chain.ids[0]}Resize on wf/resizequeued")
    expect(rows.nth(1)).to_contain_text(f"{chain.ids[1]}Upload on wf/uploadwaiting")

    # A step's progress (reported as a worker's current_job().progress does) shows in the lookup.
    async def report() -> None:
        async with RedisStore.from_url(redis_url, NS) as store:
            await store.set_progress("wf/resize", chain.ids[0], 0.4, "resized", 60_000)

    reporter = threading.Thread(target=asyncio.run, args=(report(),))  # Playwright holds this thread's loop
    reporter.start()
    reporter.join(30)
    page.locator("#job-id").fill(chain.ids[0])
    page.locator("#lookup button").click()
    expect(page.locator("#job")).to_contain_text("progress 40% resized")
    page.close()
