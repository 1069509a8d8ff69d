"""The SES downstream: over HTTP against moto's SES server, and with botocore's Stubber for the error paths.

moto (5.2) emulates SESv2 ``send_email`` (simple and raw content), identities, and, through SES v1, the send
statistics and quota; it has no SESv2 ``get_account`` nor ``send_bulk_email``, and no templated SESv2 send.
Those are tested with the Stubber or a recording fake client, with no network at all.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import boto3
import pytest
from botocore.exceptions import (
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ParamValidationError,
    ReadTimeoutError,
)
from botocore.stub import ANY, Stubber
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flume_rx import BatchFailed, Throttled
from flume_rx.integrations.ses import (
    MAX_BULK_DESTINATIONS,
    PermanentSESError,
    SESDownstream,
    SESMessage,
    TransientSESError,
    account_send_rate,
    default_client,
    parse_message,
    plan_bulk_calls,
    rate_from_ses,
    register_ses_workers,
    resolve_region,
    ses_bulk_sender,
    ses_cost,
    ses_sender,
)
from flume_rx.model.errors import ConfigError
from flume_rx.model.registry import get_worker
from tests.integration.conftest import REGION

if TYPE_CHECKING:
    from mypy_boto3_ses import SESClient
    from mypy_boto3_sesv2 import SESV2Client

    from tests.integration.conftest import MotoServer

SENDER = "sender@flume.example"  # verified by the ses_server fixture
PIPELINE_WORKER = "SESPipelineTestWorker"

# The 3-process pipeline test imports this module in each worker process to register its worker; the client
# is made on first use from boto3's default chain, which the moto fixture points at the server. The region is
# given: registration checks it, and pytest imports this module before any fixture has set the environment.
register_ses_workers(PIPELINE_WORKER, None, from_address=SENDER, region=REGION)


def _simple(index: int, recipients: int = 1) -> dict[str, Any]:
    addresses = [f"user{index}-{r}@dest.example" for r in range(recipients)]
    return {
        "to": addresses[:1],
        "cc": addresses[1:2],
        "bcc": addresses[2:],
        "subject": f"#{index}",
        "text": "hi",
    }


def _templated(index: int, template: str = "welcome") -> dict[str, Any]:
    return {"to": [f"user{index}@dest.example"], "template": template, "data": {"n": index}}


def _stubbed_client() -> SESV2Client:
    return boto3.session.Session().client(
        "sesv2", region_name="us-east-1", aws_access_key_id="stub", aws_secret_access_key="stub"
    )


@pytest.fixture
def stubbed() -> Iterator[tuple[SESV2Client, Stubber]]:
    """An SESv2 client whose calls are answered by botocore's Stubber; any call it did not expect fails."""
    client = _stubbed_client()
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


# --- against moto's SES server, over HTTP ------------------------------------------------------------------


def test_send_worker_delivers_hundreds_and_the_server_counts_every_recipient(
    ses_server: MotoServer, ses_v1: SESClient
) -> None:
    # No client, region or endpoint given: the worker finds the server through boto3's default chain.
    send = ses_sender(from_address=SENDER)
    messages = [_simple(i, recipients=1 + i % 3) for i in range(300)]
    with ThreadPoolExecutor(max_workers=5) as pool:  # stage threads share one client
        ids = list(pool.map(send, messages))

    assert len(set(ids)) == 300
    stored = ses_server.sent_messages()
    assert sorted(str(m["id"]) for m in stored) == sorted(ids)
    points = ses_v1.get_send_statistics()["SendDataPoints"]
    assert sum(p.get("DeliveryAttempts", 0) for p in points) == sum(ses_cost(m) for m in messages) == 600
    assert sum(p.get("Rejects", 0) for p in points) == 0


