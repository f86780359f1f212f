"""The host's operations over HTTP (FastAPI's TestClient): bounded answers, busy 503, one finish."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.support.processes import REPO
from training_host.jobs import JobContext, JobRunner
from training_host.main import create_app
from training_host.operations import RECENT_EPOCHS, OperationRegistry
from training_host.settings import HostSettings

STRATEGY = "eurusd_1h_rsi_macd_adx"
START = {
    "strategy_name": STRATEGY,
    "symbols": ["EURUSD"],
    "timeframes": ["1h"],
    "start_date": "2017-05-01",
    "end_date": "2018-02-01",
}


def _epoch(index: int) -> dict[str, Any]:
    """One epoch row as the trainer reports it (~223 bytes of JSON)."""
    return {
        "epoch": index,
        "train_loss": 1.0 / index,
        "train_accuracy": 0.4 + 1e-7 * index,
        "val_loss": 1.1 / index,
        "val_accuracy": 0.5 - 1e-7 * index,
        "learning_rate": 0.001,
        "duration_seconds": 0.0123456789,
    }


def test_a_100000_epoch_training_answers_the_last_epochs_and_exact_steps() -> None:
    registry = OperationRegistry()
    op_id = registry.create({"strategy_name": "long"})[0].operation_id
    registry.mark_running(op_id)
    total = 100_000
    registry.update_progress(op_id, steps_total=total)
    started = time.perf_counter()
    for index in range(1, total + 1):
        registry.update_progress(op_id, steps_completed=index, epoch_metrics=_epoch(index))
    per_epoch_us = (time.perf_counter() - started) / total * 1e6

    info = registry.get(op_id)
    answer = json.dumps({"success": True, "data": info})

    assert info["progress"]["steps_completed"] == total
    assert info["progress"]["steps_total"] == total
    epochs = info["metrics"]["epochs"]
    assert [row["epoch"] for row in epochs] == list(range(total - RECENT_EPOCHS + 1, total + 1))
    assert info["metrics"]["epochs_omitted"] == total - RECENT_EPOCHS
    unbounded = len(json.dumps([_epoch(i) for i in range(1, total + 1)]))
    print(f"answer {len(answer)} B (all epochs: {unbounded} B); {per_epoch_us:.1f} us/epoch")
    assert len(answer) < 40_000 < 20_000_000 < unbounded


class CountingRegistry(OperationRegistry):
    def __init__(self) -> None:
        super().__init__()
        self.finishes: list[tuple[str, bool]] = []

    def finish(self, operation_id: str, status: str, **kwargs: Any) -> bool:
        changed = super().finish(operation_id, status, **kwargs)
        self.finishes.append((status, changed))
        return changed


@pytest.mark.parametrize("commits", [True, False], ids=["work commits", "work returns"])
def test_a_job_is_marked_completed_exactly_once(commits: bool) -> None:
    registry = CountingRegistry()
    runner = JobRunner(registry, concurrency=1)
    op_id = registry.create({})[0].operation_id

    def work(context: JobContext) -> dict[str, Any]:
        return context.commit(lambda: {"model_path": "m"}) if commits else {"model_path": "m"}

    runner.submit(op_id, work)
    runner.shutdown()

    assert registry.finishes == [("completed", True)]
    assert registry.get(op_id)["result_summary"] == {"model_path": "m"}


@pytest.fixture
def host_settings(tmp_path: Path) -> HostSettings:
    strategies = tmp_path / "strategies"
    strategies.mkdir()
    shutil.copy(REPO / "strategies" / f"{STRATEGY}.yaml", strategies)
    return HostSettings(
        strategies_dir=strategies, models_dir=tmp_path / "models", concurrency=1, busy="503"
    )


@pytest.fixture
def busy_host(host_settings: HostSettings) -> Iterator[tuple[TestClient, threading.Event]]:
    """A host whose only worker is taken by a job that runs until the event is set."""
    app = create_app(host_settings)
    release = threading.Event()
    with TestClient(app) as client:
        blocker = app.state.registry.create({"strategy_name": "blocker"})[0].operation_id
        app.state.runner.submit(blocker, lambda context: release.wait(30) and {})
        yield client, release
        release.set()


def test_busy_503_refuses_a_start_in_todays_ktrdr_shape(
    busy_host: tuple[TestClient, threading.Event],
) -> None:
    client, release = busy_host

    response = client.post("/api/v1/trainings/start", json={**START, "task_id": "cycle-1"})

    assert response.status_code == 503
    assert response.json() == {
        "detail": {
            "error": "No training workers available",
            "hint": "Every training worker is busy; retry in a few seconds",
        }
    }
    release.set()
    deadline = time.monotonic() + 10
    while (
        answer := client.post("/api/v1/trainings/start", json={**START, "task_id": "cycle-1"})
    ).status_code == 503:
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.05)
    assert answer.status_code == 200 and answer.json()["task_id"] == "cycle-1"


def test_busy_503_never_refuses_a_repeated_task_id(host_settings: HostSettings) -> None:
    app = create_app(host_settings)
    release = threading.Event()
    with TestClient(app) as client:
        # The start of cycle-2 was accepted earlier and is what keeps the only worker busy.
        metadata = {"strategy_name": STRATEGY, "symbols": ["EURUSD"], "timeframes": ["1h"]}
        app.state.registry.create(metadata, task_id="cycle-2")
        app.state.runner.submit("cycle-2", lambda context: release.wait(30) and {})

        try:
            again = client.post("/api/v1/trainings/start", json={**START, "task_id": "cycle-2"})
            other = client.post("/api/v1/trainings/start", json={**START, "task_id": "cycle-3"})
        finally:
            release.set()

    assert again.status_code == 200 and again.json()["task_id"] == "cycle-2"
    assert other.status_code == 503


def test_without_busy_503_a_start_waits_as_pending(
    host_settings: HostSettings,
) -> None:
    app = create_app(host_settings.model_copy(update={"busy": "queue"}))
    release = threading.Event()
    with TestClient(app) as client:
        blocker = app.state.registry.create({})[0].operation_id
        app.state.runner.submit(blocker, lambda context: release.wait(30) and {})
        response = client.post("/api/v1/trainings/start", json=START)
        assert response.status_code == 200
        info = client.get(f"/api/v1/operations/{response.json()['task_id']}").json()["data"]
        assert info["status"] == "pending"
        release.set()


def test_the_task_id_is_the_operation_id_so_a_lost_answer_is_found(
    host_settings: HostSettings,
) -> None:
    app = create_app(host_settings.model_copy(update={"busy": "queue"}))
    with TestClient(app) as client:
        client.post("/api/v1/trainings/start", json={**START, "task_id": "op_agent_research_1"})
        found = client.get("/api/v1/operations/op_agent_research_1")
        assert found.status_code == 200
        assert found.json()["data"]["metadata"]["task_id"] == "op_agent_research_1"
        client.delete("/api/v1/operations/op_agent_research_1")
