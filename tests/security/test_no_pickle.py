"""No pickle, no eval: payloads are msgpack data and a job names a registered worker, never code."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest

from flume_rx import Flume
from flume_rx.model import config as config_module
from flume_rx.surfaces.runtime import WorkerRuntime

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*(ROOT / "flume_rx").rglob("*.py"), *(ROOT / "operators").rglob("*.py")])
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "jsonpickle"}
UNSAFE_CALLS = {"eval", "exec", "compile", "__import__"}


def _unsafe_uses(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in UNSAFE_CALLS:
            found.append(f"{node.func.id}(...) at line {node.lineno}")
        elif isinstance(node, ast.Attribute) and node.attr in {"loads", "load"}:
            base = node.value
            if isinstance(base, ast.Name) and base.id in UNSAFE_MODULES | {"yaml"}:
                found.append(f"{base.id}.{node.attr} at line {node.lineno}")
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_package_never_unpickles_or_evaluates(path: Path) -> None:
    assert _unsafe_uses(path) == []


def test_the_scan_does_see_what_it_forbids(tmp_path: Path) -> None:
    """The control: the checker above finds each forbidden use in a file written to have them."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle\nfrom marshal import loads\nx = eval('1')\npickle.loads(b'')\n", encoding="utf-8"
    )
    assert len(_unsafe_uses(bad)) == 4


@pytest.mark.parametrize("name", ["os:system", "os.system", "builtins.eval", "subprocess:Popen", "../../etc"])
def test_a_job_naming_an_import_path_is_an_unknown_worker(redis_url: str, name: str) -> None:
    flume = Flume(redis_url, "t")
    flume.enqueue("jobs", name, ["touch /tmp/pwned-by-flume"])
    config = config_module.parse(
        {"redis_url": redis_url, "namespace": "t", "pipelines": {"main": {"queue": "jobs"}}}
    )
    asyncio.run(WorkerRuntime(config, burst=True).run())
    dead = flume.dead_list("jobs")
    assert len(dead) == 1 and dead[0].error is not None
    assert dead[0].error.kind == "UnknownWorker" and dead[0].attempt == 1  # dead at once, nothing imported
    assert not Path("/tmp/pwned-by-flume").exists()
    flume.close()