def test_batch_worker_sends_simple_messages_one_call_each_against_the_server(
    ses_server: MotoServer, moto_server: MotoServer
) -> None:
    send_many = ses_bulk_sender(region="us-east-1", endpoint_url=moto_server.url, from_address=SENDER)
    batch = [[_simple(i, recipients=2)] for i in range(60)]
    ids = send_many(batch)
    assert all(ids) and len(set(ids)) == 60
    assert len(ses_server.sent_messages()) == 60


def test_an_unverified_sender_is_refused_for_good(ses_server: MotoServer, ses_v1: SESClient) -> None:
    send = ses_sender(from_address="nobody@unverified.example")
    with pytest.raises(PermanentSESError) as caught:
        send(_simple(1))
    assert caught.value.code == "MessageRejected"
    assert caught.value.permanent is True
    points = ses_v1.get_send_statistics()["SendDataPoints"]
    assert sum(p.get("Rejects", 0) for p in points) == 1


def test_an_invalid_recipient_is_refused_for_good(ses_server: MotoServer) -> None:
    send = ses_sender(from_address=SENDER)
    with pytest.raises(PermanentSESError) as caught:
        send({"to": ["not an address"], "subject": "s", "text": "t"})
    assert caught.value.code == "InvalidParameterValue"


def test_a_batch_with_one_refused_item_reports_only_that_item(ses_server: MotoServer) -> None:
    send_many = ses_bulk_sender(from_address=SENDER)
    batch = [[_simple(0)], [{**_simple(1), "from": "nobody@unverified.example"}], [_simple(2)]]
    with pytest.raises(BatchFailed) as caught:
        send_many(batch)
    assert caught.value.failed == [1]
    assert "MessageRejected" in caught.value.errors[1]
    assert set(caught.value.permanent) == {1}
    assert len(ses_server.sent_messages()) == 2


def test_an_unreachable_endpoint_is_transient(moto_server: MotoServer) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago, with nothing listening on it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    send = ses_sender(region="us-east-1", endpoint_url=f"http://127.0.0.1:{port}", from_address=SENDER)
    with pytest.raises(TransientSESError) as caught:
        send(_simple(1))
    assert caught.value.code == "EndpointConnectionError"
    assert caught.value.permanent is False


def test_the_quota_is_read_back_from_the_server(
    moto_server: MotoServer, ses_v1: SESClient, caplog: pytest.LogCaptureFixture
) -> None:
    # moto grants a sandbox quota of 1 a second; 90% of it still allows 1, never 0.
    assert account_send_rate(ses_v1) == 1.0
    with caplog.at_level(logging.INFO, logger="flume_rx.integrations.ses"):
        assert rate_from_ses(ses_v1, 0.9) == 1
    assert "max send rate is 1/s; allowing 1 recipients per 1 s" in caplog.text


# --- error mapping, with botocore's Stubber (no network) --------------------------------------------------


@pytest.mark.parametrize(
    ("code", "message", "status"),
    [
        ("Throttling", "Maximum sending rate exceeded.", 400),
        ("TooManyRequestsException", "Too many requests.", 429),
        ("ThrottlingException", "Rate exceeded", 400),
        ("LimitExceededException", "Maximum sending rate exceeded.", 400),
    ],
)
def test_throttling_raises_throttled(
    stubbed: tuple[SESV2Client, Stubber], code: str, message: str, status: int
) -> None:
    client, stubber = stubbed
    stubber.add_client_error("send_email", code, message, status)
    with pytest.raises(Throttled, match=code):
        ses_sender(client, from_address=SENDER)(_simple(1))


@pytest.mark.parametrize(
    ("code", "message", "status"),
    [
        ("InternalFailure", "", 500),
        ("ServiceUnavailable", "Service unavailable", 503),
        ("InternalServiceErrorException", "", 500),
        ("Throttling", "Daily message quota exceeded.", 400),
        ("LimitExceededException", "Daily sending quota exceeded", 400),
        ("AccessDeniedException", "not authorized", 403),
    ],
)
def test_server_side_and_unknown_failures_are_transient(
    stubbed: tuple[SESV2Client, Stubber], code: str, message: str, status: int
) -> None:
    client, stubber = stubbed
    stubber.add_client_error("send_email", code, message, status)
    with pytest.raises(TransientSESError) as caught:
        ses_sender(client, from_address=SENDER)(_simple(1))
    assert caught.value.code == code
    assert not caught.value.permanent


