"""A step's countdown (`reschedule`) and what the worker tells Flower about it (`StepRequest`),
on a Celery app of its own with the in-memory broker: the message published again is the same
task with the rest of the chain, and only a task's real outcomes become events."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery, Task
from celery.contrib.testing.mocks import TaskMessage
from celery.exceptions import Retry
from celery.signals import before_task_publish
from celery.utils.saferepr import saferepr

from ktrdr_tasks.reschedule import (
    RESCHEDULED,
    StepRequest,
    _producers,
    reschedule,
    step_strategy,
)

QUEUE = "steps"


APP = Celery("reschedule-test", broker="memory://", set_as_current=False)
APP.conf.task_serializer = "json"
APP.conf.task_default_queue = QUEUE
APP.conf.task_acks_late = True


@APP.task(bind=True, name="test.poll", Request="ktrdr_tasks.reschedule:StepRequest")
def poll(self: Task, operation_id: str) -> str:
    return reschedule(self, 5)


@pytest.fixture
def app() -> Iterator[Celery]:
    app = APP
    yield app
    with app.connection_for_write() as connection:
        connection.default_channel.queue_purge(QUEUE)


def published(app: Celery) -> list[Any]:
    """The messages on the queue (taken off it)."""
    messages = []
    with app.connection_for_read() as connection, connection.SimpleQueue(QUEUE) as queue:
        while True:
            try:
                message = queue.get(timeout=0.2)
            except queue.Empty:
                return messages
            message.ack()
            messages.append(message)


def run_in_worker(app: Celery, **request: Any) -> Any:
    """Run test.poll as a worker would: with the message's context, not called directly."""
    task = app.tasks["test.poll"]
    context = {
        "id": "poll-1",
        "args": ["op-1"],
        "kwargs": {},
        "called_directly": False,
        "delivery_info": {"exchange": "", "routing_key": QUEUE},
        **request,
    }
    task.push_request(**context)
    try:
        return task.run("op-1"), task.request.chain
    finally:
        task.pop_request()


def test_reschedule_publishes_the_same_task_again_with_the_rest_of_the_chain(
    app: Celery,
) -> None:
    rest = [dict(app.signature("test.next", args=("op-1",), immutable=True))]

    returned, chain_left = run_in_worker(
        app, chain=rest, retries=2, root_id="root-1", parent_id="parent-1"
    )

    assert returned == RESCHEDULED
    assert chain_left is None  # this run dispatches nothing
    [message] = published(app)
    headers = message.headers
    assert headers["id"] == "poll-1"
    assert headers["task"] == "test.poll"
    assert headers["retries"] == 3
    assert headers["eta"] is not None
    assert headers["root_id"] == "root-1"
    args, _, embed = message.decode()
    assert args == ["op-1"]
    assert [link["task"] for link in embed["chain"]] == ["test.next"]


def test_called_directly_reschedule_raises_retry_and_publishes_nothing(app: Celery) -> None:
    with pytest.raises(Retry):
        app.tasks["test.poll"]("op-1")

    assert published(app) == []


def context_of(message: Any) -> dict[str, Any]:
    """The request a worker's pool process builds from a received message (`trace_task`)."""
    args, kwargs, embed = message.decode()
    return {
        **message.headers,
        "delivery_info": message.delivery_info,
        "reply_to": message.properties.get("reply_to"),
        "correlation_id": message.properties.get("correlation_id"),
        "args": args,
        "kwargs": kwargs,
        "called_directly": False,
        "is_eager": False,
        **embed,
    }


def rescheduled_from(app: Celery, context: dict[str, Any]) -> Any:
    task = app.tasks["test.poll"]
    task.push_request(**context)
    try:
        task.run("op-1")
    finally:
        task.pop_request()
    [message] = published(app)
    return message


def test_the_republished_message_is_the_one_celerys_own_path_sends(app: Celery) -> None:
    rest = app.signature("test.next", args=("op-1",), immutable=True)
    first = app.signature("test.poll", args=("op-1",), immutable=True)
    (first | rest).apply_async(
        task_id="poll-1", root_id="root-1", parent_id="parent-1", headers={"tenant": "t1"}
    )
    [received] = published(app)
    context = context_of(received)

    lean = rescheduled_from(app, context)
    # A publish observer sends the message through Celery's `signature_from_request` instead.
    observed: list[str] = []

    def observe(sender: str = "", **_: Any) -> None:
        observed.append(sender)

    before_task_publish.connect(observe, weak=False)
    try:
        celerys = rescheduled_from(app, context)
    finally:
        before_task_publish.disconnect(observe)

    assert observed == ["test.poll"]
    lean_headers, celery_headers = dict(lean.headers), dict(celerys.headers)
    assert lean_headers.pop("eta") and celery_headers.pop("eta")
    assert lean_headers == celery_headers
    assert lean_headers["retries"] == received.headers["retries"] + 1
    assert lean_headers["tenant"] == "t1"
    assert lean.decode() == celerys.decode()
    assert lean.delivery_info["routing_key"] == celerys.delivery_info["routing_key"] == QUEUE
    for name in ("correlation_id", "reply_to"):
        assert lean.properties.get(name) == celerys.properties.get(name)


