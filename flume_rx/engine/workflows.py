"""Workflows: chains, groups with a callback, and the durable hop between pipelines.

Each hand-off rides in the settle script call of the job that makes it (:class:`~flume_rx.store.Handoff`),
so it happens exactly when that job leaves the in-flight list: once, whatever process dies when.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any

import msgpack
from reactivex import Observable
from reactivex import operators as ops

from flume_rx.engine.source import Delivery
from flume_rx.model import codec
from flume_rx.model.errors import ConfigError, DecodeError
from flume_rx.model.job import Flow, Job, JobError, Step, build_job, new_job_id
from flume_rx.store import Handoff, Keys

StepSpec = tuple[str, str] | tuple[str, str, Sequence[Any]]
"""A workflow step as users write it: ``(queue, worker)`` or ``(queue, worker, args)``."""

GROUP_KEPT_S = 7 * 24 * 3600.0
"""How long a group waits for its members by default; an outcome arriving after that is not gathered."""


@dataclass(frozen=True, slots=True)
class Chain:
    """A chain as ``Flume.chain`` started it: the job id of every step, in order (later ones are unknown to
    ``Flume.job`` until their turn comes)."""

    ids: list[str]
    queues: list[str]

    @property
    def last(self) -> str:
        """The last step's job id: ``Flume.result(chain.last, chain.last_queue)`` waits for the chain's
        result."""
        return self.ids[-1]

    @property
    def last_queue(self) -> str:
        return self.queues[-1]


@dataclass(frozen=True, slots=True)
class Group:
    """A group as ``Flume.group`` started it: its id, its members' job ids, and its callback's job id."""

    id: str
    members: list[str]
    then: str
    then_queue: str


def to_queue(queue: str, worker: str) -> Callable[[Observable[Any]], Observable[Any]]:
    """The operator behind ``Flume.to_queue``: marks each outcome's jobs to hand their result on."""
    hop = (queue, worker)

    def mark(outcome: Any) -> Any:
        item = outcome.item
        for delivery in item if isinstance(item, list) else (item,):
            if isinstance(delivery, Delivery):
                delivery.hop = hop
        return outcome

    return ops.map(mark)


def steps_of(specs: Sequence[StepSpec], what: str) -> list[Step]:
    """Checked steps, each with its job id chosen now.

    Raises:
        ConfigError: a step is not ``(queue, worker)`` or ``(queue, worker, args)``, or its parts are wrong.
    """
    steps = []
    for spec in specs:
        if not isinstance(spec, tuple | list) or len(spec) not in (2, 3):
            raise ConfigError(
                f"a {what} step must be (queue, worker) or (queue, worker, args) (got {spec!r}); "
                'e.g. ("wf/resize", "resize", ["photo.jpg"])'
            )
        queue, worker = spec[0], spec[1]
        args = list(spec[2]) if len(spec) == 3 else []
        job = build_job(queue, worker, args)
        steps.append(Step(job.id, job.queue, job.worker, job.args))
    return steps


def check_one_slot(keys: Keys, queues: Sequence[str], what: str) -> None:
    """On Redis Cluster, a hand-off's keys must share a slot: refuse queues of different groups.

    Raises:
        ConfigError: the queues hash to different slots; the message says how to group them.
    """
    tags = {keys.of(q).hash_tag for q in queues}
    if len(tags) > 1:
        raise ConfigError(
            f"the queues {sorted(set(queues))} of this {what} are in different cluster slots; on Redis Cluster "
            'name them in one group (e.g. "wf/resize", "wf/upload") so each hand-off is one script call'
        )


FLOW = "flow"
"""The key of a workflow job's :class:`Flow` in the job's ``meta`` (plain jobs have none)."""


def job_of(step: Step, flow: Flow | None, carried: dict[str, Any] | None = None) -> Job:
    """The job of ``step``, carrying ``flow`` and the rest of the meta it inherits (a trace context)."""
    now = time.time()
    meta = {k: v for k, v in (carried or {}).items() if k != FLOW}
    if flow is not None:
        meta[FLOW] = flow_record(flow)
    return Job(step.id, step.queue, step.worker, list(step.args), 0, now, now, 1, meta=meta or None)


def is_workflow_job(job: Job) -> bool:
    """Whether ``job`` hands anything on when settled (one dict lookup, and only for jobs with meta)."""
    return job.meta is not None and FLOW in job.meta


def flow_record(flow: Flow) -> list[Any]:
    """A flow as it travels in the job's meta (msgpack)."""
    record = [
        [[step.id, step.queue, step.worker, list(step.args)] for step in flow.chain],
        flow.group,
        flow.then_queue,
        flow.member,
    ]
    return [*record, flow.then_id] if flow.then_id else record


