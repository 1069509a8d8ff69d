"""AWS SES as a flume_rx downstream: a send worker, a bulk-send worker, their throttle cost and error mapping.

One job is one message and its args are ``[message]``, where ``message`` is a dict in one of two forms::

    {"to": ["a@example.com"], "cc": [...], "bcc": [...], "subject": "Hi", "text": "...", "html": "..."}
    {"to": ["a@example.com"], "template": "welcome", "data": {"name": "Ada"}}

Optional keys in both forms: ``"from"`` (overrides the sender's ``from_address``), ``"reply_to"`` (a list)
and ``"tags"`` (a dict of SES message tags). ``"to"``, ``"cc"`` and ``"bcc"`` take a list or one address;
a message needs at least one recipient and SES allows at most 50.

(Longer than the ~600 lines flume_rx keeps its modules to, on purpose: message validation, both send paths,
the cost function and the mapping of every SES error class belong to one downstream and change together; a
user reads one file to know what the integration does with their mail.)

The send worker makes one SESv2 ``send_email`` call per job. The bulk worker makes one ``send_bulk_email``
call per group of templated messages that share template, sender and reply-to (at most 50 destinations a
call) and sends the other messages of its batch one by one. SES counts recipients against the account's
send rate, so ``ses_cost`` gives the job's recipient count as its throttle cost: name it in the config as
``rate_limiter = { ..., cost = "flume_rx.integrations.ses:ses_cost" }``.

Errors map onto the pipeline's three ways out:

- throttling ("Throttling", "TooManyRequestsException", "Maximum sending rate exceeded") raises
  `flume_rx.Throttled`: the job waits for tokens again without spending a retry;
- transient failures (5xx, timeouts, connection errors, a spent daily quota) raise `TransientSESError`,
  retried with backoff;
- permanent refusals (MessageRejected, unverified sender or MAIL FROM domain, invalid parameters, a missing
  template or configuration set, a suspended or paused account, a malformed job) raise `PermanentSESError`,
  whose ``permanent = True`` sends the job to the dead letters at once, with the SES error code.

>>> from flume_rx.integrations.ses import register_ses_workers, ses_cost
>>> register_ses_workers(from_address="news@example.com", region="eu-west-1")  # doctest: +SKIP
>>> ses_cost({"to": ["a@example.com", "b@example.com"], "bcc": "c@example.com"})
3
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

try:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError
except ImportError as exc:  # pragma: no cover - depends on how flume_rx was installed
    raise ImportError(
        "flume_rx.integrations.ses needs boto3, which is not installed; install it with "
        "`pip install 'flume_rx[ses]'`"
    ) from exc

from flume_rx.model.errors import BatchFailed, ConfigError, FlumeError, Throttled
from flume_rx.model.registry import worker

if TYPE_CHECKING:
    from mypy_boto3_ses import SESClient
    from mypy_boto3_sesv2 import SESV2Client

__all__ = [
    "MAX_BULK_DESTINATIONS",
    "MAX_RECIPIENTS",
    "BulkCall",
    "PermanentSESError",
    "SESDownstream",
    "SESMessage",
    "TransientSESError",
    "account_send_rate",
    "default_client",
    "parse_message",
    "plan_bulk_calls",
    "rate_from_ses",
    "register_ses_workers",
    "resolve_region",
    "ses_bulk_sender",
    "ses_cost",
    "ses_error",
    "ses_sender",
]

log = logging.getLogger("flume_rx.integrations.ses")

MAX_BULK_DESTINATIONS: Final = 50
"""SES's limit on the entries (destinations) of one ``send_bulk_email`` call."""

MAX_RECIPIENTS: Final = 50
"""SES's limit on the recipients (to + cc + bcc) of one message or one bulk destination."""


class PermanentSESError(FlumeError):
    """Raised when SES refused a message for a reason that retrying cannot fix.

    The pipeline sends any exception whose ``permanent`` attribute is true to the dead letters at once.

    Attributes:
        code: the SES error code (e.g. ``MessageRejected``) or bulk status (e.g. ``MESSAGE_REJECTED``);
            ``InvalidJobArgs`` when the job's args are not a message this module understands.
    """

    permanent = True

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(f"SES refused the message for good ({code}): {message}")


