"""min_demand in TOML and in code: carried to the processor, and refused outside 0 .. max_demand - 1."""

from __future__ import annotations

import pytest

from flume_rx import Flume
from flume_rx.model.config import parse
from flume_rx.model.errors import ConfigError


@pytest.mark.parametrize("min_demand", [-1, 100, 250, "half", True])
def test_config_rejects_a_min_demand_outside_its_range_naming_the_key(min_demand: object) -> None:
    raw = {"pipelines": {"mail": {"max_demand": 100, "min_demand": min_demand}}}
    with pytest.raises(
        ConfigError, match=r"pipelines\.mail\.min_demand must be an integer from 0 to max_demand - 1 = 99"
    ):
        parse(raw)


def test_config_and_code_carry_min_demand() -> None:
    config = parse({"pipelines": {"mail": {"max_demand": 100, "min_demand": 20}}})
    assert config.pipeline("mail").min_demand == 20
    assert parse({"pipelines": {"mail": {}}}).pipeline("mail").min_demand is None
    with pytest.raises(
        ConfigError, match=r"process\(min_demand=...\) must be an integer from 0 to max_demand - 1 = 9"
    ):
        Flume("redis://127.0.0.1:1/0").process(max_demand=10, min_demand=10)