def flow_of(job: Job) -> Flow | None:
    """The workflow ``job`` is part of, None for none.

    Raises:
        DecodeError: its flow is malformed (the job then goes to the dead letters saying so).
    """
    if job.meta is None or FLOW not in job.meta:
        return None
    record = job.meta[FLOW]
    # A group member's flow ends with its callback's job id; flows written before it have four fields.
    if not (isinstance(record, list) and len(record) in (4, 5)):
        raise DecodeError("job meta field 'flow' is not [chain, group, then_queue, member, then_id]")
    chain, group, then_queue, member, *then = record
    then_id = then[0] if then else ""
    if not (
        isinstance(chain, list)
        and isinstance(group, str)
        and isinstance(then_queue, str)
        and type(member) is int
        and isinstance(then_id, str)
    ):
        raise DecodeError("job meta field 'flow' is not [chain, group, then_queue, member, then_id]")
    steps = []
    for step in chain:
        if not (
            isinstance(step, list)
            and len(step) == 4
            and all(isinstance(part, str) for part in step[:3])
            and isinstance(step[3], list)
        ):
            raise DecodeError("a step of job meta field 'flow' is not [id, queue, worker, args]")
        steps.append(Step(step[0], step[1], step[2], step[3]))
    return Flow(tuple(steps), group, then_queue, member, then_id)


def next_in_chain(job: Job, value: Any, max_bytes: int) -> Handoff | None:
    """The hand-off of a chain step that succeeded with ``value``: the next step, ``value`` appended to its
    args, carrying the steps after it. None when ``job`` ends its chain."""
    flow = flow_of(job)
    if flow is None or not flow.chain:
        return None
    step, rest = flow.chain[0], flow.chain[1:]
    following = job_of(
        Step(step.id, step.queue, step.worker, [*step.args, value]), Flow(rest) if rest else None, job.meta
    )
    return Handoff(step.queue, codec.encode(following, max_bytes), to_come=step.id)


def chain_stopped(
    job: Job, error: str, keep_ms: int, max_bytes: int, how: str = "went dead"
) -> list[Handoff]:
    """The hand-offs of a chain step that went dead (or was cancelled: ``how``): every later step is recorded
    as cancelled, saying where the chain stopped, so whoever waits for it learns at once."""
    flow = flow_of(job)
    if flow is None:
        return []
    return steps_stopped(flow.chain, job, f"{how}: {error}", keep_ms, max_bytes)


def steps_stopped(
    steps: Sequence[Step], at: Job | Step, why: str, keep_ms: int, max_bytes: int
) -> list[Handoff]:
    """The hand-offs recording ``steps`` as cancelled because their chain stopped at step ``at`` (``why``)."""
    error = JobError("ChainStopped", f"step {at.id} ({at.worker} on {at.queue!r}) {why}")
    return [
        Handoff(
            step.queue,
            codec.encode_cut_to_fit(replace(job_of(step, None), error=error), max_bytes),
            stopped=step.id,
            keep_ms=keep_ms,
        )
        for step in steps
    ]


def cancelled_handoffs(job: Job, running: bool, keep_ms: int, max_bytes: int) -> list[Handoff]:
    """The hand-offs of a workflow job that ``Flume.cancel`` took off before it ran (or aborted while it ran,
    ``running``), as a job that went dead makes them: a group member's outcome (failed, saying so), so its
    callback still runs, and a chain's later steps recorded as stopped.

    Raises:
        DecodeError: its flow is malformed.
    """
    if running:
        how, error = "was aborted", "Aborted: the job was cancelled while it ran"
    else:
        how, error = "was cancelled", "Cancelled: the job was taken off before it ran"
    handoffs = chain_stopped(job, error, keep_ms, max_bytes, how=how)
    joined = member_outcome(job, False, None, error)
    return handoffs if joined is None else [*handoffs, joined]


def pending_records(steps: Sequence[Step]) -> list[tuple[str, str, dict[str, bytes | str | int]]]:
    """``(queue, job id, fields)`` of a chain's steps: the records of the steps after the first exist from
    the start (``chained``), so ``Flume.result`` can wait for a step not yet enqueued, and ``Flume.job`` says
    which step it waits on (``after``); every step's record names the whole chain, for ``Flume.workflow``."""
    chain = _step_list(steps)
    # The first step's record only names its chain: it is enqueued now, so it waits on nothing.
    records: list[tuple[str, str, dict[str, bytes | str | int]]] = [
        (steps[0].queue, steps[0].id, {"chain": chain, "step": 0})
    ]
    for n, (before, step) in enumerate(pairwise(steps), start=1):
        fields: dict[str, bytes | str | int] = {
            "chained": 1,
            "after": before.id,
            "after_queue": before.queue,
            "chain": chain,
            "step": n,
        }
        records.append((step.queue, step.id, fields))
    return records


def callback_record(callback: Job, members: Sequence[Job], group_id: str) -> dict[str, bytes | str | int]:
    """The fields of a group callback's record while it waits: its group and worker, the group's members."""
    return {"chained": 1, "group": group_id, "worker": callback.worker, "members": _step_list(members)}


def _step_list(jobs: Sequence[Step | Job]) -> bytes:
    packed: bytes = msgpack.packb([[j.id, j.queue, j.worker] for j in jobs], use_bin_type=True)
    return packed


