"""Unit-test stand-ins around the steps: a recorded training API, services built from it, and
cycles at any step. Nothing is monkeypatched: the step functions and the runner take these."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from ktrdr_tasks.cycle import Services
from ktrdr_tasks.models import Operation, Phase, iso, utc_now
from ktrdr_tasks.settings import Settings
from ktrdr_tasks.store import Store
from ktrdr_tasks.training_api import TrainingApiClient

CYCLE_ID = "op_agent_research_20260101_000000_0000aaaa"
TRAINING_ID = "op_training_20260101_000000_deadbeef"


Answer = Callable[[httpx.Request], httpx.Response]


@dataclass
class Remote:
    """What the training API received, and whether it is reachable.

    `answers` maps "METHOD /path" to a function giving the answer; a DELETE of an operation
    is a successful cancel unless an answer says otherwise; anything else is a 404.
    """

    up: bool = True
    deletes: list[str] = field(default_factory=list)
    queued_cancels: list[tuple] = field(default_factory=list)
    requests: list[httpx.Request] = field(default_factory=list)
    answers: dict[str, Answer] = field(default_factory=dict)

    def handler(self, request: httpx.Request) -> httpx.Response:
        if not self.up:
            raise httpx.ConnectError("connection refused", request=request)
        self.requests.append(request)
        answer = self.answers.get(f"{request.method} {request.url.path}")
        if answer is not None:
            response = answer(request)
            if request.method == "DELETE" and response.status_code == 200:
                self.deletes.append(request.url.path.rsplit("/", 1)[-1])
            return response
        if request.method == "DELETE":
            self.deletes.append(request.url.path.rsplit("/", 1)[-1])
            return httpx.Response(200, json={"success": True})
        return httpx.Response(404, json={"detail": "Not Found"})

    def client(self) -> TrainingApiClient:
        return TrainingApiClient("http://trainer", transport=httpx.MockTransport(self.handler))

    def queue_cancel(self, training_id: str, reason: str) -> None:
        """Stands in for handing a cancel to the retrying `ktrdr.cancel_training` task."""
        self.queued_cancels.append((training_id, reason))

    def services(self, store: Store, settings: Settings | None = None) -> Services:
        return Services(store, self.client(), settings or Settings(), self.queue_cancel)


def make_cycle(
    store: Store,
    op_id: str = CYCLE_ID,
    step: int = 0,
    training_id: str | None = None,
    metadata: dict | None = None,
    bookkeeping: dict | None = None,
) -> Operation:
    """An active cycle at `step`; its heartbeat is 'now' (the tests move the clock instead)."""
    now = iso(utc_now())
    store.create_operation(
        Operation(operation_id=op_id, created_at=now, heartbeat_at=now, task_ids=["t0"]),
        limit=100,
    )
    if step:
        assert store.enter_step(op_id, step, Phase.TRAINING) == "ok"
    extra = dict(metadata or {})
    if training_id:
        extra["training_operation_id"] = training_id
    if extra or bookkeeping:
        assert store.update(op_id, metadata=extra, bookkeeping=bookkeeping)
    return store.get(op_id)