class TransientSESError(FlumeError):
    """Raised when SES could not be reached or failed on its side; the job is retried with backoff.

    Attributes:
        code: the SES error code, bulk status or botocore exception name.
    """

    permanent = False

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(f"SES failed for now ({code}): {message}; the job will be retried")


_THROTTLE_CODES: Final = frozenset({"Throttling", "ThrottlingException", "TooManyRequestsException"})
_THROTTLE_TEXT: Final = "maximum sending rate exceeded"
# SES v1 reports a spent 24-hour quota with the "Throttling" code; slowing the rate down cannot help, and the
# job must spend retries so that it ends in the dead letters if the quota stays spent.
_DAILY_QUOTA_TEXT: Final = "daily message quota exceeded"
_PERMANENT_CODES: Final = frozenset(
    {
        "MessageRejected",
        "MailFromDomainNotVerified",
        "MailFromDomainNotVerifiedException",
        "AccountSuspendedException",
        "SendingPausedException",
        "AccountSendingPausedException",
        "ConfigurationSetSendingPausedException",
        "ConfigurationSetDoesNotExist",
        "ConfigurationSetDoesNotExistException",
        "TemplateDoesNotExist",
        "NotFoundException",
        "BadRequestException",
        "InvalidParameterValue",
        "InvalidParameterCombination",
        "ValidationError",
        "InvalidRenderingParameter",
        "MissingRenderingAttribute",
    }
)
_BULK_THROTTLED: Final = frozenset({"ACCOUNT_THROTTLED", "THROTTLED"})
_BULK_TRANSIENT: Final = frozenset({"TRANSIENT_FAILURE", "FAILED", "ACCOUNT_DAILY_QUOTA_EXCEEDED"})
_BULK_PERMANENT: Final = frozenset(
    {
        "MESSAGE_REJECTED",
        "MAIL_FROM_DOMAIN_NOT_VERIFIED",
        "CONFIGURATION_SET_NOT_FOUND",
        "CONFIGURATION_SET_SENDING_PAUSED",
        "TEMPLATE_NOT_FOUND",
        "ACCOUNT_SUSPENDED",
        "ACCOUNT_SENDING_PAUSED",
        "INVALID_SENDING_POOL_NAME",
        "INVALID_PARAMETER",
    }
)


def ses_error(exc: BaseException) -> FlumeError | None:
    """Translate an exception raised by a boto3 SES call into the error the pipeline acts on.

    Unknown client errors (e.g. ``AccessDenied`` or an expired token) count as transient: a deployment that
    lost its credentials should retry while an operator fixes it, not dead-letter the whole queue.

    Args:
        exc: what the boto3 call raised.

    Returns:
        `flume_rx.Throttled`, `TransientSESError` or `PermanentSESError`; None when ``exc`` did not come from
        botocore (a bug, left to propagate as it is).

    >>> ses_error(ValueError("not from botocore")) is None
    True
    """
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "Unknown")
        text = str(error.get("Message") or "")
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return _code_error(code, text, status)
    if isinstance(exc, ParamValidationError):
        # botocore refused the request before sending it: the job's content is what is wrong.
        return PermanentSESError("InvalidParameterValue", str(exc))
    if isinstance(exc, AssertionError):
        # botocore's Stubber reports an unexpected request as a BotoCoreError that is also an AssertionError:
        # a failing test, to be seen as such rather than retried as an SES outage.
        return None
    if isinstance(exc, BotoCoreError):
        # Timeouts, refused or dropped connections, DNS failures, missing credentials.
        return TransientSESError(type(exc).__name__, str(exc))
    return None


def _code_error(code: str, text: str, status: int = 400) -> FlumeError:
    lowered = text.lower()
    if _DAILY_QUOTA_TEXT in lowered:
        return TransientSESError(code, text)
    if code in _THROTTLE_CODES or _THROTTLE_TEXT in lowered:
        return Throttled(f"SES throttled the call ({code}): {text or 'no message'}")
    if code in _PERMANENT_CODES:
        return PermanentSESError(code, text)
    return TransientSESError(code, text or f"HTTP {status}")


def _status_error(status: str, text: str) -> FlumeError:
    """The error for one failed destination of a bulk send (``status`` is its ``BulkEmailStatus``)."""
    if status in _BULK_THROTTLED:
        return Throttled(f"SES throttled the destination ({status}): {text or 'no message'}")
    if status in _BULK_PERMANENT:
        return PermanentSESError(status, text or status)
    # TRANSIENT_FAILURE, FAILED, a spent daily quota, and any status SES adds later.
    return TransientSESError(status, text or status)


