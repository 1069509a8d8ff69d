"""Workflows: chains, groups with a callback, and the durable hop between pipelines.

Each hand-off rides in the settle script call of the job that makes it (:class:`~flume_rx.store.Handoff`),
so it happens exactly when that job leaves the in-flight list: once, whatever process dies when.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import msgpack
from reactivex import Observable
from reactivex import operators as ops

from flume_rx import codec
from flume_rx.engine.source import Delivery
from flume_rx.errors import ConfigError, DecodeError
from flume_rx.job import Flow, Job, JobError, Step, build_job, new_job_id
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
    return [
        [[step.id, step.queue, step.worker, list(step.args)] for step in flow.chain],
        flow.group,
        flow.then_queue,
        flow.member,
    ]


def flow_of(job: Job) -> Flow | None:
    """The workflow ``job`` is part of, None for none.

    Raises:
        DecodeError: its flow is malformed (the job then goes to the dead letters saying so).
    """
    if job.meta is None or FLOW not in job.meta:
        return None
    record = job.meta[FLOW]
    if not (isinstance(record, list) and len(record) == 4):
        raise DecodeError("job meta field 'flow' is not [chain, group, then_queue, member]")
    chain, group, then_queue, member = record
    if not (
        isinstance(chain, list)
        and isinstance(group, str)
        and isinstance(then_queue, str)
        and type(member) is int
    ):
        raise DecodeError("job meta field 'flow' is not [chain, group, then_queue, member]")
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
    return Flow(tuple(steps), group, then_queue, member)


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
    return Handoff(step.queue, codec.encode(following, max_bytes))


def chain_stopped(job: Job, error: str, keep_ms: int, max_bytes: int) -> list[Handoff]:
    """The hand-offs of a chain step that went dead: every later step is recorded as cancelled, saying where
    the chain stopped, so whoever waits for it learns at once."""
    flow = flow_of(job)
    if flow is None:
        return []
    why = JobError("ChainStopped", f"step {job.id} ({job.worker} on {job.queue!r}) went dead: {error}")
    return [
        Handoff(
            step.queue,
            codec.encode_cut_to_fit(replace(job_of(step, None), error=why), max_bytes),
            stopped=step.id,
            keep_ms=keep_ms,
        )
        for step in flow.chain
    ]


def pending_records(steps: Sequence[Step]) -> list[tuple[str, str]]:
    """``(queue, job id)`` of the chain steps after the first: their records exist from the start, so
    ``Flume.result`` can wait for a step not yet enqueued."""
    return [(step.queue, step.id) for step in steps[1:]]


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
        flow.then_queue, group=flow.group, member=flow.member, outcome=codec.encode_result(outcome)
    )


def group_record(callback: Job, size: int) -> dict[str, bytes | int]:
    """The fields a group starts with: its size, and its callback's job record cut where the list of member
    outcomes goes (the last of the callback's args), so the settle script completes it without decoding."""
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
    fields: list[Any] = [callback.attempt, callback.created_at, callback.enqueued_at, callback.cost, None]
    if callback.meta is not None:  # the optional fields, as codec.encode writes them
        fields += [None, "finish", callback.meta]
    tail = b"".join(packer.pack(field) for field in fields)
    return {"size": size, "settled": 0, "head": head, "tail": tail}


def group_members(
    specs: Sequence[StepSpec], then: StepSpec, group_id: str, carried: dict[str, Any] | None = None
) -> tuple[list[Job], Job]:
    """The member jobs of a new group and its callback job (not yet enqueued), carrying ``carried`` meta."""
    if not specs:
        raise ConfigError("a group needs at least one member job; pass them as [(queue, worker, args), ...]")
    (callback_step,) = steps_of([then], "group callback")
    members = [
        job_of(step, Flow(group=group_id, then_queue=callback_step.queue, member=index), carried)
        for index, step in enumerate(steps_of(specs, "group"))
    ]
    return members, job_of(callback_step, None, carried)


def new_group_id() -> str:
    return new_job_id()
