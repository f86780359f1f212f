"""Fuzzed training API answers driven through the real task bodies (fakeredis + MockTransport).

Whatever the service answers (odd statuses, missing fields, wrong types, non-JSON, huge
bodies, error codes), a task run ends in one of three ways: it reschedules (Celery `Retry`:
the job is still running or the error is transient), it returns (a verdict the next step
reads), or it stops (`CycleOver`) with the cycle in a final status and a message a person can
read. Nothing else escapes a task, and no cycle is left `running` by a run that stopped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import fakeredis
import httpx
import pytest
from celery.exceptions import Retry
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from ktrdr_tasks import tasks
from ktrdr_tasks.cycle import Step
from ktrdr_tasks.errors import CycleOver
from ktrdr_tasks.models import Operation, OperationStatus, Phase, iso, utc_now
from ktrdr_tasks.settings import Settings
from ktrdr_tasks.store import Store
from ktrdr_tasks.training_api import MAX_RESPONSE_BYTES, TrainingApiClient

OP_ID = "op_agent_research_20260101_000000_0000f022"
TRAINING_ID = "op_training_fuzz"
SETTINGS = Settings(poll_interval_s=0.01, poll_max_errors=3, api_url="http://trainer")
RUNS = 8

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
numbers = (
    st.none() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=5) | st.booleans()
)
flat_results = st.fixed_dictionaries(
    {},
    optional={
        "accuracy": numbers,
        "final_loss": numbers,
        "initial_loss": numbers,
        "model_path": st.none() | st.text(max_size=10) | st.integers(),
    },
)
nested_results = st.fixed_dictionaries(
    {},
    optional={
        "model_path": st.text(max_size=10),
        "training_metrics": st.fixed_dictionaries(
            {},
            optional={
                "final_train_loss": numbers,
                "history": st.fixed_dictionaries(
                    {}, optional={"train_loss": st.lists(numbers, max_size=3) | numbers}
                )
                | json_values,
            },
        )
        | json_values,
        "test_metrics": st.fixed_dictionaries(
            {}, optional={"test_accuracy": numbers, "test_loss": numbers}
        )
        | json_values,
    },
)
statuses = (
    st.sampled_from(
        ["pending", "running", "completed", "failed", "cancelled", "resuming", "COMPLETED", ""]
    )
    | json_values
)
operation_data = st.fixed_dictionaries(
    {},
    optional={
        "status": statuses,
        "operation_id": json_values,
        "progress": json_values
        | st.fixed_dictionaries(
            {},
            optional={
                "percentage": numbers,
                "current_step": json_values,
                "steps_completed": numbers,
                "steps_total": numbers,
                "context": json_values,
            },
        ),
        "error_message": json_values,
        "metrics": json_values,
        "result_summary": st.none() | flat_results | nested_results | json_values,
    },
)
poll_bodies = st.one_of(
    st.builds(lambda data: {"success": True, "data": data}, operation_data),
    operation_data,
    json_values,
)
answers = st.tuples(
    st.sampled_from([200, 200, 200, 200, 400, 404, 422, 500, 503]),
    st.one_of(poll_bodies.map(lambda b: json.dumps(b).encode()), st.binary(max_size=40)),
)


class Harness:
    """One cycle in fakeredis, a client on a MockTransport, and the task bodies to drive."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, respond: Callable) -> None:
        self.store = Store(fakeredis.FakeRedis(decode_responses=True), retention_s=3600)
        self.requests: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            if request.method == "DELETE":
                return httpx.Response(200, json={"success": True})
            return respond(request)

        client = TrainingApiClient("http://trainer", transport=httpx.MockTransport(handler))
        monkeypatch.setattr(tasks, "get_store", lambda: self.store)
        monkeypatch.setattr(tasks, "get_settings", lambda: SETTINGS)
        monkeypatch.setattr(tasks, "get_client", lambda: client)
        monkeypatch.setattr(tasks.cancel_training, "apply_async", lambda *a, **k: None)
        monkeypatch.setattr("tenacity.nap.time.sleep", lambda _: None)

    def cycle_at(self, step: Step, metadata: dict[str, Any]) -> None:
        now = iso(utc_now())
        self.store.create_operation(
            Operation(operation_id=OP_ID, created_at=now, heartbeat_at=now), limit=10
        )
        assert self.store.enter_step(OP_ID, step, Phase.TRAINING) == "ok"
        self.store.update(OP_ID, metadata=metadata)

    def run(self, task: Any) -> str:
        """Run a task body until it stops rescheduling; returns how the last run ended."""
        for _ in range(RUNS):
            try:
                task.run(OP_ID)
            except Retry:
                continue
            except CycleOver:
                return "stopped"
            return "returned"
        return "rescheduling"

    def operation(self) -> Operation:
        return self.store.get(OP_ID)