def test_the_republished_message_is_due_after_its_countdown(app: Celery) -> None:
    app.signature("test.poll", args=("op-1",)).apply_async(task_id="poll-1")
    [received] = published(app)

    before = datetime.now(UTC)
    again = rescheduled_from(app, context_of(received))

    eta = datetime.fromisoformat(again.headers["eta"])
    assert before + timedelta(seconds=5) <= eta <= datetime.now(UTC) + timedelta(seconds=5)


class Eventer:
    enabled = True

    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, type: str, **_: Any) -> None:
        self.sent.append(type)


def worker_request(app: Celery, retries: int) -> tuple[StepRequest, Eventer]:
    eventer = Eventer()
    message = TaskMessage("test.poll", id="poll-1", args=["op-1"], retries=retries)
    request = StepRequest(message, app=app, task=app.tasks["test.poll"], eventer=eventer)
    return request, eventer


def test_a_reschedule_is_acknowledged_without_a_success_event(app: Celery) -> None:
    request, eventer = worker_request(app, retries=0)

    request.on_success((False, saferepr(RESCHEDULED), 0.01))

    assert request.acknowledged
    assert eventer.sent == []


def test_the_final_run_of_a_rescheduled_task_sends_its_success(app: Celery) -> None:
    request, eventer = worker_request(app, retries=7)

    request.on_success((False, saferepr({"training": "completed"}), 0.01))

    assert eventer.sent == ["task-succeeded"]


@pytest.mark.parametrize(("retries", "events"), [(0, ["task-started"]), (3, [])])
def test_only_the_first_run_of_a_task_says_it_started(
    app: Celery, retries: int, events: list[str]
) -> None:
    request, eventer = worker_request(app, retries=retries)

    request.on_accepted(pid=1, time_accepted=0.0)

    assert eventer.sent == events


def consumer_for(eventer: Eventer) -> SimpleNamespace:
    """What Celery's default strategy reads of the worker's consumer."""
    return SimpleNamespace(
        hostname="test@host",
        connection_errors=(),
        event_dispatcher=eventer,
        timer=SimpleNamespace(call_at=lambda *_, **__: None),
        apply_eta_task=lambda *_: None,
        disable_rate_limits=True,
        task_buckets={},
        on_task_request=lambda *_: None,
        _limit_task=lambda *_: None,
        _limit_post_eta=lambda *_: None,
        controller=SimpleNamespace(state=SimpleNamespace(revoked=set())),
        pool=SimpleNamespace(apply_async=None),
        qos=SimpleNamespace(increment_eventually=lambda: None),
    )


@pytest.mark.parametrize(("retries", "events"), [(0, ["task-received"]), (4, [])])
def test_only_the_first_message_of_a_task_says_it_was_received(
    app: Celery, retries: int, events: list[str]
) -> None:
    eventer = Eventer()
    handle = step_strategy(app.tasks["test.poll"], app, consumer_for(eventer))
    message = TaskMessage(
        "test.poll", id="poll-1", args=["op-1"], retries=retries, eta="2030-01-01T00:00:00+00:00"
    )

    handle(message, None, lambda *_: None, lambda *_: None, [])

    assert eventer.sent == events


def test_a_reschedule_publishes_on_a_producer_of_its_own_app(app: Celery) -> None:
    other = Celery("reschedule-other", broker="memory://localhost/other", set_as_current=False)
    other.conf.task_default_queue = QUEUE

    @other.task(bind=True, name="test.poll")
    def other_poll(self: Task, operation_id: str) -> str:
        return reschedule(self, 5)

    run_in_worker(app)
    assert _producers.pool is app.producer_pool  # kept for the next poll of this app

    other_poll.push_request(
        id="poll-2",
        args=["op-2"],
        kwargs={},
        called_directly=False,
        delivery_info={"exchange": "", "routing_key": QUEUE},
    )
    try:
        other_poll.run("op-2")
    finally:
        other_poll.pop_request()

    assert _producers.pool is other.producer_pool
    # kombu's in-memory broker holds one set of queues per process, whatever the URL.
    assert sorted(m.headers["id"] for m in published(app)) == ["poll-1", "poll-2"]


def test_reschedules_in_threads_give_their_producers_back(app: Celery) -> None:
    # A threads pool: were each thread to keep a producer, the pool's ten would be gone after
    # ten threads, and every later publish of the process would wait for ever.
    def one_poll(index: int) -> None:
        run_in_worker(app, id=f"poll-{index}")

    for index in range(12):
        thread = threading.Thread(target=one_poll, args=(index,))
        thread.start()
        thread.join(timeout=5)
        assert not thread.is_alive(), f"reschedule {index} waited for a producer"

    assert len(published(app)) == 12