@pytest.mark.parametrize(
    "code",
    [
        "MessageRejected",
        "MailFromDomainNotVerifiedException",
        "AccountSuspendedException",
        "SendingPausedException",
        "NotFoundException",
        "BadRequestException",
        "InvalidParameterValue",
    ],
)
def test_permanent_refusals_carry_the_ses_code(stubbed: tuple[SESV2Client, Stubber], code: str) -> None:
    client, stubber = stubbed
    stubber.add_client_error("send_email", code, f"refused: {code}", 400)
    with pytest.raises(PermanentSESError) as caught:
        ses_sender(client, from_address=SENDER)(_templated(1))
    assert caught.value.code == code
    assert caught.value.permanent is True
    assert code in str(caught.value)


class _RaisingClient:
    """Stands in for an SESv2 client whose every call fails in the transport, as botocore reports it."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def send_email(self, **_: Any) -> dict[str, Any]:
        raise self.error

    def send_bulk_email(self, **_: Any) -> dict[str, Any]:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        ReadTimeoutError(endpoint_url="https://email.us-east-1.amazonaws.com"),
        ConnectTimeoutError(endpoint_url="https://email.us-east-1.amazonaws.com"),
        EndpointConnectionError(endpoint_url="https://email.us-east-1.amazonaws.com"),
        ConnectionClosedError(endpoint_url="https://email.us-east-1.amazonaws.com"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_transport_failures_are_transient(error: Exception) -> None:
    send = ses_sender(cast("SESV2Client", _RaisingClient(error)), from_address=SENDER)
    with pytest.raises(TransientSESError) as caught:
        send(_simple(1))
    assert caught.value.code == type(error).__name__
    assert caught.value.__cause__ is error


def test_a_request_botocore_refuses_to_send_is_permanent() -> None:
    error = ParamValidationError(report="Invalid length for parameter Destination.ToAddresses[0]")
    with pytest.raises(PermanentSESError) as caught:
        ses_sender(cast("SESV2Client", _RaisingClient(error)), from_address=SENDER)(_simple(1))
    assert caught.value.code == "InvalidParameterValue"


def test_a_bug_in_the_client_is_not_disguised() -> None:
    send = ses_sender(cast("SESV2Client", _RaisingClient(KeyError("boom"))), from_address=SENDER)
    with pytest.raises(KeyError):
        send(_simple(1))


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        ("just a string", "pass one dict"),
        ({"to": [], "subject": "s", "text": "t"}, "no recipient"),
        ({"to": [f"u{i}@x.example" for i in range(51)], "subject": "s", "text": "t"}, "over SES's 50"),
        ({"to": ["a@x.example"], "subject": "s"}, "'text' or 'html'"),
        ({"to": ["a@x.example"], "template": "t", "subject": "s"}, "give one or the other"),
        ({"to": ["a@x.example"], "body": "t"}, "unknown key"),
        ({"to": ["a@x.example"], "template": "t", "data": ["x"]}, "'data' is a list"),
        ({"to": [1], "subject": "s", "text": "t"}, "list of email addresses"),
    ],
)
def test_a_malformed_job_is_permanent_and_never_sent(
    stubbed: tuple[SESV2Client, Stubber], message: Any, fragment: str
) -> None:
    client, _ = stubbed  # no response queued: a call would fail the fixture's teardown
    with pytest.raises(PermanentSESError, match=fragment) as caught:
        ses_sender(client, from_address=SENDER)(message)
    assert caught.value.code == "InvalidJobArgs"


@pytest.mark.parametrize("args", [(), (_simple(1), _simple(2))], ids=["no args", "two args"])
def test_a_job_with_other_than_one_arg_is_permanent(
    stubbed: tuple[SESV2Client, Stubber], args: tuple[Any, ...]
) -> None:
    client, _ = stubbed
    with pytest.raises(PermanentSESError, match=f"the job has {len(args)} args") as caught:
        ses_sender(client, from_address=SENDER)(*args)
    assert caught.value.code == "InvalidJobArgs"


def test_send_email_request_for_a_templated_message(stubbed: tuple[SESV2Client, Stubber]) -> None:
    client, stubber = stubbed
    message = {
        "to": "a@dest.example",
        "bcc": ["b@dest.example"],
        "template": "welcome",
        "data": {"name": "Ada"},
        "reply_to": ["help@flume.example"],
        "tags": {"campaign": "spring"},
    }
    stubber.add_response(
        "send_email",
        {"MessageId": "m-1"},
        {
            "FromEmailAddress": SENDER,
            "Destination": {"ToAddresses": ["a@dest.example"], "BccAddresses": ["b@dest.example"]},
            "Content": {"Template": {"TemplateName": "welcome", "TemplateData": '{"name":"Ada"}'}},
            "ReplyToAddresses": ["help@flume.example"],
            "EmailTags": [{"Name": "campaign", "Value": "spring"}],
            "ConfigurationSetName": "tracking",
        },
    )
    send = ses_sender(client, from_address=SENDER, configuration_set="tracking")
    assert send(message) == "m-1"


# --- the bulk worker ----------------------------------------------------------------------------------------


def _bulk_ok(count: int) -> dict[str, Any]:
    return {"BulkEmailEntryResults": [{"Status": "SUCCESS", "MessageId": f"m-{i}"} for i in range(count)]}


def test_a_bulk_batch_maps_each_destination_status_back_to_its_job(
    stubbed: tuple[SESV2Client, Stubber],
) -> None:
    client, stubber = stubbed
    statuses = ["SUCCESS", "MESSAGE_REJECTED", "TRANSIENT_FAILURE", "SUCCESS", "TEMPLATE_NOT_FOUND"]
    stubber.add_response(
        "send_bulk_email",
        {
            "BulkEmailEntryResults": [
                {"Status": s, "MessageId": f"m-{i}", "Error": "" if s == "SUCCESS" else f"why {i}"}
                for i, s in enumerate(statuses)
            ]
        },
        {
            "FromEmailAddress": SENDER,
            "DefaultContent": {"Template": {"TemplateName": "welcome", "TemplateData": "{}"}},
            "BulkEmailEntries": ANY,
        },
    )
    with pytest.raises(BatchFailed) as caught:
        ses_bulk_sender(client, from_address=SENDER)([[_templated(i)] for i in range(5)])
    assert caught.value.failed == [1, 2, 4]
    assert set(caught.value.permanent) == {1, 4}
    assert "MESSAGE_REJECTED" in caught.value.errors[1] and "why 1" in caught.value.errors[1]
    assert "TRANSIENT_FAILURE" in caught.value.errors[2]


def test_a_bulk_group_larger_than_fifty_is_split(stubbed: tuple[SESV2Client, Stubber]) -> None:
    client, stubber = stubbed
    batch = [[_templated(i)] for i in range(120)]
    for start, size in ((0, 50), (50, 50), (100, 20)):
        entries = [
            {
                "Destination": {"ToAddresses": [f"user{i}@dest.example"]},
                "ReplacementEmailContent": {
                    "ReplacementTemplate": {"ReplacementTemplateData": f'{{"n":{i}}}'}
                },
            }
            for i in range(start, start + size)
        ]
        stubber.add_response(
            "send_bulk_email",
            _bulk_ok(size),
            {
                "FromEmailAddress": SENDER,
                "DefaultContent": {"Template": {"TemplateName": "welcome", "TemplateData": "{}"}},
                "BulkEmailEntries": entries,
            },
        )
    ids = ses_bulk_sender(client, from_address=SENDER)(batch)
    assert ids == [f"m-{i % 50}" for i in range(120)]


def test_a_throttled_bulk_call_stops_the_batch_and_raises_throttled(
    stubbed: tuple[SESV2Client, Stubber],
) -> None:
    client, stubber = stubbed
    # Two groups (two templates) and a simple message: once the first call is throttled, nothing else is sent.
    batch = [[_templated(0, "a")], [_templated(1, "b")], [_simple(2)]]
    stubber.add_client_error(
        "send_bulk_email", "TooManyRequestsException", "Maximum sending rate exceeded", 429
    )
    with pytest.raises(Throttled):
        ses_bulk_sender(client, from_address=SENDER)(batch)


def test_throttled_destinations_after_a_success_are_reported_failed(
    stubbed: tuple[SESV2Client, Stubber],
) -> None:
    client, stubber = stubbed
    batch = [[_templated(0, "a")], [_templated(1, "a")], [_templated(2, "b")]]
    stubber.add_response(
        "send_bulk_email",
        {
            "BulkEmailEntryResults": [
                {"Status": "SUCCESS", "MessageId": "m-0"},
                {"Status": "ACCOUNT_THROTTLED"},
            ]
        },
        {"FromEmailAddress": SENDER, "DefaultContent": ANY, "BulkEmailEntries": ANY},
    )
    with pytest.raises(BatchFailed) as caught:
        ses_bulk_sender(client, from_address=SENDER)(batch)
    # Item 0 went out and must not be sent again; 1 was throttled and 2 never sent (stubber got one call).
    assert caught.value.failed == [1, 2]
    assert not set(caught.value.permanent)
    assert caught.value.throttled == {1, 2}  # both wait for tokens again, spending no retry


def test_a_bulk_call_failing_whole_fails_only_its_group(stubbed: tuple[SESV2Client, Stubber]) -> None:
    client, stubber = stubbed
    batch: list[list[Any]] = [
        [_templated(0, "a")],
        [_templated(1, "missing")],
        [_templated(2, "a")],
        ["not a message"],
    ]
    stubber.add_response(
        "send_bulk_email",
        _bulk_ok(2),
        {"FromEmailAddress": SENDER, "DefaultContent": ANY, "BulkEmailEntries": ANY},
    )
    stubber.add_client_error("send_bulk_email", "NotFoundException", "Template missing does not exist", 404)
    with pytest.raises(BatchFailed) as caught:
        ses_bulk_sender(client, from_address=SENDER)(batch)
    assert caught.value.failed == [1, 3]
    assert set(caught.value.permanent) == {1, 3}
    assert "NotFoundException" in caught.value.errors[1]
    assert "InvalidJobArgs" in caught.value.errors[3]


# --- the account's rate -------------------------------------------------------------------------------------


def test_rate_from_ses_takes_the_fraction_of_the_account_rate(
    stubbed: tuple[SESV2Client, Stubber], caplog: pytest.LogCaptureFixture
) -> None:
    client, stubber = stubbed
    for _ in range(3):
        stubber.add_response("get_account", {"SendQuota": {"MaxSendRate": 500.0, "Max24HourSend": 1e6}})
    assert account_send_rate(client) == 500.0
    with caplog.at_level(logging.INFO, logger="flume_rx.integrations.ses"):
        assert rate_from_ses(client, 0.9) == 450
        assert rate_from_ses(client, 0.9, period_s=0.5) == 225
    assert (
        "max send rate is 500/s; allowing 450 recipients per 1 s (rate_limiter.from_ses = 0.9)" in caplog.text
    )


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5, True, float("nan")])
def test_rate_from_ses_rejects_a_fraction_outside_0_1(
    stubbed: tuple[SESV2Client, Stubber], fraction: Any
) -> None:
    client, _ = stubbed
    with pytest.raises(ConfigError, match="from_ses must be a fraction"):
        rate_from_ses(client, fraction)


def test_an_account_without_a_send_quota_is_a_config_error(stubbed: tuple[SESV2Client, Stubber]) -> None:
    client, stubber = stubbed
    stubber.add_response("get_account", {"SendingEnabled": False})
    with pytest.raises(ConfigError, match="no MaxSendRate"):
        account_send_rate(client)


def test_reading_the_rate_while_throttled_raises_throttled(stubbed: tuple[SESV2Client, Stubber]) -> None:
    client, stubber = stubbed
    stubber.add_client_error("get_account", "TooManyRequestsException", "slow down", 429)
    with pytest.raises(Throttled):
        account_send_rate(client)


def test_register_ses_workers_registers_a_send_and_a_batch_worker() -> None:
    downstream = register_ses_workers("SESRegTest", "SESRegTestBulk", _stubbed_client(), from_address=SENDER)
    assert isinstance(downstream, SESDownstream)
    assert not get_worker("SESRegTest").batch and get_worker("SESRegTestBulk").batch
    assert not get_worker("SESRegTest").is_async


@pytest.fixture
def no_aws_region(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine with no region in boto3's chain: no AWS_DEFAULT_REGION and no AWS config file."""
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)


