"""A worker SIGKILLed mid-cycle is replaced without losing or duplicating the cycle."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ktrdr_tasks import workflow
from tests.integration.conftest import wait_for, wait_for_condition, write_strategy
from tests.support.fake_training_api import Behaviour, FakeTrainingApi
from tests.support.processes import start_worker

pytestmark = pytest.mark.integration


def test_worker_killed_while_polling_resumes_on_a_new_worker_with_one_start(
    cycle_env: dict[str, str],
    fake_api: FakeTrainingApi,
    strategies_dir: Path,
    tmp_path: Path,
) -> None:
    name = write_strategy(strategies_dir, "crash_while_polling")
    fake_api.behaviours[name] = Behaviour(polls=25)
    first = start_worker(cycle_env, tmp_path, name="doomed")
    try:
        op_id = workflow.trigger(strategy=name).operation_id
        wait_for_condition(
            lambda: workflow.status(op_id)["metadata"].get("training_operation_id"),
            30,
            "training to start",
        )
        training_id = workflow.status(op_id)["metadata"]["training_operation_id"]
        polls = f"/api/v1/operations/{training_id}"
        wait_for_condition(lambda: len(fake_api.calls("GET", polls)) >= 3, 30, "polling")
    finally:
        first.kill()
    polls_at_kill = len(fake_api.calls("GET", polls))
    killed_at = time.monotonic()

    second = start_worker(cycle_env, tmp_path, name="replacement")
    try:
        record = wait_for(op_id, {"completed", "failed", "cancelled"}, timeout=90)
    finally:
        second.stop()

    assert record["status"] == "completed", record["error_message"]
    assert fake_api.starts_for(op_id) == 1
    assert len(fake_api.calls("GET", polls)) > polls_at_kill
    print(f"resumed and completed {time.monotonic() - killed_at:.1f} s after the kill")
