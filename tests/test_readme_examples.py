"""The README's examples of following jobs, results and workflows, run as written against a private Redis.

Each ``python`` block of those sections runs in one namespace, in order, with ``flume`` (a client) and ``jid``
(a job waiting on a queue nothing serves) given, as the README's text assumes; ``await`` at the top level runs
as it would in an asyncio REPL. Workers for the queues the examples use run in this process meanwhile, so the
blocks' waits for results return. Then the test checks what the blocks' comments say they return.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flume_rx import Flume, JobCancelled
from flume_rx.model.registry import unregister

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("Following and cancelling a job", "Results", "Workflows: chains, groups and durable hops")
SERVED = ("images", "wf/resize", "wf/upload", "wf/notify")
WORKERS = ("ResizeWorker", "resize", "upload", "album_ready")


def python_blocks(readme: str, title: str) -> list[str]:
    """The ``python`` code blocks of the README section ``### <title>``."""
    match = re.search(rf"^### {re.escape(title)}\n(.*?)^##", readme, re.S | re.M)
    assert match, f"README.md has no '### {title}' section"
    blocks = re.findall(r"^```python\n(.*?)^```", match.group(1), re.S | re.M)
    assert blocks, f"the README section '{title}' has no python block"
    return list(blocks)


@pytest.fixture
def served(redis_url: str) -> Iterator[None]:
    """Workers serving the examples' queues in this process (the examples register the workers)."""
    runner = Flume(redis_url)
    pipelines = [runner.source(queue).pipe(runner.process()) for queue in SERVED]
    started = threading.Event()
    state: dict[str, Any] = {}

    def serve() -> None:
        async def main() -> None:
            state["loop"], state["task"] = asyncio.get_running_loop(), asyncio.current_task()
            started.set()
            await runner.run(*pipelines, handle_signals=False)

        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(main())

    thread = threading.Thread(target=serve, name="readme-workers", daemon=True)
    thread.start()
    assert started.wait(30), "the workers did not start"
    yield
    state["loop"].call_soon_threadsafe(state["task"].cancel)
    thread.join(60)
    runner.close()
    for name in WORKERS:
        unregister(name)


def test_the_readme_examples_run_as_written(redis_url: str, served: None) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    with Flume(redis_url) as flume:
        jid = flume.enqueue("email_service", "SendEmail", [42])
        namespace: dict[str, Any] = {"__name__": "readme", "flume": flume, "jid": jid}
        exec("from flume_rx import worker", namespace)
        for title in SECTIONS:
            for n, block in enumerate(python_blocks(readme, title)):
                code = compile(block, f"README: {title} #{n}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
                ran = eval(code, namespace)  # a coroutine when the block awaits
                if asyncio.iscoroutine(ran):
                    asyncio.run(ran)
            if title.startswith("Following"):
                # The example cancelled the waiting job: it is recorded so, and has no result.
                assert flume.job(jid).state == "cancelled"
                with pytest.raises(JobCancelled):
                    flume.result(jid, "email_service", timeout=5)

        # What the comments say.
        assert flume.result(namespace["jid"], timeout=30) == {"url": "https://cdn.example/42.webp"}
        assert flume.job(namespace["jid"]).state == "done"
        chain, group = namespace["chain"], namespace["group"]
        assert flume.result(chain.last, chain.last_queue, timeout=30) == "s3://photos/a.jpg.webp"
        assert flume.result(group.then, group.then_queue, timeout=30) == []
        workflow = flume.workflow(group.then)
        assert workflow is not None and workflow.kind == "group"
        assert [job.id for job in workflow.jobs] == group.members
        assert [job.info.state for job in workflow.jobs if job.info] == ["done", "done"]
