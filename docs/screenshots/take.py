"""Make docs/screenshots/dashboard.png and stats-watch.png from a live, private cluster.

Starts a private redis-server, a worker with two pipelines (one rate-limited, one failing now and then), a
producer, and the dashboard; after ``--seconds`` it screenshots the dashboard in headless chromium and renders
the ``stats --watch`` table to SVG, which chromium turns into a PNG. Needs the dashboard extra, playwright
and Debian's chromium; nothing is fetched from the network.

    PYTHONPATH=. .venv/bin/python docs/screenshots/take.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from rich.console import Console

from flume_rx import Flume, worker
from flume_rx.model import config as config_module
from flume_rx.store import SyncStore
from flume_rx.surfaces.embedded import RedisServer
from flume_rx.surfaces.runtime import WorkerRuntime
from flume_rx.surfaces.watch import render, snapshot

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


@worker("ScreenshotSend")
async def send(n: int) -> None:
    await asyncio.sleep(random.uniform(0.005, 0.05))


@worker("ScreenshotReport")
async def report(n: int) -> None:
    await asyncio.sleep(random.uniform(0.01, 0.2))
    if n % 17 == 0:
        raise ConnectionError(f"report {n}: upstream closed the connection")


def _config_text(url: str) -> str:
    return f"""redis_url = "{url}"
namespace = "shots"
[pipelines.email_service]
queue = "emails"
max_demand = 100
processor = {{ stages = 20 }}
rate_limiter = {{ allowed = 120, period = 1000, key = "ses" }}
[pipelines.reports]
queue = "reports"
max_demand = 20
processor = {{ stages = 8 }}
retry = {{ max_retries = 1, backoff_initial = 200, backoff_max = 400 }}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40.0)
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium is not on PATH; install it with `apt-get install -y chromium`")
    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        config_file = Path(tmp) / "flume.toml"
        config_file.write_text(_config_text(server.url))
        config = config_module.load(str(config_file))
        runtime = WorkerRuntime(config)
        runner = threading.Thread(target=asyncio.run, args=(runtime.run(),), daemon=True)
        runner.start()
        flume = Flume(server.url, "shots")
        stop = threading.Event()

        def produce() -> None:
            n = 0
            while not stop.wait(0.1):
                flume.bulk_enqueue("emails", [("ScreenshotSend", [n + i]) for i in range(15)])
                flume.bulk_enqueue("reports", [("ScreenshotReport", [n + i]) for i in range(4)])
                n += 15

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        url = f"http://127.0.0.1:{port}/"
        dashboard = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flume_rx",
                "dashboard",
                "--config",
                str(config_file),
                "--port",
                str(port),
            ],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            time.sleep(args.seconds)
            for _ in range(50):
                try:
                    urllib.request.urlopen(url, timeout=2).close()
                    break
                except OSError:
                    time.sleep(0.2)
            with SyncStore.from_url(server.url, "shots") as store:
                console = Console(record=True, width=150, file=open(os.devnull, "w"))  # noqa: SIM115
                console.print(render(snapshot(store, config), title="flume-rx stats --watch"))
                svg = Path(tmp) / "watch.svg"
                svg.write_text(console.export_svg(title="flume-rx stats --config flume.toml --watch"))
            from playwright.sync_api import sync_playwright

            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=chromium,
                    args=[
                        "--no-sandbox",
                        "--disable-gpu",
                        "--disable-background-networking",
                        "--disable-sync",
                    ],
                )
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(url)
                page.wait_for_timeout(3000)
                page.screenshot(path=str(HERE / "dashboard.png"), full_page=True)
                page = browser.new_page(viewport={"width": 1900, "height": 420})
                page.goto(svg.as_uri())
                page.locator("svg").screenshot(path=str(HERE / "stats-watch.png"))
                browser.close()
        finally:
            stop.set()
            dashboard.terminate()
            dashboard.wait(10)
            runtime.stop()
            runner.join(30)
            flume.close()
    print(f"wrote {HERE / 'dashboard.png'} and {HERE / 'stats-watch.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