def _check_invariants(harness: Harness, ending: str) -> Operation:
    operation = harness.operation()
    if ending == "stopped":
        assert operation.status.is_terminal, "a stopped run left the cycle active"
    if operation.status is OperationStatus.FAILED:
        assert operation.error_message and len(operation.error_message) > 10
    if ending == "rescheduling":
        assert operation.status is OperationStatus.RUNNING
    return operation


FUZZ = hypothesis_settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(answer=answers)
def test_any_poll_answer_ends_in_a_verdict_or_a_clear_failure(
    answer: tuple[int, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    status, body = answer
    harness = Harness(monkeypatch, lambda request: httpx.Response(status, content=body))
    harness.cycle_at(
        Step.POLL_TRAINING, {"training_operation_id": TRAINING_ID, "strategy_name": "fuzz"}
    )

    ending = harness.run(tasks.poll_training)
    operation = _check_invariants(harness, ending)

    if ending == "returned":  # training completed: the gate judges what was stored
        assert operation.metadata.get("training_result")
        gate_ending = harness.run(tasks.training_gate)
        judged = _check_invariants(harness, gate_ending)
        assert gate_ending in ("returned", "stopped")
        if gate_ending == "stopped":
            assert judged.error_message.startswith("Training gate failed: ")
        else:
            assert judged.metadata["gate"]["passed"] is True
    if 400 <= status < 500:
        assert operation.status is OperationStatus.FAILED
        assert "trainer" in operation.error_message or "training" in operation.error_message


start_bodies = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "success": json_values,
            "task_id": json_values | st.text(max_size=30),
            "operation_id": json_values,
            "status": json_values,
            "message": json_values,
            "detail": json_values,
        },
    ),
    json_values,
)


@FUZZ
@given(
    status=st.sampled_from([200, 200, 200, 400, 404, 422, 500, 503]),
    body=st.one_of(start_bodies.map(lambda b: json.dumps(b).encode()), st.binary(max_size=40)),
)
def test_any_start_answer_stores_one_id_or_fails_clearly(
    status: int, body: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness = Harness(monkeypatch, lambda request: httpx.Response(status, content=body))
    harness.cycle_at(
        Step.START_TRAINING,
        {"strategy_name": "fuzz", "training_params": {"symbols": ["X"], "timeframes": ["1h"]}},
    )

    ending = harness.run(tasks.start_training)
    operation = _check_invariants(harness, ending)

    if ending == "returned":
        assert isinstance(operation.training_operation_id, str) and operation.training_operation_id
    else:
        assert operation.training_operation_id is None
    if status >= 500 and ending != "stopped":
        assert ending == "rescheduling"  # transient: retried within the error budget


def test_a_huge_answer_is_refused_and_fails_the_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    huge = (
        b'{"success": true, "data": {"status": "running", "x": "'
        + b"a" * (MAX_RESPONSE_BYTES + 10)
        + b'"}}'
    )
    harness = Harness(monkeypatch, lambda request: httpx.Response(200, content=huge))
    harness.cycle_at(
        Step.POLL_TRAINING, {"training_operation_id": TRAINING_ID, "strategy_name": "fuzz"}
    )

    assert harness.run(tasks.poll_training) == "stopped"
    operation = harness.operation()
    assert operation.status is OperationStatus.FAILED
    assert "MiB" in operation.error_message


def test_a_poll_that_keeps_running_reschedules_past_celerys_default_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    running = {"success": True, "data": {"status": "running", "progress": {"percentage": 5}}}
    harness = Harness(monkeypatch, lambda request: httpx.Response(200, json=running))
    harness.cycle_at(
        Step.POLL_TRAINING, {"training_operation_id": TRAINING_ID, "strategy_name": "fuzz"}
    )

    assert harness.run(tasks.poll_training) == "rescheduling"
    assert len(harness.requests) == RUNS
    assert harness.operation().status is OperationStatus.RUNNING
