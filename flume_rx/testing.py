"""A test mode for applications that enqueue flume_rx jobs: a drop-in for :class:`~flume_rx.Flume`, no Redis.

:class:`FlumeTest` takes the same ``enqueue``, ``bulk_enqueue``, ``enqueue_in`` and ``enqueue_at`` calls as
``Flume`` and checks and encodes every job with the real codec, so arguments that would fail in production
fail in tests too. Then, depending on ``mode``:

- ``"inline"``: enqueue runs the job's registered worker at once, in this process (async workers too), and a
  worker's exception reaches the caller of enqueue.
- ``"fake"``: jobs are only recorded. Assert on them with :meth:`FlumeTest.assert_enqueued` and friends, and
  run them with :meth:`FlumeTest.drain` (jobs that workers enqueue while draining run in the same drain).

Workers receive their args after a msgpack round trip, exactly as a worker process would (tuples come back
as lists). Nothing is retried: a test wants to see the failure, not wait for a backoff.

>>> from flume_rx.testing import FlumeTest
>>> flume = FlumeTest()
>>> job_id = flume.enqueue("email", "Welcome", [42])
>>> flume.assert_enqueued("Welcome", [42]).id == job_id
True
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from flume_rx.engine.workflows import (
    Chain,
    Group,
    StepSpec,
    flow_of,
    group_members,
    is_workflow_job,
    job_of,
    new_group_id,
    next_in_chain,
    steps_of,
)
from flume_rx.model import codec
from flume_rx.model.errors import ConfigError
from flume_rx.model.job import Flow, Job
from flume_rx.model.registry import get_worker
from flume_rx.surfaces.producer import Producer, Uniqueness, When

__all__ = ["FlumeTest", "Run"]

Mode = Literal["inline", "fake"]


@dataclass(frozen=True, slots=True)
class Run:
    """One job run by :class:`FlumeTest`: the job, what its worker returned, or the exception it raised."""

    job: Job
    result: Any = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(slots=True)
class _Recorded:
    job: Job
    due_at: float | None  # unix seconds for enqueue_in/at, None for "now"


class FlumeTest(Producer):
    """A stand-in for :class:`~flume_rx.Flume` in users' tests; see the module docstring.

    Args:
        mode: ``"inline"`` (run at enqueue) or ``"fake"`` (record; run with :meth:`drain`).
        max_payload_bytes: the same limit ``Flume`` enforces (1 MiB by default).
        raise_errors: in inline mode, re-raise a worker's exception from enqueue; in :meth:`drain`, the
            default of its own ``raise_errors``.
        clock: the time source for ``enqueue_in`` due dates and :meth:`drain`'s ``until`` (tests may pass a
            fake clock).
    """

    def __init__(
        self,
        mode: Mode = "fake",
        *,
        max_payload_bytes: int = codec.DEFAULT_MAX_PAYLOAD_BYTES,
        raise_errors: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if mode not in ("inline", "fake"):
            raise ValueError(f"mode must be 'inline' or 'fake' (got {mode!r})")
        self.mode: Mode = mode
        self.max_payload_bytes = max_payload_bytes
        self.raise_errors = raise_errors
        self.clock = clock
        self.enqueued: list[Job] = []
        """Every job ever enqueued, in order (drained or not)."""
        self.runs: list[Run] = []
        """Every run, in order, from inline enqueues and drains."""
        self._pending: list[_Recorded] = []
        self._held_until: dict[tuple[str, str], tuple[str, float]] = {}
        """(queue, unique key) -> (holder's id, clock time the hold ends), for ``unique_until="expiry"``."""
        self._lock = threading.RLock()
        self._groups: dict[str, tuple[Job, int, dict[int, dict[str, Any]]]] = {}
        """group id -> (callback job, members, outcomes so far by member)."""

    # ---- the Flume enqueue API -----------------------------------------------------------------------------

    def _put(
        self, jobs: Sequence[Job], when: When, dues: Sequence[float], unique: Sequence[Uniqueness | None]
    ) -> list[str]:
        """Record (or, inline, run) checked jobs; ``enqueue_in`` counts from :attr:`clock`."""
        ids: list[str] = []
        for job, due, uniqueness in zip(jobs, dues, unique, strict=True):
            due_at = None if when == "now" else self.clock() + due if when == "in" else due
            ids.append(self._accept(job, due_at, uniqueness))
        return ids

    def chain(self, steps: Sequence[StepSpec]) -> Chain:
        """As ``Flume.chain``: each step, once it succeeds, enqueues the next with its result appended; a
        step that fails stops the chain (nothing is retried here)."""
        checked = steps_of(steps, "chain")
        if not checked:
            raise ConfigError("a chain needs at least one step; pass them as [(queue, worker, args), ...]")
        rest = tuple(checked[1:])
        self._accept(self._round_trip(job_of(checked[0], Flow(rest) if rest else None)), None, None)
        return Chain([step.id for step in checked], [step.queue for step in checked])

    def group(self, jobs: Sequence[StepSpec], then: StepSpec, *, keep_s: float = 0.0) -> Group:
        """As ``Flume.group``: once every member has run, ``then`` is enqueued with one
        ``{"id", "ok", "result", "error"}`` per member (``keep_s`` is accepted and ignored)."""
        group_id = new_group_id()
        members, callback = group_members(jobs, then, group_id)
        with self._lock:
            self._groups[group_id] = (callback, len(members), {})
        for member in members:
            self._accept(self._round_trip(member), None, None)
        return Group(group_id, [m.id for m in members], callback.id, callback.queue)

    def _round_trip(self, job: Job) -> Job:
        return codec.decode(codec.encode(job, self.max_payload_bytes), self.max_payload_bytes)

    def _hand_on(self, run: Run) -> None:
        """What a settled workflow job hands on: the next chain step, or its outcome to its group."""
        job, flow = run.job, flow_of(run.job)
        if flow is None:
            return
        if run.ok:
            following = next_in_chain(job, run.result, self.max_payload_bytes)
            if following is not None:
                self._accept(codec.decode(following.payload, self.max_payload_bytes), None, None)
        if not flow.group:
            return
        error = None if run.error is None else f"{type(run.error).__name__}: {run.error}"
        outcome = {"id": job.id, "ok": run.ok, "result": run.result if run.ok else None, "error": error}
        with self._lock:
            callback, size, outcomes = self._groups[flow.group]
            outcomes.setdefault(flow.member, codec.decode_result(codec.encode_result(outcome)))
            if len(outcomes) < size:
                return
            del self._groups[flow.group]
        args = [*callback.args, [outcomes[m] for m in range(size)]]
        self._accept(self._round_trip(replace(callback, args=args)), None, None)

    def close(self) -> None:
        """Nothing to close; here so code that closes its ``Flume`` runs unchanged."""

    def __enter__(self) -> FlumeTest:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ---- assertions ----------------------------------------------------------------------------------------

    def jobs(self, worker: str | None = None, *, queue: str | None = None) -> list[Job]:
        """The jobs waiting to run (fake mode), oldest first, optionally only one worker's or one queue's."""
        with self._lock:
            return [r.job for r in self._pending if _matches(r.job, worker, None, queue)]

    def assert_enqueued(
        self,
        worker: str,
        args: Sequence[Any] | None = None,
        *,
        queue: str | None = None,
        count: int | None = None,
    ) -> Job:
        """Check that a job for ``worker`` (with these args, on this queue) was enqueued; returns the last.

        Args are compared after the codec round trip, so ``(1, 2)`` and ``[1, 2]`` are equal.

        Raises:
            AssertionError: no such job, or not exactly ``count`` of them, listing what was enqueued.
        """
        wanted = None if args is None else _round_trip_args(args)
        with self._lock:
            found = [job for job in self.enqueued if _matches(job, worker, wanted, queue)]
            if not found or (count is not None and len(found) != count):
                expected = f"{count} job(s)" if count is not None else "a job"
                raise AssertionError(
                    f"expected {expected} for worker {worker!r}"
                    + ("" if args is None else f" with args {wanted!r}")
                    + ("" if queue is None else f" on queue {queue!r}")
                    + f", found {len(found)}; enqueued: {_describe(self.enqueued)}"
                )
            return found[-1]

    def assert_not_enqueued(
        self, worker: str, args: Sequence[Any] | None = None, *, queue: str | None = None
    ) -> None:
        """Check that no job for ``worker`` (with these args, on this queue) was enqueued.

        Raises:
            AssertionError: one was, naming it.
        """
        wanted = None if args is None else _round_trip_args(args)
        with self._lock:
            found = [job for job in self.enqueued if _matches(job, worker, wanted, queue)]
        if found:
            raise AssertionError(f"expected no job for worker {worker!r}, found: {_describe(found)}")

    def clear(self) -> None:
        """Forget every recorded job and run."""
        with self._lock:
            self.enqueued.clear()
            self.runs.clear()
            self._pending.clear()

    # ---- running -------------------------------------------------------------------------------------------

    def drain(
        self,
        queue: str | None = None,
        *,
        until: float | None = None,
        raise_errors: bool | None = None,
        max_jobs: int = 10_000,
    ) -> list[Run]:
        """Run the waiting jobs (all queues, or one) with their registered workers, oldest first.

        Jobs that workers enqueue meanwhile run in the same drain. Call it from sync or async tests alike
        (from a running event loop, async workers run on a private loop in a helper thread).

        Args:
            queue: only this queue's jobs.
            until: run scheduled jobs due at or before this unix time only (default: every job, due or not).
            raise_errors: re-raise the first worker exception after the drain stops at it (default: the
                instance's ``raise_errors``); otherwise failures are returned as :class:`Run` with ``error``.
            max_jobs: a guard against workers that enqueue themselves forever.

        Returns:
            The runs of this drain, in order.
        """
        raise_now = self.raise_errors if raise_errors is None else raise_errors
        runs: list[Run] = []
        while True:
            record = self._next(queue, until)
            if record is None:
                return runs
            if len(runs) >= max_jobs:
                raise RuntimeError(
                    f"drain ran {max_jobs} jobs and more keep coming; a worker probably enqueues itself "
                    "forever (raise max_jobs if that is intended)"
                )
            run = self._run(record.job)
            runs.append(run)
            if run.error is not None and raise_now:
                raise run.error

    # ---- internals -----------------------------------------------------------------------------------------

    def _build(self, queue: str, worker: str, args: Sequence[Any], cost: int) -> Job:
        job = super()._build(queue, worker, args, cost)
        # The real codec, both ways: what cannot be encoded fails here as it would in production, and the
        # worker later sees exactly what a worker process would decode.
        return codec.decode(codec.encode(job, self.max_payload_bytes), self.max_payload_bytes)

    def _accept(self, job: Job, due_at: float | None, uniqueness: Uniqueness | None) -> str:
        with self._lock:
            if uniqueness is not None:
                holder = self._holder(job.queue, uniqueness.key)
                if holder is not None:
                    return holder
                job = replace(job, unique_key=uniqueness.key, unique_until=uniqueness.until)
                if uniqueness.until == "expiry":
                    start = self.clock() if due_at is None else due_at
                    self._held_until[(job.queue, uniqueness.key)] = (job.id, start + uniqueness.for_s)
            self.enqueued.append(job)
            if self.mode == "fake":
                self._pending.append(_Recorded(job, due_at))
                return job.id
        run = self._run(job)
        if run.error is not None and self.raise_errors:
            raise run.error
        return job.id

    def _holder(self, queue: str, key: str) -> str | None:
        for record in self._pending:
            if record.job.unique_key == key and record.job.queue == queue:
                return record.job.id
        held = self._held_until.get((queue, key))
        if held is not None and self.clock() < held[1]:
            return held[0]
        return None

    def _next(self, queue: str | None, until: float | None) -> _Recorded | None:
        with self._lock:
            candidates = [
                r
                for r in self._pending
                if (queue is None or r.job.queue == queue)
                and (until is None or r.due_at is None or r.due_at <= until)
            ]
            if not candidates:
                return None
            # Jobs due now first in enqueue order, then scheduled ones by due time (min keeps ties in order).
            record = min(candidates, key=lambda r: 0.0 if r.due_at is None else r.due_at)
            self._pending.remove(record)
            return record

    def _run(self, job: Job) -> Run:
        try:
            spec = get_worker(job.worker)
            call_args: tuple[Any, ...] = ([list(job.args)],) if spec.batch else tuple(job.args)
            result = _run_coroutine(spec.fn, call_args) if spec.is_async else spec.fn(*call_args)
            run = Run(job, result)
        except Exception as exc:
            run = Run(job, error=exc)
        with self._lock:
            self.runs.append(run)
        if is_workflow_job(job):
            self._hand_on(run)
        return run


def _run_coroutine(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(fn(*args))
    # Called from inside a running loop (an async test or app): that loop cannot be blocked on, so the worker
    # gets a loop of its own in a helper thread, and enqueue still returns only once it has run.
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = asyncio.run(fn(*args))
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="flume-test-worker")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("result")


def _round_trip_args(args: Sequence[Any]) -> list[Any]:
    probe = Job("probe", "probe", "probe", list(args))
    return list(codec.decode(codec.encode(probe)).args)


def _matches(job: Job, worker: str | None, args: list[Any] | None, queue: str | None) -> bool:
    return (
        (worker is None or job.worker == worker)
        and (args is None or list(job.args) == args)
        and (queue is None or job.queue == queue)
    )


def _describe(jobs: Sequence[Job]) -> str:
    if not jobs:
        return "none"
    shown = ", ".join(f"{j.worker}{tuple(j.args)!r} on {j.queue!r}" for j in jobs[:10])
    return shown + (f" and {len(jobs) - 10} more" if len(jobs) > 10 else "")
