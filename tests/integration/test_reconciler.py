"""The reconciler against real processes: a cycle whose broker messages are gone is resumed
by beat's reconcile task; with no worker at all it is failed and its remote job cancelled;
a healthy long-polling cycle is never touched."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from ktrdr_tasks import workflow
from ktrdr_tasks.reconciler import reconcile_cycles
from ktrdr_tasks.settings import get_settings
from ktrdr_tasks.store import get_store
from ktrdr_tasks.tasks import worker_services
from tests.integration.conftest import wait_for, wait_for_condition, write_strategy
from tests.support.fake_training_api import Behaviour, FakeTrainingApi
from tests.support.processes import BIN, RedisServer, free_port, start, start_worker

pytestmark = pytest.mark.integration

# kombu's Redis transport keeps the queue and the messages held by workers under these keys.
BROKER_KEYS = ("celery", "unacked", "unacked_index")


def _polling(op_id: str) -> str:
    wait_for_condition(
        lambda: workflow.status(op_id)["metadata"].get("training_status"), 30, "polling"
    )
    return workflow.status(op_id)["metadata"]["training_operation_id"]


def _lose_messages(redis_srv: RedisServer) -> None:
    """What a wiped or failed-over broker does: every queued and held message is gone."""
    redis_srv.client().delete(*BROKER_KEYS)


def test_cycle_whose_messages_were_lost_is_resumed_by_beat_and_completes(
    cycle_env: dict[str, str],
    redis_srv: RedisServer,
    fake_api: FakeTrainingApi,
    strategies_dir: Path,
    tmp_path: Path,
) -> None:
    lost = write_strategy(strategies_dir, "reconcile_lost")
    healthy = write_strategy(strategies_dir, "reconcile_healthy")
    fake_api.behaviours[lost] = Behaviour(polls=10)
    fake_api.behaviours[healthy] = Behaviour(polls=60)  # ~12 s of polling under beat
    env = {**cycle_env, "KTRDR_RESUME_AFTER_S": "2", "KTRDR_RECONCILE_INTERVAL_S": "1"}

    first = start_worker(env, tmp_path, name="doomed")
    try:
        op_id = workflow.trigger(strategy=lost).operation_id
        _polling(op_id)
    finally:
        first.kill()
    _lose_messages(redis_srv)

    second = start_worker(env, tmp_path, name="survivor")
    try:
        time.sleep(6)  # past the visibility timeout: nothing comes back on its own
        assert workflow.status(op_id)["status"] == "running"
        healthy_id = workflow.trigger(strategy=healthy).operation_id
        beat = start(
            "beat",
            [
                str(BIN / "celery"),
                "-A",
                "ktrdr_tasks",
                "beat",
                "--schedule",
                str(tmp_path / f"beat-{free_port()}"),
            ],
            tmp_path,
            env,
        )
        try:
            resumed_at = time.monotonic()
            record = wait_for(op_id, {"completed", "failed", "cancelled"}, timeout=60)
            took = time.monotonic() - resumed_at
            healthy_record = wait_for(healthy_id, {"completed", "failed", "cancelled"}, 60)
        finally:
            beat.stop()
    finally:
        second.stop()

    assert record["status"] == "completed", record["error_message"]
    books = get_store().get(op_id).bookkeeping
    assert books.resume_count == 1
    assert books.resumed_from_step == "POLL_TRAINING"
    assert fake_api.starts_for(op_id) == 1
    assert healthy_record["status"] == "completed", healthy_record["error_message"]
    assert get_store().get(healthy_id).bookkeeping.resume_count == 0
    print(f"lost cycle resumed by beat and completed {took:.1f} s after beat started")


def test_cycle_with_no_worker_is_failed_as_lost_and_its_remote_job_cancelled(
    cycle_env: dict[str, str],
    redis_srv: RedisServer,
    fake_api: FakeTrainingApi,
    strategies_dir: Path,
    tmp_path: Path,
) -> None:
    name = write_strategy(strategies_dir, "reconcile_no_worker")
    fake_api.behaviours[name] = Behaviour(outcome="never")
    worker = start_worker(cycle_env, tmp_path, name="only")
    try:
        op_id = workflow.trigger(strategy=name).operation_id
        training_id = _polling(op_id)
    finally:
        worker.kill()
    _lose_messages(redis_srv)
    heartbeat = workflow.status(op_id)["heartbeat_at"]
    time.sleep(1.5)

    settings = get_settings().model_copy(update={"resume_after_s": 1.0, "lost_after_s": 1.0})
    services = worker_services()
    report = reconcile_cycles(replace(services, settings=settings), time.time())

    assert report["failed"] == [op_id]
    record = workflow.status(op_id)
    assert record["status"] == "failed"
    assert record["error_message"].startswith(
        f"cycle lost: no worker progressed it since {heartbeat}"
    )
    assert fake_api.jobs[training_id].status == "cancelled"
    assert fake_api.calls("DELETE", f"/api/v1/operations/{training_id}")