def step_list(packed: bytes) -> list[tuple[str, str, str]]:
    """The ``(job id, queue, worker)`` list a waiting record holds (:func:`pending_records`); [] if
    malformed."""
    try:
        items = msgpack.unpackb(packed, raw=False)
    except Exception:
        return []
    if not isinstance(items, list):
        return []
    return [
        (i[0], i[1], i[2])
        for i in items
        if isinstance(i, list) and len(i) == 3 and all(isinstance(x, str) for x in i)
    ]


def hop_of(queue: str, worker: str, value: Any, max_bytes: int) -> Handoff:
    """The hand-off of a ``Flume.to_queue`` hop: a new job of ``worker`` on ``queue`` whose one arg is
    ``value``."""
    return Handoff(queue, codec.encode(build_job(queue, worker, [value]), max_bytes))


def member_outcome(job: Job, ok: bool, value: Any, error: str | None) -> Handoff | None:
    """The hand-off of a group member that settled for good (acked, dead or aborted); None for no member."""
    flow = flow_of(job)
    if flow is None or not flow.group:
        return None
    outcome = {"id": job.id, "ok": ok, "result": value if ok else None, "error": error}
    return Handoff(
        flow.then_queue,
        group=flow.group,
        member=flow.member,
        outcome=codec.encode_result(outcome),
        callback=flow.then_id,
    )


def group_record(
    callback: Job, size: int, group_id: str = "", max_bytes: int = codec.DEFAULT_MAX_PAYLOAD_BYTES
) -> dict[str, bytes | int]:
    """The fields a group starts with: its size, and its callback's job record cut where the list of member
    outcomes goes (the last of the callback's args), so the settle script completes it without decoding.

    The record is cut twice more: ``mid`` ends before its ``enqueued_at``, which the settle script writes when
    it enqueues the callback (latency is measured from then, not from the group's creation), and ``tail`` is
    the rest. ``max`` is the most bytes the completed record may take (the fetch dead-letters a longer one):
    a group whose outcomes come to more hands on ``over`` instead, the callback's record as a dead letter
    saying why, so its waiters hear of it at once.

    Raises:
        ConfigError: even outcomes without results would not fit in ``max_bytes``.
    """
    packer = msgpack.Packer(use_bin_type=True, datetime=False)
    head = b"".join(
        [
            packer.pack_array_header(10 if callback.meta is None else 13),
            packer.pack(codec.FORMAT_VERSION),
            packer.pack(callback.id),
            packer.pack(callback.queue),
            packer.pack(callback.worker),
            packer.pack_array_header(len(callback.args) + 1),
            *(packer.pack(arg) for arg in callback.args),
            packer.pack_array_header(size),
        ]
    )
    mid = packer.pack(callback.attempt) + packer.pack(callback.created_at)
    fields: list[Any] = [callback.cost, None]
    if callback.meta is not None:  # the optional fields, as codec.encode writes them
        fields += [None, "finish", callback.meta]
    tail = b"".join(packer.pack(field) for field in fields)
    # The smallest outcome a member can send (a failure whose error is cut to nothing) still takes its id.
    least = len(codec.encode_result({"id": callback.id, "ok": False, "result": None, "error": ""}))
    fixed = len(head) + len(mid) + len(tail) + 9  # 9: enqueued_at as a msgpack float 64
    if fixed + size * least > max_bytes:
        raise ConfigError(
            f"group {group_id}: the outcomes of its {size} members cannot fit in its callback's job record "
            f"({callback.worker} on {callback.queue!r}), limited to {max_bytes} bytes (max_payload_bytes); "
            "split it into smaller groups, or raise max_payload_bytes"
        )
    why = JobError(
        "GroupTooLarge",
        f"group {group_id}: the outcomes of its {size} members came to more than the {max_bytes} bytes "
        "(max_payload_bytes) a job record may take, so the callback was not run; have members return a "
        "reference to large data (a key, a path) rather than the data, or raise max_payload_bytes",
    )
    over = codec.encode_cut_to_fit(replace(callback, args=[*callback.args, []], error=why), max_bytes)
    return {
        "size": size,
        "settled": 0,
        "head": head,
        "mid": mid,
        "tail": tail,
        "max": max_bytes,
        "over": over,
        "then": callback.id,
    }


def group_members(
    specs: Sequence[StepSpec], then: StepSpec, group_id: str, carried: dict[str, Any] | None = None
) -> tuple[list[Job], Job]:
    """The member jobs of a new group and its callback job (not yet enqueued), carrying ``carried`` meta."""
    if not specs:
        raise ConfigError("a group needs at least one member job; pass them as [(queue, worker, args), ...]")
    (callback_step,) = steps_of([then], "group callback")
    members = [
        job_of(
            step,
            Flow(group=group_id, then_queue=callback_step.queue, member=index, then_id=callback_step.id),
            carried,
        )
        for index, step in enumerate(steps_of(specs, "group"))
    ]
    return members, job_of(callback_step, None, carried)


def new_group_id() -> str:
    return new_job_id()
