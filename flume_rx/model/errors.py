"""Exceptions users meet. Each message is one sentence naming what is wrong and what to do."""

from __future__ import annotations

from collections.abc import Iterable


class FlumeError(Exception):
    """Raised when flume_rx cannot do what was asked; the base of every flume_rx error."""


class ConfigError(FlumeError):
    """Raised when a config file, a CLI argument or an API argument is invalid."""


class WorkerModuleFailed(ConfigError):
    """Raised when a worker module listed in ``imports`` exists but raised while being imported.

    ``details`` holds the traceback of what it raised (its own frames, not the import machinery's), which
    the command line prints above the one-line message.
    """

    def __init__(self, message: str, details: str) -> None:
        super().__init__(message)
        self.details = details


class StoreError(FlumeError):
    """Raised when Redis cannot be reached or answers with an error."""


class DataError(StoreError):
    """Raised when Redis refused a call because of what it found in a key (a key of flume_rx's holding the wrong
    type of value); retrying the same call cannot help, so it is not retried as an outage is."""


class EncodeError(FlumeError):
    """Raised when a job's arguments cannot be encoded as msgpack or exceed the payload limit."""


class DecodeError(FlumeError):
    """Raised when a payload read from Redis is not a valid flume_rx job."""


class UnknownWorker(FlumeError):
    """Raised when a job names a worker nobody registered in this process."""

    def __init__(self, name: str, known: Iterable[str] = ()) -> None:
        known_list = ", ".join(sorted(known)) or "none"
        super().__init__(
            f"no worker named {name!r} is registered (known: {known_list}); "
            f"decorate it with @worker({name!r}) and list its module under `imports` in the config"
        )
        self.name = name


class BadArguments(FlumeError):
    """Raised when a job's args cannot bind to its worker's parameters (too few, too many, unknown names).

    No retry can fix that, so the job goes to the dead letters at once, with this message as the reason.
    """

    permanent = True


class Throttled(FlumeError):
    """Raised by a worker when its downstream refused the call for going too fast.

    The job goes back to wait for tokens without using one of its retries, and with an adaptive rate
    limiter the shared rate drops for every process.
    """


class JobTimeout(FlumeError):
    """Raised when a job runs longer than its pipeline's `processor.timeout`."""


class BatchFailed(FlumeError):
    """Raised by a batch worker to report that only some items of its batch failed.

    Args:
        failed: indices (into the batch list) of the items that failed; only those are retried.
        errors: optional per-index error messages, kept with each retried job.
        permanent: indices among ``failed`` that must not be retried: they go to the dead letters at once
            (e.g. SES rejected that message for good).
        throttled: indices among ``failed`` that the downstream refused for going too fast: like a
            ``Throttled`` job, they wait for tokens again without spending a retry.
    """

    def __init__(
        self,
        failed: Iterable[int],
        message: str = "",
        errors: dict[int, str] | None = None,
        *,
        permanent: Iterable[int] = (),
        throttled: Iterable[int] = (),
    ) -> None:
        self.failed = sorted(set(failed))
        self.errors = dict(errors or {})
        self.permanent = frozenset(permanent)
        self.throttled = frozenset(throttled)
        super().__init__(message or f"{len(self.failed)} item(s) of the batch failed: {self.failed}")


class JobFailed(FlumeError):
    """Raised by ``Flume.result`` when the job went to the dead letters; ``kind``, ``message`` and
    ``traceback`` are those of the error it died of."""

    def __init__(self, job_id: str, kind: str, message: str, traceback: str = "") -> None:
        super().__init__(f"job {job_id} went to the dead letters with {kind}: {message}")
        self.job_id = job_id
        self.kind = kind
        self.message = message
        self.traceback = traceback


class JobCancelled(FlumeError):
    """Raised by ``Flume.result`` when the job was cancelled before it ran."""


class ResultTimeout(FlumeError, TimeoutError):
    """Raised by ``Flume.result`` when the job has not finished within the timeout."""


class ResultUnavailable(FlumeError):
    """Raised by ``Flume.result`` when there is no result to wait for: the job is unknown (never enqueued,
    or finished by a worker that keeps no results: see ``@worker(result_ttl=...)``)."""


class JobAborted(FlumeError):
    """Raised by ``current_job().check_aborted()`` in a worker whose running job ``Flume.cancel`` aborted."""
