"""Operations registry, job pool and model files: ids, idempotency, final statuses, versions."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from training_host import artifacts
from training_host.errors import TrainingFailed
from training_host.jobs import JobContext, JobRunner
from training_host.operations import OperationRegistry


def test_operation_ids_have_ktrdrs_format() -> None:
    operation, created = OperationRegistry().create({"strategy_name": "s"})
    assert created
    assert re.fullmatch(r"op_training_\d{8}_\d{6}_[0-9a-f]{8}", operation.operation_id)


def test_same_task_id_gives_the_same_operation() -> None:
    registry = OperationRegistry()
    first, _ = registry.create({}, task_id="cycle-1")
    second, created = registry.create({}, task_id="cycle-1")
    assert second.operation_id == first.operation_id and not created


def test_terminal_status_is_final_and_progress_never_goes_back() -> None:
    registry = OperationRegistry()
    operation, _ = registry.create({})
    op_id = operation.operation_id
    registry.mark_running(op_id)
    registry.update_progress(op_id, percentage=50)
    registry.update_progress(op_id, percentage=40)
    assert registry.get(op_id)["progress"]["percentage"] == 50
    assert registry.finish(op_id, "cancelled")
    assert not registry.finish(op_id, "completed")
    assert registry.get(op_id)["status"] == "cancelled"


def test_list_is_newest_first_with_filters() -> None:
    registry = OperationRegistry()
    ids = [registry.create({})[0].operation_id for _ in range(3)]
    registry.finish(ids[0], "failed")
    rows, total, active = registry.list()
    assert [row["operation_id"] for row in rows] == ids[::-1]
    assert (total, active) == (3, 2)
    rows, total, _ = registry.list(status="failed")
    assert [row["operation_id"] for row in rows] == [ids[0]] and total == 1
    rows, total, _ = registry.list(active_only=True, limit=1)
    assert len(rows) == 1 and total == 2


def _wait(registry: OperationRegistry, op_id: str, status: str) -> None:
    deadline = time.monotonic() + 5
    while registry.status(op_id) != status:
        assert time.monotonic() < deadline, registry.get(op_id)
        time.sleep(0.01)


def test_pool_runs_at_most_concurrency_and_cancels_pending_at_once() -> None:
    registry = OperationRegistry()
    runner = JobRunner(registry, concurrency=1)
    release = threading.Event()

    def blocking(context: JobContext) -> dict[str, object]:
        while not release.is_set():
            context.check_cancel()
            time.sleep(0.01)
        return context.commit(lambda: {"ok": True})

    first = registry.create({})[0].operation_id
    second = registry.create({})[0].operation_id
    runner.submit(first, blocking)
    runner.submit(second, blocking)
    _wait(registry, first, "running")
    assert registry.status(second) == "pending"
    assert runner.cancel(second)
    assert registry.status(second) == "cancelled"
    release.set()
    _wait(registry, first, "completed")
    assert registry.get(first)["result_summary"] == {"ok": True}
    assert not runner.cancel(first)
    runner.shutdown()


def test_running_job_stops_on_cancel_and_commits_nothing() -> None:
    registry = OperationRegistry()
    runner = JobRunner(registry, concurrency=1)
    saved: list[bool] = []

    def work(context: JobContext) -> dict[str, object]:
        while not context.cancelled():
            time.sleep(0.01)
        return context.commit(lambda: saved.append(True) or {})

    op_id = registry.create({})[0].operation_id
    runner.submit(op_id, work)
    _wait(registry, op_id, "running")
    assert runner.cancel(op_id, "test")
    time.sleep(0.1)
    assert registry.status(op_id) == "cancelled" and saved == []
    runner.shutdown()


def test_failed_job_keeps_its_message() -> None:
    registry = OperationRegistry()
    runner = JobRunner(registry, concurrency=1)

    def work(context: JobContext) -> dict[str, object]:
        raise TrainingFailed("lower the threshold")

    op_id = registry.create({})[0].operation_id
    runner.submit(op_id, work)
    _wait(registry, op_id, "failed")
    assert registry.get(op_id)["error_message"] == "lower the threshold"
    runner.shutdown()


def test_model_versions_count_up_and_latest_links_the_newest(tmp_path: Path) -> None:
    first = artifacts.save_model(tmp_path, "s", "1h", state={"w": 1}, files={"a.json": {}})
    second = artifacts.save_model(tmp_path, "s", "1h", state={"w": 2}, files={"a.json": {}})
    assert (first.name, second.name) == ("1h_v1", "1h_v2")
    latest = tmp_path / "s" / "1h_latest"
    assert latest.is_symlink() and latest.readlink() == Path("1h_v2")
    assert sorted(p.name for p in second.iterdir()) == ["a.json", "model.pt"]
    assert not [p for p in (tmp_path / "s").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("existing", [["1h_v3", "4h_v9"], []])
def test_next_version_is_highest_plus_one(tmp_path: Path, existing: list[str]) -> None:
    for name in existing:
        (tmp_path / name).mkdir()
    assert artifacts.next_version(tmp_path, "1h") == (4 if existing else 1)