@pytest.mark.usefixtures("no_aws_region")
def test_a_region_set_only_in_aws_region_is_refused_at_registration_naming_both_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-west-1")  # what other AWS SDKs read; boto3 does not
    with pytest.raises(
        ConfigError, match=r"AWS_REGION=eu-west-1 is set, but boto3 does not read it.*AWS_DEFAULT_REGION"
    ):
        register_ses_workers("SESNoRegion", None, from_address=SENDER)
    with pytest.raises(ConfigError, match="AWS_DEFAULT_REGION"):
        default_client()


@pytest.mark.usefixtures("no_aws_region")
def test_the_region_comes_from_the_argument_or_aws_default_region(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="none is set; export AWS_DEFAULT_REGION"):
        resolve_region()
    assert resolve_region("ap-south-1") == "ap-south-1"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    assert resolve_region() == "eu-central-1"
    assert default_client().meta.region_name == "eu-central-1"


@pytest.mark.usefixtures("no_aws_region")
def test_a_worker_whose_ses_workers_have_no_region_stops_at_start_with_the_fix(
    redis_url: str, tmp_path: Path
) -> None:
    (tmp_path / "mail.py").write_text(
        "from flume_rx.integrations.ses import register_ses_workers\n"
        "register_ses_workers(from_address='news@mail.example.com')\n"
    )
    config = tmp_path / "flume.toml"
    config.write_text(f'redis_url = "{redis_url}"\nimports = ["mail"]\n[pipelines.email]\n')
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flume_rx",
            "worker",
            "--burst",
            "--config",
            str(config),
            "--path",
            str(tmp_path),
        ],
        env={**os.environ, "AWS_REGION": "eu-west-1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "AWS_DEFAULT_REGION" in result.stderr and "AWS_REGION=eu-west-1" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_sender_needs_an_address() -> None:
    with pytest.raises(ConfigError, match="from_address must be an email address"):
        ses_sender(from_address="")


# --- properties ---------------------------------------------------------------------------------------------

_address = st.integers(0, 10_000).map(lambda n: f"u{n}@dest.example")
_addresses = st.lists(_address, max_size=20)


@given(to=_addresses, cc=_addresses, bcc=_addresses, single=st.booleans())
def test_ses_cost_is_the_recipient_count(to: list[str], cc: list[str], bcc: list[str], single: bool) -> None:
    message: dict[str, Any] = {"to": to, "cc": cc, "bcc": bcc, "subject": "s", "text": "t"}
    if single and len(to) == 1:
        message["to"] = to[0]
    expected = max(1, len(to) + len(cc) + len(bcc))
    assert ses_cost(message) == expected  # as the pipeline calls it: ses_cost(*job.args)
    assert ses_cost([message]) == expected  # with the args list
    if 0 < len(to) + len(cc) + len(bcc) <= 50:
        assert parse_message(message).recipients == expected


@given(
    st.one_of(
        st.none(), st.integers(), st.text(), st.lists(st.integers()), st.dictionaries(st.text(), st.text())
    )
)
def test_ses_cost_of_anything_else_is_one(junk: Any) -> None:
    assert ses_cost(junk) == 1


_message_or_none = st.one_of(
    st.none(),
    st.builds(
        SESMessage,
        to=st.just(("a@dest.example",)),
        template=st.one_of(st.none(), st.sampled_from(["t1", "t2", "t3"])),
        from_address=st.sampled_from([None, "other@flume.example"]),
        reply_to=st.sampled_from([(), ("r@flume.example",)]),
        subject=st.just("s"),
        text=st.just("t"),
    ),
)


@given(messages=st.lists(_message_or_none, max_size=300), size=st.integers(1, 60))
def test_plan_bulk_calls_sends_each_templated_message_once_within_the_limit(
    messages: list[SESMessage | None], size: int
) -> None:
    calls, singles = plan_bulk_calls(messages, max_destinations=size)
    planned = [i for call in calls for i in call.indices]
    assert sorted(planned) == [i for i, m in enumerate(messages) if m is not None and m.template is not None]
    assert singles == [i for i, m in enumerate(messages) if m is not None and m.template is None]
    for call in calls:
        assert 1 <= len(call.indices) <= size
        assert list(call.indices) == sorted(call.indices)
        for i in call.indices:
            message = messages[i]
            assert message is not None
            assert (message.template, message.from_address, message.reply_to) == (
                call.template,
                call.from_address,
                call.reply_to,
            )


class _RecordingClient:
    """A fake SESv2 client that records every request and answers each destination with a chosen status."""

    def __init__(self, statuses: Mapping[str, str]) -> None:
        self.statuses = statuses  # address -> bulk status; absent means SUCCESS
        self.bulk_calls: list[dict[str, Any]] = []
        self.single_calls: list[dict[str, Any]] = []

    def send_bulk_email(self, **request: Any) -> dict[str, Any]:
        self.bulk_calls.append(request)
        results = []
        for entry in request["BulkEmailEntries"]:
            address = entry["Destination"]["ToAddresses"][0]
            status = self.statuses.get(address, "SUCCESS")
            results.append({"Status": status, "MessageId": f"id:{address}", "Error": status})
        return {"BulkEmailEntryResults": results}

    def send_email(self, **request: Any) -> dict[str, Any]:
        self.single_calls.append(request)
        return {"MessageId": f"id:{request['Destination']['ToAddresses'][0]}"}


_statuses = st.sampled_from(
    ["SUCCESS", "SUCCESS", "SUCCESS", "MESSAGE_REJECTED", "TRANSIENT_FAILURE", "FAILED", "INVALID_PARAMETER"]
)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    items=st.lists(st.tuples(st.sampled_from(["a", "b", None]), _statuses), min_size=1, max_size=200),
)
def test_bulk_worker_sends_every_destination_once_and_maps_statuses_back(
    items: Sequence[tuple[str | None, str]],
) -> None:
    batch: list[list[Any]] = []
    statuses: dict[str, str] = {}
    for index, (template, status) in enumerate(items):
        batch.append([_templated(index, template) if template else _simple(index)])
        address = f"user{index}@dest.example" if template else f"user{index}-0@dest.example"
        if template:
            statuses[address] = status
    client = _RecordingClient(statuses)
    send_many = ses_bulk_sender(cast("SESV2Client", client), from_address=SENDER)

    expected_failed = sorted(i for i, (t, s) in enumerate(items) if t and s != "SUCCESS")
    try:
        ids = send_many(batch)
        failed: list[int] = []
        permanent: set[int] = set()
    except BatchFailed as exc:
        failed, permanent = exc.failed, set(exc.permanent)
        ids = []

    sent = [
        entry["Destination"]["ToAddresses"][0]
        for call in client.bulk_calls
        for entry in call["BulkEmailEntries"]
    ]
    sent += [call["Destination"]["ToAddresses"][0] for call in client.single_calls]
    assert sorted(sent) == sorted(
        f"user{i}@dest.example" if t else f"user{i}-0@dest.example" for i, (t, _) in enumerate(items)
    )
    assert all(len(call["BulkEmailEntries"]) <= MAX_BULK_DESTINATIONS for call in client.bulk_calls)
    for call in client.bulk_calls:
        template = call["DefaultContent"]["Template"]["TemplateName"]
        for entry in call["BulkEmailEntries"]:
            data = json.loads(
                entry["ReplacementEmailContent"]["ReplacementTemplate"]["ReplacementTemplateData"]
            )
            assert items[data["n"]][0] == template
    assert failed == expected_failed
    assert permanent == {
        i for i in expected_failed if items[i][1] in {"MESSAGE_REJECTED", "INVALID_PARAMETER"}
    }
    if not failed:
        assert ids == [
            f"id:user{i}@dest.example" if t else f"id:user{i}-0@dest.example"
            for i, (t, _) in enumerate(items)
        ]


