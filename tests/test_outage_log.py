"""The process-wide outage log: one line per outage, repeated as an error while it lasts, named by its kind."""

from __future__ import annotations

import logging

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from flume_rx.model.errors import StoreError
from flume_rx.store import _OutageLog


def _caused_by(cause: Exception) -> StoreError:
    try:
        raise StoreError("Redis at redis://127.0.0.1:1/0 failed") from cause
    except StoreError as error:
        return error


def test_a_lasting_script_error_is_logged_again_as_an_error(caplog: pytest.LogCaptureFixture) -> None:
    outage = _OutageLog()
    error = _caused_by(ResponseError("ERR user_script:3: bad"))
    with caplog.at_level(logging.WARNING, logger="flume_rx.store"):
        outage.down("fetch from 'q'", error)
        outage.down("settle on 'q'", error)  # the same outage, seen by another loop: no new line
        outage.repeat_s = 0.0
        outage.down("fetch from 'q'", error)
        outage.up()
    levels = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert len(levels) == 3, levels
    assert levels[0][0] == logging.WARNING and "Redis answered with an error" in levels[0][1]
    assert levels[1][0] == logging.ERROR and "still retrying" in levels[1][1]
    assert "reachable again" in levels[2][1]


def test_a_connection_failure_is_named_unreachable(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="flume_rx.store"):
        _OutageLog().down("fetch from 'q'", _caused_by(RedisConnectionError("refused")))
    assert "Redis unreachable" in caplog.records[0].getMessage()
