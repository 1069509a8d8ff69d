"""The one rule by which the stores send operations and reload scripts Redis lost (no Redis needed)."""

from __future__ import annotations

from typing import Any

import pytest
from redis.exceptions import NoScriptError, ResponseError

from flume_rx.store.scripts import _Cmd, _Eval, _Load, _plan, _Send

OPS = (_Eval("schedule", ("s",), ("in", 0, b"a")), _Cmd(("TIME",)), _Eval("fetch", ("q",), ("c", 1)))


def test_a_round_trip_that_works_is_one_send() -> None:
    plan = _plan(OPS, False)
    assert next(plan) == _Send(OPS, False)
    with pytest.raises(StopIteration) as done:
        plan.send([1, 2, 3])
    assert done.value.value == [1, 2, 3]


def test_only_the_scripts_redis_lost_are_loaded_and_only_their_operations_run_again() -> None:
    plan = _plan(OPS, True)
    next(plan)
    load = plan.send([NoScriptError("NOSCRIPT"), 2, 3])
    assert load == _Load(frozenset({"schedule"}))
    assert plan.send([]) == _Send([OPS[0]], True)
    with pytest.raises(StopIteration) as done:
        plan.send([1])
    assert done.value.value == [1, 2, 3]


def test_an_error_redis_answered_is_raised_after_the_reload() -> None:
    plan = _plan(OPS, False)
    next(plan)
    plan.send([NoScriptError("NOSCRIPT"), ResponseError("WRONGTYPE"), 3])
    plan.send([])
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        plan.send([1])


def test_a_script_still_missing_after_the_reload_is_an_error() -> None:
    plan = _plan(OPS[:1], False)
    next(plan)
    plan.send([NoScriptError("NOSCRIPT")])
    plan.send([])
    results: list[Any] = [NoScriptError("NOSCRIPT")]
    with pytest.raises(NoScriptError):
        plan.send(results)
