"""msgpack encoding of jobs, with a format version and strict validation on the way back."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import msgpack

from flume_rx.model.errors import DecodeError, EncodeError
from flume_rx.model.job import UNIQUE_UNTIL, Job, JobError, make_job

FORMAT_VERSION = 1
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
_FIELDS = 10  # version, id, queue, worker, args, attempt, created_at, enqueued_at, cost, error
# Optional trailing fields, written only when set, so jobs without them stay readable by older workers.
_OPTIONAL_FIELDS = 3  # unique_key, unique_until (when not "finish"), meta (a map, when set)
_packers = threading.local()


def _packer() -> msgpack.Packer:
    """This thread's Packer for job records.

    ``msgpack.packb`` builds a Packer per call, and its set-up was most of encode's cost for a producer that
    wakes to enqueue one job (44 against 18 µs, cold). One per thread, as a Packer's buffer is not to be
    shared: a record holding a dict subclass runs Python code mid-pack, where another thread could cut in.
    A failed pack empties the buffer, so the next one starts clean.
    """
    try:
        packer: msgpack.Packer = _packers.packer
    except AttributeError:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True, datetime=False)
    return packer


def encode(job: Job, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> bytes:
    """Encode a job as a msgpack array.

    Raises:
        EncodeError: the args hold a value msgpack cannot encode, or the payload exceeds ``max_bytes``.
    """
    error = None if job.error is None else [job.error.kind, job.error.message, job.error.traceback]
    record = [
        FORMAT_VERSION,
        job.id,
        job.queue,
        job.worker,
        list(job.args),
        job.attempt,
        job.created_at,
        job.enqueued_at,
        job.cost,
        error,
    ]
    if job.unique_key is not None or job.meta:
        record.append(job.unique_key)
        if job.unique_until != "finish" or job.meta:
            record.append(job.unique_until)
        if job.meta:
            record.append(job.meta)
    try:
        payload: bytes = _packer().pack(record)
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(
            f"the args of job for worker {job.worker!r} cannot be encoded as msgpack ({exc}); "
            "pass only None, bool, int, float, str, bytes, lists and dicts"
        ) from exc
    if len(payload) > max_bytes:
        raise EncodeError(
            f"the job for worker {job.worker!r} encodes to {len(payload)} bytes, over the limit of "
            f"{max_bytes} (max_payload_bytes); store large data elsewhere and pass a reference"
        )
    return payload


def encode_cut_to_fit(job: Job, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> bytes:
    """Encode a failed job, cutting its error's message (keeping the head) and traceback (keeping the tail)
    as much as it takes to fit ``max_bytes``: the record of a retry or a dead letter is stored anyway.

    Raises:
        EncodeError: the job does not fit even with an empty message and traceback.
    """
    try:
        return encode(job, max_bytes)
    except EncodeError:
        if job.error is None:
            raise
    error = job.error
    kind = error.kind[:_KIND_CHARS]
    bare = dataclasses.replace(job, error=JobError(kind, "", ""))
    # Each of the two strings gains a header of at most 5 bytes as it grows.
    room = max_bytes - len(encode(bare, max_bytes)) - 10
    message = _utf8_head(error.message, room)
    traceback = _utf8_tail(error.traceback, room - len(message.encode("utf-8")))
    return encode(dataclasses.replace(job, error=JobError(kind, message, traceback)), max_bytes)


_KIND_CHARS = 200


def _utf8_head(text: str, max_bytes: int) -> str:
    return text.encode("utf-8")[: max(0, max_bytes)].decode("utf-8", errors="ignore")


def _utf8_tail(text: str, max_bytes: int) -> str:
    data = text.encode("utf-8")
    return data[len(data) - max(0, max_bytes) :].decode("utf-8", errors="ignore") if max_bytes > 0 else ""


def encode_result(value: Any) -> bytes:
    """A worker's return value as msgpack, for ``Flume.result``.

    Raises:
        EncodeError: msgpack cannot hold it.
    """
    try:
        data: bytes = msgpack.packb(value, use_bin_type=True, datetime=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(
            f"the worker's return value cannot be kept as a result ({exc}); return only None, bool, int, "
            "float, str, bytes, lists and dicts, or drop result_ttl"
        ) from exc
    return data


def decode_result(data: bytes) -> Any:
    """A kept result, as :func:`encode_result` wrote it."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def decode(payload: bytes, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> Job:
    """Decode and validate a payload read from Redis.

    Raises:
        DecodeError: the payload is too large, not msgpack, of an unknown format version, or of the wrong shape.
    """
    if not isinstance(payload, bytes | bytearray):
        raise DecodeError(f"payload is {type(payload).__name__}, not bytes")
    if len(payload) > max_bytes:
        raise DecodeError(f"payload of {len(payload)} bytes exceeds the limit of {max_bytes}")
    try:
        record = msgpack.unpackb(payload, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types for corrupt input
        raise DecodeError(f"payload is not valid msgpack ({type(exc).__name__}: {exc})") from exc
    if type(record) is list and _well_formed(record):
        # The common case, checked in one expression; anything else takes the path below, which names the fault.
        return make_job(
            record[1],
            record[2],
            record[3],
            record[4],
            record[5],
            float(record[6]),
            float(record[7]),
            record[8],
            None,
            record[_FIELDS] if len(record) > _FIELDS else None,
            "finish",
        )
    if not isinstance(record, list) or not record:
        raise DecodeError(f"payload is a {type(record).__name__}, not a flume_rx job record")
    if record[0] != FORMAT_VERSION:
        raise DecodeError(f"payload has format version {record[0]!r}; this flume_rx reads {FORMAT_VERSION}")
    if not _FIELDS <= len(record) <= _FIELDS + _OPTIONAL_FIELDS:
        raise DecodeError(
            f"job record has {len(record)} fields, expected {_FIELDS} to {_FIELDS + _OPTIONAL_FIELDS}"
        )
    _, job_id, queue, worker, args, attempt, created_at, enqueued_at, cost, error = record[:_FIELDS]
    unique_key = record[_FIELDS] if len(record) > _FIELDS else None
    if unique_key is not None:
        _expect(unique_key, str, "unique_key")
    unique_until = record[_FIELDS + 1] if len(record) > _FIELDS + 1 else "finish"
    if unique_until not in UNIQUE_UNTIL:
        raise DecodeError(f"job record field 'unique_until' is {unique_until!r}, not one of {UNIQUE_UNTIL}")
    meta = record[_FIELDS + 2] if len(record) > _FIELDS + 2 else None
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(k, str) for k in meta)):
        raise DecodeError(
            f"job record field 'meta' is {type(meta).__name__}, expected a map with string keys"
        )
    _expect(job_id, str, "id")
    _expect(queue, str, "queue")
    _expect(worker, str, "worker")
    _expect(args, list, "args")
    _expect_int(attempt, "attempt")
    _expect_number(created_at, "created_at")
    _expect_number(enqueued_at, "enqueued_at")
    _expect_int(cost, "cost")
    if attempt < 0 or cost < 0:
        raise DecodeError(f"job record has a negative attempt ({attempt}) or cost ({cost})")
    job_error = None
    if error is not None:
        if not (isinstance(error, list) and len(error) == 3 and all(isinstance(e, str) for e in error)):
            raise DecodeError("job record field 'error' is not [kind, message, traceback]")
        job_error = JobError(error[0], error[1], error[2])
    return Job(
        id=job_id,
        queue=queue,
        worker=worker,
        args=args,
        attempt=attempt,
        created_at=float(created_at),
        enqueued_at=float(enqueued_at),
        cost=cost,
        error=job_error,
        unique_key=unique_key,
        unique_until=unique_until,
        meta=meta or None,
    )


