"""`imports` resolve from the worker's current directory, or from `--path DIR`, as the peers' workers do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flume_rx import Flume
from flume_rx.model.errors import ConfigError
from flume_rx.surfaces.runtime import add_import_paths

WORKER_MODULE = """
import os
import redis
from flume_rx import worker

@worker("PathProbe")
def probe(token):
    redis.Redis.from_url(os.environ["PROBE_REDIS_URL"]).rpush("probe:ran", token)
"""


def _project(root: Path, redis_url: str) -> Path:
    """A user's project: ``shop/tasks.py`` registers a worker; ``flume.toml`` imports ``shop.tasks``."""
    (root / "shop").mkdir(parents=True)
    (root / "shop" / "tasks.py").write_text(WORKER_MODULE)
    config = root / "flume.toml"
    config.write_text(
        f'redis_url = "{redis_url}"\nnamespace = "paths"\nimports = ["shop.tasks"]\n[pipelines.probes]\n'
    )
    return config


def _burst_worker(redis_url: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "flume-rx"  # the installed script: no cwd on sys.path by itself
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PROBE_REDIS_URL"] = redis_url
    return subprocess.run(
        [str(script), "worker", "--burst", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _ran(redis_url: str) -> list[bytes]:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return list(client.lrange("probe:ran", 0, -1))  # type: ignore[arg-type]
    finally:
        client.close()


@pytest.mark.parametrize("how", ["cwd", "--path"])
def test_worker_imports_the_config_modules_from_cwd_or_path(redis_url: str, tmp_path: Path, how: str) -> None:
    config = _project(tmp_path / "app", redis_url)
    with Flume(redis_url, "paths") as flume:
        flume.enqueue("probes", "PathProbe", [how])
    if how == "cwd":
        result = _burst_worker(redis_url, tmp_path / "app", "--config", "flume.toml")
    else:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        result = _burst_worker(redis_url, elsewhere, "--config", str(config), "--path", str(tmp_path / "app"))
    assert result.returncode == 0, result.stderr
    assert _ran(redis_url) == [how.encode()]


def test_without_the_directory_the_error_names_the_module(redis_url: str, tmp_path: Path) -> None:
    config = _project(tmp_path / "app", redis_url)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = _burst_worker(redis_url, elsewhere, "--config", str(config))
    assert result.returncode == 2
    assert "shop.tasks" in result.stderr and "Traceback" not in result.stderr


def test_add_import_paths_puts_directories_first_once_and_refuses_a_missing_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "path", ["/somewhere", str(tmp_path / "b")])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    add_import_paths([str(tmp_path / "a"), str(tmp_path / "b")])
    assert sys.path == [str(tmp_path / "a"), str(tmp_path / "b"), "/somewhere"]
    with pytest.raises(ConfigError, match="--path 'nowhere' is not a directory"):
        add_import_paths(["nowhere"])
