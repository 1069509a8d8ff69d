"""The settle decision on its own: (job, outcome, policy) -> verdict, with no Redis and no clock."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flume_rx.engine.decide import SettlePolicy, Verdict, decide
from flume_rx.model import codec
from flume_rx.model.config import RetryConfig
from flume_rx.model.errors import BatchFailed, JobTimeout, Throttled, UnknownWorker
from flume_rx.model.job import Job

POLICY = SettlePolicy(RetryConfig(max_retries=2, backoff_initial_s=1.0, backoff_max_s=10.0))
PAYLOAD = b"as fetched"


def job(**fields: object) -> Job:
    base: dict[str, object] = {
        "id": "j1",
        "queue": "email",
        "worker": "Send",
        "args": [1],
        "enqueued_at": 100.0,
    }
    return Job(**{**base, **fields})  # type: ignore[arg-type]


def verdict_of(j: Job, error: BaseException | None, policy: SettlePolicy = POLICY, seed: int = 0) -> Verdict:
    return decide(j, PAYLOAD, error, policy, now_s=100.25, rng=random.Random(seed))


def test_a_success_is_acked_with_its_latency() -> None:
    v = verdict_of(job(), None)
    assert v.kind == "succeeded"
    assert (v.settlement.action, v.settlement.payload, v.settlement.latency_ms) == ("ack", PAYLOAD, 250.0)
    assert v.settlement.unique is None and v.error is None


def test_a_job_never_enqueued_on_a_clock_has_no_latency_sample() -> None:
    assert verdict_of(job(enqueued_at=0.0), None).settlement.latency_ms is None


def test_a_throttled_job_goes_back_to_its_queue_without_spending_an_attempt() -> None:
    v = verdict_of(job(attempt=1), Throttled("slow down"))
    assert (v.kind, v.settlement.action, v.settlement.new_payload) == ("throttled", "requeue", None)


def test_a_failure_is_retried_one_attempt_further_with_its_error_recorded() -> None:
    v = verdict_of(job(attempt=0), ValueError("bad address"))
    assert v.kind == "retried" and v.settlement.action == "retry"
    assert v.settlement.new_payload is not None
    record = codec.decode(v.settlement.new_payload)
    assert record.attempt == 1 and record.error is not None
    assert (record.error.kind, record.error.message) == ("ValueError", "bad address")
    assert "ValueError: bad address" in record.error.traceback
    assert v.settlement.delay_ms == int(v.delay_s * 1000)
    assert 0.5 <= v.delay_s <= 1.0  # equal jitter around the first base delay


def test_the_last_allowed_retry_is_still_a_retry_and_the_next_failure_is_dead() -> None:
    assert verdict_of(job(attempt=1), ValueError("x")).kind == "retried"  # attempt 2 of max_retries 2
    dead = verdict_of(job(attempt=2), ValueError("x"))
    assert (dead.kind, dead.settlement.action, dead.permanent) == ("dead", "dead", False)
    assert dead.failed is not None and dead.failed.attempt == 3


@pytest.mark.parametrize(
    "error", [UnknownWorker("no worker Send"), BatchFailed([0], "refused", permanent=[0])]
)
def test_a_permanent_failure_is_dead_on_its_first_attempt(error: BaseException) -> None:
    v = verdict_of(job(attempt=0), error)
    assert (v.kind, v.permanent) == ("dead", True)


def test_a_timeout_is_recorded_as_a_job_timeout() -> None:
    v = verdict_of(job(), TimeoutError())
    assert v.error is not None and v.error.kind == JobTimeout.__name__
    assert "ran longer than the processor timeout" in v.error.message


def test_a_record_too_big_for_the_payload_limit_is_cut_to_fit() -> None:
    policy = SettlePolicy(POLICY.retry, max_payload_bytes=2048)
    v = verdict_of(job(), ValueError("x" * 10_000), policy)
    assert v.settlement.new_payload is not None and len(v.settlement.new_payload) <= 2048


@pytest.mark.parametrize(
    ("until", "error", "releases"),
    [
        ("finish", None, True),
        ("finish", ValueError("x"), True),  # the script keeps the key of a retried job
        ("start", None, True),  # the safety net when the release at the start was lost
        ("expiry", None, False),
        ("expiry", ValueError("x"), False),
    ],
)
def test_a_unique_job_carries_its_key_unless_it_holds_it_until_expiry(
    until: str, error: BaseException | None, releases: bool
) -> None:
    v = verdict_of(job(unique_key="welcome:42", unique_until=until), error)
    assert v.settlement.unique == (("welcome:42", "j1") if releases else None)


@given(
    attempt=st.integers(0, 50),
    max_retries=st.integers(0, 20),
    permanent=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_a_failure_is_dead_exactly_when_permanent_or_out_of_retries(
    attempt: int, max_retries: int, permanent: bool, seed: int
) -> None:
    policy = SettlePolicy(RetryConfig(max_retries=max_retries, backoff_initial_s=0.5, backoff_max_s=30.0))
    error = BatchFailed([0], "x", permanent=[0] if permanent else [])
    v = verdict_of(job(attempt=attempt), error, policy, seed)
    assert (v.kind == "dead") == (permanent or attempt + 1 > max_retries)
    if v.kind == "retried":
        base = min(30.0, 0.5 * 2**attempt)
        assert base / 2 <= v.delay_s <= base