# --- through the runtime: 3 worker processes ----------------------------------------------------------------


def test_three_worker_processes_send_every_job_through_the_pipeline(
    ses_server: MotoServer, ses_v1: SESClient, tmp_path: Path
) -> None:
    from flume_rx import Flume
    from flume_rx.surfaces.embedded import RedisServer

    messages = [_simple(i, recipients=1 + i % 2) for i in range(300)]
    with RedisServer() as redis_server:
        config = tmp_path / "flume.toml"
        config.write_text(
            textwrap.dedent(
                f"""
                redis_url = "{redis_server.url}"
                namespace = "ses-test"
                imports = ["tests.integration.test_ses"]
                [pipelines.email]
                max_demand = 50
                processor = {{ stages = 5 }}
                rate_limiter = {{ allowed = 400, period = 1000, cost = "flume_rx.integrations.ses:ses_cost" }}
                retry = {{ max_retries = 3, backoff_initial = 50, backoff_max = 500 }}
                """
            )
        )
        with Flume(redis_url=redis_server.url, namespace="ses-test") as flume:
            flume.bulk_enqueue("email", [(PIPELINE_WORKER, [m]) for m in messages])
            _run_worker_cli(config, processes=3)
            stats = flume.stats(["email"])["email"]
    assert stats["queued"] == stats["in_flight"] == stats["dead"] == 0
    assert stats["processed"] == 300
    # At-least-once delivery: a job may be sent twice, never zero times.
    stored = ses_server.sent_messages()
    subjects = {str(m["subject"]) for m in stored}
    assert subjects == {f"#{i}" for i in range(300)}
    points = ses_v1.get_send_statistics()["SendDataPoints"]
    assert sum(p.get("DeliveryAttempts", 0) for p in points) >= sum(ses_cost(m) for m in messages)
    assert sum(p.get("Rejects", 0) for p in points) == 0


def _run_worker_cli(config: Path, processes: int, timeout_s: float = 120.0) -> None:
    """``flume-rx worker --burst`` in its own process group, so a hang is killed whole instead of leaving
    worker processes that the test process would wait for at exit."""
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-m", "flume_rx", "worker", "--config", str(config), "--burst"]
    process = subprocess.Popen(
        [*command, "--processes", str(processes)],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the worker did not drain the queue within {timeout_s} s:\n{output.decode()[-3000:]}")
    assert process.returncode == 0, output.decode()[-3000:]
