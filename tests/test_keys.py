"""Key names: one namespace's queue keys are built once and stay what they were, and bad names are refused."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flume_rx.model.errors import ConfigError
from flume_rx.store.keys import Keys

names = st.text(min_size=1, max_size=20).filter(lambda s: "{" not in s and "}" not in s)


@given(namespace=names, queue=names)
def test_a_queues_keys_carry_its_namespace_and_name_every_time(namespace: str, queue: str) -> None:
    keys = Keys(namespace).of(queue)
    again = Keys(namespace).of(queue)
    assert keys == again
    group, _, rest = queue.partition("/")
    tag = f"{{{namespace}:{group}}}/{rest}" if group and rest else f"{{{namespace}:{queue}}}"
    assert (keys.tag, keys.queue, keys.scheduled, keys.dead) == (
        tag,
        f"{tag}:queue",
        f"{tag}:scheduled",
        f"{tag}:dead",
    )
    assert Keys(namespace + "x").of(queue).queue != keys.queue


@pytest.mark.parametrize("queue", ["", "a{b", "b}", None, ["q"], {"q": 1}, 3])
def test_a_name_that_cannot_be_a_queue_is_refused_naming_it(queue: Any) -> None:
    with pytest.raises(ConfigError, match="queue name must be a non-empty string without braces"):
        Keys("flume").of(queue)
