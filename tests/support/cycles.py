"""Unit-test stand-ins around the step tasks: a recorded training API and cycles at any step."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from ktrdr_tasks import tasks
from ktrdr_tasks.models import Operation, Phase, iso, utc_now
from ktrdr_tasks.store import Store
from ktrdr_tasks.training_api import TrainingApiClient

CYCLE_ID = "op_agent_research_20260101_000000_0000aaaa"
TRAINING_ID = "op_training_20260101_000000_deadbeef"


@dataclass
class Remote:
    """What the training API received, and whether it is reachable."""

    up: bool = True
    deletes: list[str] = field(default_factory=list)
    queued_cancels: list[tuple] = field(default_factory=list)

    def handler(self, request: httpx.Request) -> httpx.Response:
        if not self.up:
            raise httpx.ConnectError("connection refused", request=request)
        if request.method == "DELETE":
            self.deletes.append(request.url.path.rsplit("/", 1)[-1])
            return httpx.Response(200, json={"success": True})
        return httpx.Response(404, json={"detail": "Not Found"})


def stand_in_training_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Remote]:
    """Route the tasks' training client and queued cancels to a recorded `Remote`."""
    remote = Remote()
    client = TrainingApiClient("http://trainer", transport=httpx.MockTransport(remote.handler))
    monkeypatch.setattr(tasks, "get_client", lambda: client)
    monkeypatch.setattr(
        tasks.cancel_training,
        "apply_async",
        lambda args=(), **_: remote.queued_cancels.append(tuple(args)),
    )
    monkeypatch.setattr("tenacity.nap.time.sleep", lambda _: None)
    yield remote
    client.close()


def make_cycle(
    store: Store,
    op_id: str = CYCLE_ID,
    step: int = 0,
    training_id: str | None = None,
    metadata: dict | None = None,
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
    if extra:
        assert store.update(op_id, metadata=extra)
    return store.get(op_id)
