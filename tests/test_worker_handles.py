"""``@worker`` returns a handle: calling it calls the function, ``.enqueue`` puts a job for it on its queue and
refuses, at the call site, arguments the function cannot take."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from flume_rx import ConfigError, Flume, WorkerHandle, worker
from flume_rx.model.registry import get_worker, unregister
from flume_rx.testing import FlumeTest


@pytest.fixture
def send_email() -> Iterator[WorkerHandle[[int, str], str]]:
    @worker("HandleEmail", queue="mail")
    def send_email(user_id: int, template: str = "welcome") -> str:
        """Sends one email."""
        return f"{template} to {user_id}"

    yield send_email
    unregister("HandleEmail")


def test_calling_the_handle_calls_the_function(send_email: WorkerHandle[[int, str], str]) -> None:
    assert send_email(7, "bye") == "bye to 7"
    assert send_email.__name__ == "send_email" and send_email.__doc__ == "Sends one email."
    assert get_worker("HandleEmail").fn is send_email.fn


def test_enqueue_puts_a_job_for_the_worker_on_its_queue(send_email: WorkerHandle[[int, str], str]) -> None:
    flume = FlumeTest(mode="fake")
    job_id = send_email.enqueue(flume, 42)
    job = flume.assert_enqueued("HandleEmail", [42], queue="mail")
    assert job.id == job_id
    other = send_email.enqueue(flume, 43, "bye", queue="urgent-mail", unique_key="bye:43")
    assert flume.assert_enqueued("HandleEmail", [43, "bye"], queue="urgent-mail").id == other
    send_email.enqueue_in(flume, 60, 44)
    send_email.enqueue_at(flume, 2_000_000_000, 45)
    assert [j.args for j in flume.jobs("HandleEmail")] == [[42], [43, "bye"], [44], [45]]
    assert flume.drain() and flume.jobs() == [], "drain ran every job, the due ones included"


def test_arguments_the_function_cannot_take_fail_at_the_call_site(
    send_email: WorkerHandle[[int, str], str],
) -> None:
    flume = FlumeTest(mode="fake")
    with pytest.raises(ConfigError, match=r"worker 'HandleEmail' cannot take the args \[1, 'a', 'b'\]"):
        send_email.enqueue(flume, 1, "a", "b")
    with pytest.raises(ConfigError, match=r"call it as send_email\(user_id, template='welcome'\)"):
        send_email.enqueue_in(flume, 5)
    with pytest.raises(TypeError, match="unique_kye"):
        send_email.enqueue(flume, 1, unique_kye="x")  # type: ignore[call-arg]
    assert flume.jobs() == [], "nothing was enqueued"


def test_a_handle_without_a_queue_asks_for_one() -> None:
    @worker
    def resize(image_id: int) -> None: ...

    try:
        assert resize.name == "resize" and get_worker("resize").fn is resize.fn
        with pytest.raises(ConfigError, match=r"worker 'resize' has no queue; pass queue=\.\.\."):
            resize.enqueue(FlumeTest(mode="fake"), 1)
        flume = FlumeTest(mode="fake")
        resize.enqueue(flume, 1, queue="images")
        flume.assert_enqueued("resize", [1], queue="images")
    finally:
        unregister("resize")


def test_a_batch_worker_handle_enqueues_one_items_args() -> None:
    @worker("HandleBatch", batch=True, queue="bulk")
    def send_many(batch: list[list[int]]) -> None: ...

    try:
        flume = FlumeTest(mode="fake")
        send_many.enqueue(flume, 1, 2)
        flume.assert_enqueued("HandleBatch", [1, 2], queue="bulk")
    finally:
        unregister("HandleBatch")


def test_enqueue_through_a_real_flume_writes_the_job_to_redis(
    redis_url: str, send_email: WorkerHandle[[int, str], str]
) -> None:
    with Flume(redis_url, "handles") as flume:
        job_id = send_email.enqueue(flume, 42, "welcome")
        later = send_email.enqueue_in(flume, 3600, 43)
        [job] = flume.peek("mail")
        assert (job.id, job.worker, job.args) == (job_id, "HandleEmail", [42, "welcome"])
        assert [j.id for j in flume.peek("mail", "scheduled")] == [later]


def test_a_function_attribute_does_not_shadow_the_handles_own() -> None:
    def tagged(x: int) -> int:
        return x

    tagged.name = "not the worker name"  # type: ignore[attr-defined]
    handle = worker("HandleTagged", queue="tags")(tagged)
    try:
        assert (handle.name, handle.queue, handle(3)) == ("HandleTagged", "tags", 3)
    finally:
        unregister("HandleTagged")
