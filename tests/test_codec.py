"""The codec: round trips, limits, and rejection of anything that is not a job."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import replace
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flume_rx.model import codec
from flume_rx.model.errors import DecodeError, EncodeError
from flume_rx.model.job import MAX_ATTEMPT, UNIQUE_UNTIL, Job, JobError, build_job, new_job_id

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
errors = st.none() | st.builds(JobError, st.text(max_size=20), st.text(max_size=50), st.text(max_size=100))
# unique_until means something only with a unique key, so the codec writes it only then.
uniqueness = st.just((None, "finish")) | st.tuples(
    st.text(min_size=1, max_size=30), st.sampled_from(UNIQUE_UNTIL)
)
plain_jobs = st.builds(
    Job,
    id=st.text(min_size=1, max_size=40),
    queue=st.text(min_size=1, max_size=20),
    worker=st.text(min_size=1, max_size=20),
    args=st.lists(values, max_size=5),
    attempt=st.integers(0, 1000),
    created_at=st.floats(0, 4e9),
    enqueued_at=st.floats(0, 4e9),
    cost=st.integers(0, 10_000),
    error=errors,
)
jobs = st.builds(
    lambda job, unique: replace(job, unique_key=unique[0], unique_until=unique[1]), plain_jobs, uniqueness
)


@given(jobs)
def test_round_trip(job: Job) -> None:
    assert codec.decode(codec.encode(job)) == job


@given(st.binary(max_size=200))
def test_garbage_raises_decode_error_and_nothing_else(payload: bytes) -> None:
    try:
        job = codec.decode(payload)
    except DecodeError:
        return
    assert isinstance(job, Job)  # the rare garbage that is a valid record decodes to a real Job


@given(values)
def test_any_msgpack_value_that_is_not_a_job_is_rejected(value: Any) -> None:
    with pytest.raises(DecodeError):
        codec.decode(
            msgpack.packb(value, use_bin_type=True)
            if not isinstance(value, list) or value[:1] != [1]
            else b"\xc1"
        )


def test_unencodable_args_are_refused_with_the_worker_named() -> None:
    with pytest.raises(EncodeError, match="EmailWorker"):
        codec.encode(Job("1", "q", "EmailWorker", [object()]))


def test_oversized_payloads_are_refused_both_ways() -> None:
    big = Job("1", "q", "W", ["x" * 2000])
    with pytest.raises(EncodeError, match="max_payload_bytes"):
        codec.encode(big, max_bytes=1000)
    with pytest.raises(DecodeError, match="exceeds"):
        codec.decode(codec.encode(big), max_bytes=1000)


def test_unknown_format_version_is_named() -> None:
    with pytest.raises(DecodeError, match="format version 99"):
        codec.decode(msgpack.packb([99, "id"]))


def test_wrong_field_types_are_named() -> None:
    record = [1, "id", "q", "W", "not a list", 0, 0.0, 0.0, 1, None]
    with pytest.raises(DecodeError, match="'args'"):
        codec.decode(msgpack.packb(record))


def test_a_job_without_unique_key_encodes_as_the_ten_field_record_older_workers_read() -> None:
    record = msgpack.unpackb(codec.encode(Job("1", "q", "W", [1], created_at=5.0)))
    assert len(record) == 10
    with_key = msgpack.unpackb(codec.encode(Job("1", "q", "W", [1], created_at=5.0, unique_key="welcome:1")))
    assert with_key[:10] == record and with_key[10] == "welcome:1"


def test_a_unique_key_of_the_wrong_type_is_named() -> None:
    record = msgpack.unpackb(codec.encode(Job("1", "q", "W", [1], unique_key="k")))
    record[10] = 7
    with pytest.raises(DecodeError, match="unique_key"):
        codec.decode(msgpack.packb(record))
    with pytest.raises(DecodeError, match="unique_until"):
        codec.decode(msgpack.packb([*record[:10], "k", "extra"]))
    with pytest.raises(DecodeError, match="meta"):
        codec.decode(msgpack.packb([*record[:10], "k", "start", "extra"]))
    with pytest.raises(DecodeError, match="fields"):
        codec.decode(msgpack.packb([*record[:10], "k", "start", {}, "extra"]))


def test_meta_travels_with_the_job_and_plain_jobs_keep_the_short_record() -> None:
    traced = Job("1", "q", "W", [1], meta={"trace": {"traceparent": "00-ab-cd-01"}})
    assert codec.decode(codec.encode(traced)) == traced
    unique = Job("1", "q", "W", [1], unique_key="k", unique_until="start", meta={"x": [1]})
    assert codec.decode(codec.encode(unique)) == unique
    assert len(msgpack.unpackb(codec.encode(Job("1", "q", "W", [1])))) == 10


def test_unique_until_is_written_only_when_it_is_not_the_default() -> None:
    finish = msgpack.unpackb(codec.encode(Job("1", "q", "W", [1], unique_key="k")))
    start = msgpack.unpackb(codec.encode(Job("1", "q", "W", [1], unique_key="k", unique_until="start")))
    assert len(finish) == 11 and start[11] == "start"


@given(
    args=st.lists(st.text(max_size=300), max_size=4),
    kind=st.text(max_size=300),
    message=st.text(max_size=3000),
    trace=st.text(max_size=3000),
    limit=st.integers(200, 4000),
)
def test_a_failed_job_is_stored_with_its_error_cut_to_fit_or_refused(
    args: list[str], kind: str, message: str, trace: str, limit: int
) -> None:
    job = Job("id", "q", "W", args, attempt=2, created_at=1.0, error=JobError(kind, message, trace))
    try:
        payload = codec.encode_cut_to_fit(job, limit)
    except EncodeError:
        # Only when the job does not fit even with an empty message and traceback.
        bare = replace(job, error=JobError(kind[:200], "", ""))
        with pytest.raises(EncodeError):
            codec.encode(bare, limit)
        return
    assert len(payload) <= limit
    back = codec.decode(payload, limit)
    assert back.args == args and back.attempt == 2 and back.error is not None
    assert kind.startswith(back.error.kind)
    assert message.startswith(back.error.message)  # the head of the message
    assert trace.endswith(back.error.traceback)  # the tail of the traceback
    if len(codec.encode(job, 10**9)) <= limit:
        assert back.error == job.error  # nothing cut when it fits


def test_counting_attempts_stops_at_the_largest_a_record_holds() -> None:
    job = Job("id", "q", "W", [], attempt=MAX_ATTEMPT)
    failed = job.next_attempt(JobError("E", "m"))
    assert failed.attempt == MAX_ATTEMPT
    assert codec.decode(codec.encode(failed)).attempt == MAX_ATTEMPT


@given(st.data())
def test_job_ids_are_uuid4_hex_and_built_jobs_equal_the_dataclass_built_ones(data: st.DataObject) -> None:
    job = build_job(
        data.draw(st.text(min_size=1, max_size=20).filter(lambda q: "{" not in q and "}" not in q)),
        data.draw(st.text(min_size=1, max_size=20)),
        data.draw(st.lists(scalars, max_size=4)),
        data.draw(st.integers(0, 10)),
    )
    parsed = uuid.UUID(hex=job.id)
    assert (parsed.hex, parsed.version, parsed.variant) == (job.id, 4, uuid.RFC_4122)
    assert job == Job(job.id, job.queue, job.worker, job.args, 0, job.created_at, job.enqueued_at, job.cost)
    assert codec.decode(codec.encode(job)) == job


def test_job_ids_do_not_repeat() -> None:
    ids = {new_job_id() for _ in range(100_000)}
    assert len(ids) == 100_000


def test_a_failed_encode_leaves_nothing_behind_for_the_next_one() -> None:
    good = build_job("q", "w", [1, "a"])
    with pytest.raises(EncodeError):
        codec.encode(build_job("q", "w", [1, object()]))
    with pytest.raises(EncodeError):
        codec.encode(build_job("q", "w", [2**70]))
    assert codec.encode(good) == msgpack.packb(
        [codec.FORMAT_VERSION, good.id, "q", "w", [1, "a"], 0, good.created_at, good.enqueued_at, 1, None],
        use_bin_type=True,
    )


class _Items(dict[str, Any]):
    """A dict subclass: msgpack walks it through its ``items``, Python code where another thread may cut in
    (here it lets go of the interpreter on purpose)."""

    def items(self) -> Any:
        time.sleep(0)
        return super().items()


def test_threads_encoding_at_once_each_get_their_own_record() -> None:
    jobs = [build_job("q", "w", [n, _Items({"n": n, "pad": "x" * (n % 50)})]) for n in range(400)]
    expected = [codec.encode(job) for job in jobs]
    got: list[list[bytes]] = [[] for _ in range(4)]

    def encode_all(slot: list[bytes]) -> None:
        for _ in range(5):
            slot[:] = [codec.encode(job) for job in jobs]

    threads = [threading.Thread(target=encode_all, args=(slot,)) for slot in got]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert got == [expected] * 4