def _raise_translated(exc: Exception) -> None:
    translated = ses_error(exc)
    if translated is None:
        return
    raise translated from exc


# --- messages -----------------------------------------------------------------------------------------------

_KEYS: Final = frozenset(
    {"to", "cc", "bcc", "subject", "text", "html", "template", "data", "from", "reply_to", "tags"}
)


@dataclass(frozen=True, slots=True)
class SESMessage:
    """One message, validated from a job's args by `parse_message`.

    Attributes:
        to, cc, bcc: the recipients.
        subject, text, html: the content of a simple message (``template`` is None).
        template: the SES template of a templated message, whose ``template_data`` is JSON.
        from_address: overrides the sender's default ``from_address`` when set.
        reply_to: reply-to addresses.
        tags: SES message tags, as (name, value) pairs.
    """

    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    template: str | None = None
    template_data: str = "{}"
    from_address: str | None = None
    reply_to: tuple[str, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()

    @property
    def recipients(self) -> int:
        """How many recipients SES counts for this message."""
        return len(self.to) + len(self.cc) + len(self.bcc)

    def destination(self) -> dict[str, list[str]]:
        """The SESv2 ``Destination`` structure."""
        out: dict[str, list[str]] = {}
        for key, addresses in (
            ("ToAddresses", self.to),
            ("CcAddresses", self.cc),
            ("BccAddresses", self.bcc),
        ):
            if addresses:
                out[key] = list(addresses)
        return out

    def message_tags(self) -> list[dict[str, str]]:
        """The SESv2 ``EmailTags`` / ``ReplacementTags`` structure."""
        return [{"Name": name, "Value": value} for name, value in self.tags]


def parse_message(value: Any) -> SESMessage:
    """Validate one job's message (the single element of its args).

    Raises:
        PermanentSESError: with code ``InvalidJobArgs``; retrying a malformed job cannot help.

    >>> parse_message({"to": "a@example.com", "template": "welcome"}).recipients
    1
    """
    if not isinstance(value, Mapping):
        raise _bad_args(
            f"the job's message is a {type(value).__name__}; pass one dict such as {{'to': [...], ...}}"
        )
    unknown = sorted(str(k) for k in value if k not in _KEYS)
    if unknown:
        raise _bad_args(f"the message has unknown key(s) {unknown}; use only {sorted(_KEYS)}")
    to, cc, bcc = (_addresses(value, key) for key in ("to", "cc", "bcc"))
    count = len(to) + len(cc) + len(bcc)
    if count == 0:
        raise _bad_args("the message has no recipient; give at least one address in 'to', 'cc' or 'bcc'")
    if count > MAX_RECIPIENTS:
        raise _bad_args(
            f"the message has {count} recipients, over SES's {MAX_RECIPIENTS}; split it into jobs"
        )
    template = _optional_str(value, "template")
    subject, text, html = (_optional_str(value, key) for key in ("subject", "text", "html"))
    template_data = "{}"
    if template is not None:
        if subject is not None or text is not None or html is not None:
            raise _bad_args(
                f"the message names template {template!r} and also 'subject'/'text'/'html'; "
                "give one or the other"
            )
        data = value.get("data", {})
        if not isinstance(data, Mapping):
            raise _bad_args(
                f"the message's 'data' is a {type(data).__name__}; pass a dict of template values"
            )
        try:
            template_data = json.dumps(data, separators=(",", ":"), sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise _bad_args(
                f"the message's 'data' cannot be encoded as JSON ({exc}); pass JSON values"
            ) from exc
    else:
        if "data" in value:
            raise _bad_args("the message has 'data' but no 'template'; name the template the data is for")
        if subject is None or (text is None and html is None):
            raise _bad_args("the message needs a 'subject' and a 'text' or 'html' body, or a 'template'")
    tags = value.get("tags", {})
    if not isinstance(tags, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        raise _bad_args(f"the message's 'tags' is {tags!r}; pass a dict of strings to strings")
    return SESMessage(
        to=to,
        cc=cc,
        bcc=bcc,
        subject=subject,
        text=text,
        html=html,
        template=template,
        template_data=template_data,
        from_address=_optional_str(value, "from"),
        reply_to=_addresses(value, "reply_to"),
        tags=tuple(sorted(tags.items())),
    )


def _bad_args(message: str) -> PermanentSESError:
    return PermanentSESError("InvalidJobArgs", message)


def _addresses(value: Mapping[str, Any], key: str) -> tuple[str, ...]:
    raw = value.get(key, ())
    if isinstance(raw, str):
        raw = (raw,)
    if not isinstance(raw, list | tuple) or not all(isinstance(a, str) and a for a in raw):
        raise _bad_args(f"the message's {key!r} is {raw!r}; pass a list of email addresses")
    return tuple(raw)


def _optional_str(value: Mapping[str, Any], key: str) -> str | None:
    raw = value.get(key)
    if raw is not None and not isinstance(raw, str):
        raise _bad_args(f"the message's {key!r} is a {type(raw).__name__}; pass a string")
    return raw


def ses_cost(*args: Any) -> int:
    """The throttle cost of one SES job: its recipient count (to + cc + bcc), since SES counts recipients.

    Takes the job's args spread out, as the pipeline calls a config's ``rate_limiter.cost`` function
    (``ses_cost(message)``), or the args list itself (``ses_cost([message])``). Only the recipient fields
    are read, so this is cheap enough to run at enqueue. A job whose recipients are malformed or missing
    costs 1; the worker sends it to the dead letters without calling SES.

    >>> ses_cost({"to": ["a@example.com"], "cc": ["b@example.com"], "subject": "s", "text": "t"})
    2
    >>> ses_cost([{"to": "a@example.com"}])
    1
    """
    message: Any = args[0] if len(args) == 1 else None
    if isinstance(message, list | tuple) and len(message) == 1:
        message = message[0]
    if not isinstance(message, Mapping):
        return 1
    try:
        count = sum(len(_addresses(message, key)) for key in ("to", "cc", "bcc"))
    except PermanentSESError:
        return 1
    return max(1, count)


# --- bulk planning ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BulkCall:
    """One ``send_bulk_email`` call: templated messages sharing template, sender and reply-to.

    Attributes:
        indices: the batch indices of its messages, one destination each, in entry order.
    """

    template: str
    from_address: str | None
    reply_to: tuple[str, ...]
    indices: tuple[int, ...]


def plan_bulk_calls(
    messages: Sequence[SESMessage | None], max_destinations: int = MAX_BULK_DESTINATIONS
) -> tuple[list[BulkCall], list[int]]:
    """Group a batch's templated messages into bulk calls of at most ``max_destinations`` entries.

    Args:
        messages: the batch's messages; None for an item that failed validation (it is left out).
        max_destinations: the most entries per call.

    Returns:
        The bulk calls, in the order their groups first appear in the batch, and the indices of the simple
        (untemplated) messages, which go out one ``send_email`` each.

    >>> m = SESMessage(to=("a@example.com",), template="t")
    >>> calls, singles = plan_bulk_calls([m, m, m], max_destinations=2)
    >>> [c.indices for c in calls], singles
    ([(0, 1), (2,)], [])
    """
    if max_destinations < 1:
        raise ValueError(f"max_destinations must be at least 1 (got {max_destinations})")
    groups: dict[tuple[str, str | None, tuple[str, ...]], list[int]] = {}
    singles: list[int] = []
    for index, message in enumerate(messages):
        if message is None:
            continue
        if message.template is None:
            singles.append(index)
            continue
        groups.setdefault((message.template, message.from_address, message.reply_to), []).append(index)
    calls = [
        BulkCall(template, from_address, reply_to, tuple(indices[start : start + max_destinations]))
        for (template, from_address, reply_to), indices in groups.items()
        for start in range(0, len(indices), max_destinations)
    ]
    return calls, singles


# --- the downstream -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Failure:
    index: int
    error: FlumeError


class SESDownstream:
    """One SESv2 client shared by a send worker (`send`) and a bulk worker (`send_batch`).

    The client is made on first use (by `default_client`), so a worker module can build this at import time
    in the supervisor and each worker process still gets its own connections. boto3 clients are
    thread-safe, and sync workers run in the pipeline's stage threads, so ``max_pool_connections`` should be
    at least the stage count.

    Args:
        client: a ready SESv2 client (tests, custom sessions); the other client options are then ignored.
        from_address: the default sender, an SES-verified address or an address of a verified domain.
        region: the AWS region; default from boto3's chain (AWS_DEFAULT_REGION, ~/.aws/config, ...).
        endpoint_url: another SES endpoint (an emulator, a VPC endpoint); default from boto3's chain.
        configuration_set: the SES configuration set to send through (event publishing, IP pools).
        max_pool_connections: HTTP connections kept per process.
        connect_timeout_s: seconds to wait for a connection.
        read_timeout_s: seconds to wait for SES's answer.

    Raises:
        ConfigError: ``from_address`` is not an address or a limit is not positive.
    """

    def __init__(
        self,
        client: SESV2Client | None = None,
        *,
        from_address: str,
        region: str | None = None,
        endpoint_url: str | None = None,
        configuration_set: str | None = None,
        max_pool_connections: int = 50,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
    ) -> None:
        if not isinstance(from_address, str) or "@" not in from_address:
            raise ConfigError(
                f"from_address must be an email address (got {from_address!r}); pass the SES sender"
            )
        self.from_address = from_address
        self.configuration_set = configuration_set
        self._client = client
        if client is None:
            # Validate the client options now, where the mistake is made (the worker's start), not in the
            # first job, where a missing region would be retried as a transient error and nothing sent.
            _check_client_options(max_pool_connections, connect_timeout_s, read_timeout_s)
            region = resolve_region(region)
        self._make_client: Callable[[], SESV2Client] = functools.partial(
            default_client,
            region,
            endpoint_url,
            max_pool_connections=max_pool_connections,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
        )
        self._lock = threading.Lock()

    @property
    def client(self) -> SESV2Client:
        """The SESv2 client, made on first use."""
        client = self._client
        if client is None:
            with self._lock:  # stage threads may all start at once: make one client, not one each
                if self._client is None:
                    self._client = self._make_client()
                client = self._client
        return client

    def send(self, *args: Any) -> str:
        """Send one message with ``send_email`` (the send worker; a job's args are ``[message]``).

        Args:
            args: the job's args, spread as the pipeline calls a worker: exactly one, the message dict.

        Returns:
            SES's message id.

        Raises:
            flume_rx.Throttled: SES refused the call for going too fast.
            TransientSESError: SES failed or could not be reached; retry later.
            PermanentSESError: SES refused the message, or the message is malformed.
        """
        if len(args) != 1:
            raise _bad_args(f"the job has {len(args)} args; pass exactly one, the message dict")
        parsed = parse_message(args[0])
        try:
            response = self.client.send_email(**self._send_email_request(parsed))
        except Exception as exc:
            _raise_translated(exc)
            raise
        return response["MessageId"]

    def send_batch(self, batch: Sequence[Sequence[Any]]) -> list[str | None]:
        """Send a batch: one ``send_bulk_email`` per group of templated messages (see `plan_bulk_calls`),
        one ``send_email`` per other message (the bulk worker).

        After a throttled call it sends nothing more, so the rest of the batch waits for tokens again.

        Args:
            batch: each job's args, ``[message]``.

        Returns:
            SES's message id for each item.

        Raises:
            flume_rx.Throttled: every item was throttled or left unsent because of throttling (nothing went
                out, so the whole batch can wait for tokens).
            flume_rx.BatchFailed: some items failed; ``permanent`` holds those that must not be retried.
        """
        ids: list[str | None] = [None] * len(batch)
        failures: list[_Failure] = []
        messages: list[SESMessage | None] = []
        for index, args in enumerate(batch):
            try:
                if len(args) != 1:
                    raise _bad_args(f"the job has {len(args)} args; pass exactly one, the message dict")
                messages.append(parse_message(args[0]))
            except PermanentSESError as exc:
                messages.append(None)
                failures.append(_Failure(index, exc))
        calls, singles = plan_bulk_calls(messages)
        pending: list[BulkCall | int] = [*calls, *singles]
        for position, item in enumerate(pending):
            if isinstance(item, BulkCall):
                sent, failed = self._send_bulk(item, messages)
            else:
                sent, failed = self._send_single(item, cast(SESMessage, messages[item]))
            for index, message_id in sent:
                ids[index] = message_id
            failures.extend(failed)
            if any(isinstance(f.error, Throttled) for f in failed):
                # SES said slow down: sending the rest now would only be throttled too.
                unsent = Throttled("SES throttled an earlier call of the batch; this item was not sent")
                for rest in pending[position + 1 :]:
                    indices = rest.indices if isinstance(rest, BulkCall) else (rest,)
                    failures.extend(_Failure(index, unsent) for index in indices)
                break
        if not failures:
            return ids
        if len(failures) == len(batch) and all(isinstance(f.error, Throttled) for f in failures):
            raise Throttled(f"SES throttled all {len(batch)} item(s) of the batch; none was sent")
        # Throttled and unsent items wait for tokens again without spending a retry (docs/ses.md, "Batches
        # and throttling"); the pipeline also lowers an adaptive shared rate for them.
        raise BatchFailed(
            [f.index for f in failures],
            errors={f.index: str(f.error) for f in failures},
            permanent={f.index for f in failures if getattr(f.error, "permanent", False)},
            throttled={f.index for f in failures if isinstance(f.error, Throttled)},
        )

    def _send_single(self, index: int, message: SESMessage) -> tuple[list[tuple[int, str]], list[_Failure]]:
        try:
            response = self.client.send_email(**self._send_email_request(message))
        except Exception as exc:
            translated = ses_error(exc)
            if translated is None:
                raise
            return [], [_Failure(index, translated)]
        return [(index, response["MessageId"])], []

    def _send_bulk(
        self, call: BulkCall, messages: Sequence[SESMessage | None]
    ) -> tuple[list[tuple[int, str]], list[_Failure]]:
        entries: list[dict[str, Any]] = []
        for index in call.indices:
            message = cast(SESMessage, messages[index])
            entry: dict[str, Any] = {
                "Destination": message.destination(),
                "ReplacementEmailContent": {
                    "ReplacementTemplate": {"ReplacementTemplateData": message.template_data}
                },
            }
            if message.tags:
                entry["ReplacementTags"] = message.message_tags()
            entries.append(entry)
        request: dict[str, Any] = {
            "FromEmailAddress": call.from_address or self.from_address,
            "DefaultContent": {"Template": {"TemplateName": call.template, "TemplateData": "{}"}},
            "BulkEmailEntries": entries,
        }
        if call.reply_to:
            request["ReplyToAddresses"] = list(call.reply_to)
        if self.configuration_set:
            request["ConfigurationSetName"] = self.configuration_set
        try:
            response = self.client.send_bulk_email(**request)
        except Exception as exc:
            translated = ses_error(exc)
            if translated is None:
                raise
            return [], [_Failure(index, translated) for index in call.indices]
        results = response.get("BulkEmailEntryResults", [])
        sent: list[tuple[int, str]] = []
        failed: list[_Failure] = []
        for position, index in enumerate(call.indices):
            if position >= len(results):
                # SES answers one result per entry; a short answer leaves the state of the rest unknown.
                failed.append(
                    _Failure(index, TransientSESError("FAILED", "SES returned no status for this entry"))
                )
                continue
            result = results[position]
            status = result.get("Status", "FAILED")
            if status == "SUCCESS":
                sent.append((index, result.get("MessageId", "")))
            else:
                failed.append(_Failure(index, _status_error(status, result.get("Error", ""))))
        return sent, failed

    def _send_email_request(self, message: SESMessage) -> dict[str, Any]:
        content: dict[str, Any]
        if message.template is not None:
            content = {"Template": {"TemplateName": message.template, "TemplateData": message.template_data}}
        else:
            body: dict[str, Any] = {}
            if message.text is not None:
                body["Text"] = {"Data": message.text, "Charset": "UTF-8"}
            if message.html is not None:
                body["Html"] = {"Data": message.html, "Charset": "UTF-8"}
            content = {
                "Simple": {"Subject": {"Data": message.subject or "", "Charset": "UTF-8"}, "Body": body}
            }
        request: dict[str, Any] = {
            "FromEmailAddress": message.from_address or self.from_address,
            "Destination": message.destination(),
            "Content": content,
        }
        if message.reply_to:
            request["ReplyToAddresses"] = list(message.reply_to)
        if message.tags:
            request["EmailTags"] = message.message_tags()
        if self.configuration_set:
            request["ConfigurationSetName"] = self.configuration_set
        return request


def _check_client_options(max_pool_connections: int, connect_timeout_s: float, read_timeout_s: float) -> None:
    if max_pool_connections < 1:
        raise ConfigError(
            f"max_pool_connections must be at least 1 (got {max_pool_connections}); use the stage count"
        )
    if not (connect_timeout_s > 0 and read_timeout_s > 0):
        raise ConfigError(
            f"connect_timeout_s and read_timeout_s must be positive (got {connect_timeout_s}, "
            f"{read_timeout_s}); pass seconds"
        )


def resolve_region(region: str | None = None) -> str:
    """The AWS region an SES client will use: ``region``, else boto3's (``AWS_DEFAULT_REGION``, the profile's).

    Reads the environment and the AWS config files; nothing connects.

    Raises:
        ConfigError: no region is set anywhere boto3 looks. boto3 does not read ``AWS_REGION`` (other AWS
            SDKs and Lambda do), so a region set only there is named in the message.
    """
    if region:
        return region
    found = boto3.session.Session().region_name
    if found:
        return found
    only_aws_region = os.environ.get("AWS_REGION")
    unread = f" (AWS_REGION={only_aws_region} is set, but boto3 does not read it)" if only_aws_region else ""
    raise ConfigError(
        f"SES needs an AWS region and none is set{unread}; export AWS_DEFAULT_REGION=<region>, set `region` "
        "in your AWS profile, or pass region= to register_ses_workers"
    )


def default_client(
    region: str | None = None,
    endpoint_url: str | None = None,
    *,
    max_pool_connections: int = 50,
    connect_timeout_s: float = 5.0,
    read_timeout_s: float = 30.0,
) -> SESV2Client:
    """An SESv2 client from boto3's default chain that makes exactly one attempt per call.

    Credentials, region and endpoint come from boto3's usual sources unless given: environment
    (``AWS_ACCESS_KEY_ID``, ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL_SESV2``...), shared config files, an
    instance or task role. botocore's own retries are off: each would be an SES call the token window never granted,
    and would hide the throttling the adaptive limiter listens for. Retries are the pipeline's job.

    Raises:
        ConfigError: a limit is not positive, or no region is set (see `resolve_region`).
    """
    _check_client_options(max_pool_connections, connect_timeout_s, read_timeout_s)
    region = resolve_region(region)
    config = Config(
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
        max_pool_connections=max_pool_connections,
    )
    # A session of our own: boto3's default session is not thread-safe, and stage threads may start at once.
    return boto3.session.Session().client(
        "sesv2", region_name=region, endpoint_url=endpoint_url, config=config
    )


def ses_sender(
    client: SESV2Client | None = None,
    *,
    from_address: str,
    region: str | None = None,
    endpoint_url: str | None = None,
    configuration_set: str | None = None,
    max_pool_connections: int = 50,
) -> Callable[..., str]:
    """A send worker function: one job (args ``[message]``) is one SESv2 ``send_email`` call.

    >>> send = ses_sender(from_address="news@example.com", region="us-east-1")
    >>> worker("SESWorker")(send)  # doctest: +SKIP
    """
    return SESDownstream(
        client,
        from_address=from_address,
        region=region,
        endpoint_url=endpoint_url,
        configuration_set=configuration_set,
        max_pool_connections=max_pool_connections,
    ).send


def ses_bulk_sender(
    client: SESV2Client | None = None,
    *,
    from_address: str,
    region: str | None = None,
    endpoint_url: str | None = None,
    configuration_set: str | None = None,
    max_pool_connections: int = 50,
) -> Callable[[Sequence[Sequence[Any]]], list[str | None]]:
    """A batch worker function: templated messages go out through ``send_bulk_email`` (see `SESDownstream`).

    >>> send_many = ses_bulk_sender(from_address="news@example.com", region="us-east-1")
    >>> worker("SESBulkWorker", batch=True)(send_many)  # doctest: +SKIP
    """
    return SESDownstream(
        client,
        from_address=from_address,
        region=region,
        endpoint_url=endpoint_url,
        configuration_set=configuration_set,
        max_pool_connections=max_pool_connections,
    ).send_batch


def register_ses_workers(
    name: str = "SESWorker",
    batch_name: str | None = "SESBulkWorker",
    client: SESV2Client | None = None,
    *,
    from_address: str,
    region: str | None = None,
    endpoint_url: str | None = None,
    configuration_set: str | None = None,
    max_pool_connections: int = 50,
) -> SESDownstream:
    """Register the send worker as ``name`` and the bulk worker as ``batch_name`` (None: no bulk worker),
    sharing one client. Call it in a module listed under ``imports`` in the config.

    Returns:
        The downstream, e.g. to reach its client.

    >>> register_ses_workers(from_address="news@example.com")  # doctest: +SKIP
    """
    downstream = SESDownstream(
        client,
        from_address=from_address,
        region=region,
        endpoint_url=endpoint_url,
        configuration_set=configuration_set,
        max_pool_connections=max_pool_connections,
    )
    worker(name)(downstream.send)
    if batch_name is not None:
        worker(batch_name, batch=True)(downstream.send_batch)
    return downstream


# --- the account's rate -------------------------------------------------------------------------------------


def account_send_rate(client: SESV2Client | SESClient) -> float:
    """The account's maximum send rate in recipients per second.

    Reads SESv2 ``get_account()["SendQuota"]["MaxSendRate"]``; given an SES v1 client, reads
    ``get_send_quota()["MaxSendRate"]``, the same figure.

    Raises:
        ConfigError: SES answered without a send quota (an account not enabled for sending), or the call
            failed (an endpoint without the operation, no credentials, SES down): one line naming
            ``rate_limiter.from_ses`` and the fix.
        flume_rx.Throttled: SES refused the call for going too fast.
    """
    service = client.meta.service_model.service_name
    operation = "GetAccount" if service == "sesv2" else "GetSendQuota"
    try:
        if service == "sesv2":
            quota = cast("SESV2Client", client).get_account().get("SendQuota")
            rate = None if quota is None else quota.get("MaxSendRate")
        else:
            rate = cast("SESClient", client).get_send_quota().get("MaxSendRate")
    except Exception as exc:
        translated = ses_error(exc)
        if translated is None:
            raise
        if isinstance(translated, Throttled):  # SES itself, asking us to slow down: the caller may wait
            raise translated from exc
        # At start, not in a job: nothing will be retried, and an emulator's answer may be a whole HTML page.
        raise ConfigError(
            f"rate_limiter.from_ses could not read the account's send rate: {service} {operation} at "
            f"{client.meta.endpoint_url} failed ({_one_line(exc)}); point the worker at SES (an emulator needs "
            f"{operation}) or set rate_limiter.allowed instead of from_ses"
        ) from exc
    if rate is None:
        raise ConfigError(
            f"SES ({service}) returned no MaxSendRate for this account; enable sending in SES or set "
            "rate_limiter.allowed instead of from_ses"
        )
    return float(rate)


def _one_line(exc: BaseException, limit: int = 160) -> str:
    """``exc`` as one short line: an HTTP error body's tags and line breaks dropped, cut at ``limit``."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        text = f"HTTP {status} {error.get('Code') or ''}: {error.get('Message') or ''}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    text = " ".join(re.sub(r"<[^>]*>", " ", text).split()).rstrip(": ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def rate_from_ses(client: SESV2Client | SESClient, fraction: float, *, period_s: float = 1.0) -> int:
    """How many recipients a pipeline should allow per ``period_s``: ``fraction`` of the account's rate.

    Never below 1, so a sandbox account (1 a second) still sends. Logs the figure chosen.

    Args:
        client: an SESv2 (or SES v1) client, e.g. `default_client()`.
        fraction: the share of the account's rate to use, in (0, 1], e.g. 0.9 to leave room for other senders.
        period_s: the rate limiter's period in seconds.

    Raises:
        ConfigError: ``fraction`` is outside (0, 1] or ``period_s`` is not positive.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
        raise ConfigError(
            f"rate_limiter.from_ses must be a fraction in (0, 1] (got {fraction!r}); e.g. 0.9 for 90% of the "
            "account's send rate"
        )
    if not period_s > 0:
        raise ConfigError(
            f"rate_limiter.period must be positive (got {period_s!r} s); set it in ms, e.g. 1000"
        )
    max_rate = account_send_rate(client)
    # A hair of tolerance so that 0.9 x 500 gives 450 despite binary floating point.
    allowed = max(1, math.floor(max_rate * period_s * fraction + 1e-9))
    log.info(
        "SES account max send rate is %g/s; allowing %d recipients per %g s (rate_limiter.from_ses = %g)",
        max_rate,
        allowed,
        period_s,
        fraction,
    )
    return allowed