_NUMBER_TYPES = (int, float)
_INF = float("inf")


def _well_formed(record: list[Any]) -> bool:
    """Whether a record has every field of its exact type, no error and no unique_until (a first try).

    Exact types, not isinstance: msgpack builds exact types, and ``type(True) is int`` is false, as the checks
    below require. False sends the record to the detailed checks, which decide.
    """
    n = len(record)
    if n != _FIELDS and n != _FIELDS + 1:
        return False
    _, job_id, queue, worker, args, attempt, created_at, enqueued_at, cost, error = record[:_FIELDS]
    return (
        record[0] == FORMAT_VERSION
        and type(job_id) is str
        and type(queue) is str
        and type(worker) is str
        and type(args) is list
        and type(attempt) is int
        and attempt >= 0
        and type(cost) is int
        and cost >= 0
        and type(created_at) in _NUMBER_TYPES
        and type(enqueued_at) in _NUMBER_TYPES
        and -_INF < created_at < _INF  # false for NaN too
        and -_INF < enqueued_at < _INF
        and error is None
        and (n == _FIELDS or record[_FIELDS] is None or type(record[_FIELDS]) is str)
    )


def _expect(value: Any, kind: type, name: str) -> None:
    if not isinstance(value, kind):
        raise DecodeError(f"job record field {name!r} is {type(value).__name__}, expected {kind.__name__}")


def _expect_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DecodeError(f"job record field {name!r} is {type(value).__name__}, expected int")


def _expect_number(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DecodeError(f"job record field {name!r} is {type(value).__name__}, expected a number")
    if not -_INF < value < _INF:
        # NaN and the infinities are no moment in time; they would poison every latency figure downstream.
        raise DecodeError(f"job record field {name!r} is {value!r}, expected a finite number")
