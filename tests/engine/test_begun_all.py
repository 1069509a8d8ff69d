"""The loop notes the starts of a batch of sync jobs in one call: one job's failing bookkeeping costs only that
job's note, never the clocks (and timeouts) of the others in the batch."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from flume_rx import operators as fo
from flume_rx.engine import processor


class _Source:
    def __init__(self, failing: set[str]) -> None:
        self.failing = failing
        self.started_ids: list[str] = []
        self.telemetry = SimpleNamespace(active=False)

    def started(self, delivery: Any) -> None:
        if delivery.job.id in self.failing:
            raise RuntimeError(f"bookkeeping of {delivery.job.id}")
        self.started_ids.append(delivery.job.id)


def test_a_failing_start_costs_the_other_jobs_of_the_batch_nothing(caplog: pytest.LogCaptureFixture) -> None:
    source = _Source(failing={"b"})
    begun: list[list[tuple[Any, float | None]]] = []
    begin_many = begun.append  # one process: one way to begin many
    batch = []
    for index, job_id in enumerate("abc"):
        queued: fo.Queued[Any] = fo.Queued()
        queued._entry = SimpleNamespace(name=job_id)  # type: ignore[assignment]  # a process's entry
        queued._begin_many = begin_many
        delivery = SimpleNamespace(job=SimpleNamespace(id=job_id), source=source)
        batch.append((delivery, queued, 100.0 + index))

    processor._begun_all(batch)  # type: ignore[arg-type]

    assert source.started_ids == ["a", "c"]
    assert [[(entry.name, at) for entry, at in run] for run in begun] == [
        [("a", 100.0), ("b", 101.0), ("c", 102.0)]
    ]
    assert "noting the start of job b failed" in caplog.text
