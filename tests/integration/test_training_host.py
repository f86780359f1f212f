"""The reference training host over real HTTP: a uvicorn subprocess with temporary dirs.

What a client of ktrdr's training API sees: start -> running with rising epochs ->
completed with every model file; cancel; idempotent task_id; ktrdr's error shapes; and
every example strategy in `strategies/` trains to completion.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from ktrdr_tasks.strategy_schema import load_strategy_file
from ktrdr_tasks.strategy_v3 import check_any_strategy
from tests.support.processes import REPO, Process, free_port, start_training_host

pytestmark = pytest.mark.integration

EXAMPLES = sorted(path.stem for path in (REPO / "strategies").glob("*.yaml"))
BASE = "eurusd_1h_rsi_macd_adx"
EURUSD_DATES = {"start_date": "2017-05-01", "end_date": "2018-02-01"}
MODEL_FILES = {"model.pt", "config.json", "metrics.json", "features.json", "metadata.json"}


def _variant(directory: Path, name: str, **training: Any) -> None:
    document = yaml.safe_load((REPO / "strategies" / f"{BASE}.yaml").read_text())
    document["name"] = name
    document["model"]["training"].update(training)
    (directory / f"{name}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))


class Host:
    """The running host: an httpx client and the directories it reads and writes."""

    def __init__(self, process: Process, url: str, models: Path) -> None:
        self.process, self.url, self.models = process, url, models
        self.http = httpx.Client(base_url=f"{url}/api/v1", timeout=10)

    def start(self, strategy: str, **body: Any) -> httpx.Response:
        payload = {"strategy_name": strategy, "symbols": ["EURUSD"], "timeframes": ["1h"]}
        return self.http.post("/trainings/start", json={**payload, **EURUSD_DATES, **body})

    def started(self, strategy: str, **body: Any) -> str:
        response = self.start(strategy, **body)
        assert response.status_code == 200, response.text
        return str(response.json()["task_id"])

    def info(self, operation_id: str) -> dict[str, Any]:
        response = self.http.get(f"/operations/{operation_id}")
        assert response.status_code == 200, response.text
        return response.json()["data"]

    def wait(self, operation_id: str, statuses: set[str], timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (info := self.info(operation_id))["status"] not in statuses:
            assert time.monotonic() < deadline, f"{info}\n{self.process.log()[-3000:]}"
            time.sleep(0.05)
        return info


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    root = tmp_path_factory.mktemp("host")
    strategies, models, data = root / "strategies", root / "models", root / "data"
    for directory in (strategies, models, data):
        directory.mkdir()
    for path in (REPO / "strategies").glob("*.yaml"):
        shutil.copy(path, strategies / path.name)
    _variant(strategies, "it_progress", epochs=25)
    _variant(strategies, "it_slow", epochs=400)
    document = yaml.safe_load((REPO / "strategies" / f"{BASE}.yaml").read_text())
    document["name"] = "it_one_class"
    document["training"]["labels"]["zigzag_threshold"] = 0.5
    (strategies / "it_one_class.yaml").write_text(yaml.safe_dump(document))
    del document["decisions"]
    document["fuzzy_sets"]["rsi_14"]["low"]["type"] = "triangle"
    (strategies / "it_invalid.yaml").write_text(yaml.safe_dump(document))
    port = free_port()
    env = {
        "KTRDR_STRATEGIES_DIR": str(strategies),
        "KTRDR_MODELS_DIR": str(models),
        "KTRDR_DATA_DIR": str(data),
        "KTRDR_TRAINING_CONCURRENCY": "1",
        "KTRDR_HOST_MAX_BODY_BYTES": "4096",
    }
    process = start_training_host(env, root / "logs", port)
    instance = Host(process, f"http://127.0.0.1:{port}", models)
    yield instance
    instance.http.close()
    process.stop()


def test_health_and_openapi_docs(host: Host) -> None:
    health = host.http.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert host.http.get("/docs").status_code == 200
    paths = host.http.get("/openapi.json").json()["paths"]
    assert {"/api/v1/trainings/start", "/api/v1/operations/{operation_id}"} <= set(paths)


def test_training_reports_rising_epochs_then_completes_with_model_files(host: Host) -> None:
    response = host.start("it_progress")
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True and body["status"] == "training_started"
    assert body["symbols"] == ["EURUSD"] and body["strategy_name"] == "it_progress"
    operation_id = body["task_id"]
    assert operation_id.startswith("op_training_")
    epochs_seen: list[int] = []
    deadline = time.monotonic() + 60
    while (info := host.info(operation_id))["status"] in {"pending", "running"}:
        assert time.monotonic() < deadline
        if info["status"] == "running" and info["progress"]["steps_completed"]:
            epochs_seen.append(info["progress"]["steps_completed"])
            context = info["progress"]["context"]
            if info["progress"]["current_step"] != "Saving model":
                assert info["progress"]["current_step"] == f"Epoch {context['epoch_index']}/25"
            assert {"train_loss", "val_loss", "val_accuracy", "total_epochs"} <= set(context)
        time.sleep(0.02)
    assert info["status"] == "completed", info["error_message"]
    assert len(set(epochs_seen)) >= 2 and epochs_seen == sorted(epochs_seen)
    assert info["progress"]["percentage"] == 100
    assert [row["epoch"] for row in info["metrics"]["epochs"]] == list(range(1, 26))
    summary = info["result_summary"]
    training, test = summary["training_metrics"], summary["test_metrics"]
    assert training["epochs_completed"] == 25 and len(training["history"]["train_loss"]) == 25
    assert {"final_train_loss", "final_val_loss", "final_val_accuracy"} <= set(training)
    assert {"test_accuracy", "test_loss", "precision", "recall", "f1_score"} <= set(test)
    assert 0 < test["test_accuracy"] <= 1 and test["test_loss"] > 0
    assert {"model_info", "data_summary"} <= set(summary)
    model_dir = Path(summary["model_path"])
    assert model_dir == host.models / "it_progress" / "1h_v1"
    assert {path.name for path in model_dir.iterdir()} == MODEL_FILES
    latest = host.models / "it_progress" / "1h_latest"
    assert latest.is_symlink() and latest.readlink() == Path("1h_v1")
    features = json.loads((model_dir / "features.json").read_text())["feature_names"]
    assert len(features) == 16 and features[0] == "1h_adx_14_strong"
    metadata = json.loads((model_dir / "metadata.json").read_text())
    assert metadata["symbols"] == ["EURUSD"] and metadata["feature_names"] == features
    assert {"torch", "python", "ktrdr_tasks"} <= set(metadata["versions"])
    assert sum(metadata["label_distribution"].values()) == summary["data_summary"]["total_samples"]
    assert json.loads((model_dir / "config.json").read_text())["name"] == "it_progress"


def test_cancel_stops_running_job_within_an_epoch_and_pending_at_once(host: Host) -> None:
    running = host.started("it_slow")
    host.wait(running, {"running"})
    deadline = time.monotonic() + 30
    while not host.info(running)["progress"]["steps_completed"]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    pending = host.started("it_progress")
    assert host.info(pending)["status"] == "pending"
    cancelled = host.http.request("DELETE", f"/operations/{pending}", json={"reason": "test"})
    assert cancelled.status_code == 200 and cancelled.json()["data"]["status"] == "cancelled"
    assert host.info(pending)["status"] == "cancelled"
    response = host.http.delete(f"/operations/{running}")
    assert response.status_code == 200
    info = host.info(running)
    assert info["status"] == "cancelled" and info["progress"]["steps_completed"] < 400
    # The slot frees within an epoch (~0.1 s here): the next job starts running promptly.
    follower = host.started("it_progress")
    host.wait(follower, {"running", "completed"}, timeout=3)
    host.wait(follower, {"completed"})
    assert not (host.models / "it_slow").exists() or not any((host.models / "it_slow").iterdir())
    again = host.http.delete(f"/operations/{running}")
    assert again.status_code == 400 and "cannot be cancelled" in again.json()["detail"]


def test_same_task_id_twice_gives_one_operation(host: Host) -> None:
    first = host.started(BASE, task_id="cycle-42")
    second = host.started(BASE, task_id="cycle-42")
    assert first == second
    host.wait(first, {"completed"})
    listed = host.http.get("/operations", params={"limit": 1000}).json()["data"]
    assert sum(1 for row in listed if row["operation_id"] == first) == 1
    assert sum(1 for row in listed if row["strategy_name"] == BASE) == 1


def test_unknown_strategy_and_bad_name_are_400(host: Host) -> None:
    missing = host.start("no_such_strategy")
    assert missing.status_code == 400
    assert missing.json()["detail"].startswith("Strategy file not found: no_such_strategy.yaml")
    assert "searched:" in missing.json()["detail"]
    bad = host.start("../etc/passwd")
    assert bad.status_code == 400
    assert "alphanumerics, dashes, or underscores" in bad.json()["detail"]


def test_invalid_strategy_is_400_with_a_detail_object(host: Host) -> None:
    response = host.start("it_invalid")
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert {"message", "error_code", "details", "suggestion"} <= set(detail)
    errors = " | ".join(detail["details"]["errors"])
    assert "decisions" in errors


def _alias_bomb(levels: int = 7) -> str:
    """9 ** levels leaves in a few hundred bytes."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("it_bomb", _alias_bomb()),
        ("it_deep", "a: " + "[" * 600 + "]" * 600 + "\n"),
        ("it_huge", "noise:\n" + "- {a: 1, b: two}\n" * 600_000),
    ],
)
def test_a_hostile_strategy_file_is_400_unreadable_and_the_host_stays_up(
    host: Host, name: str, text: str
) -> None:
    (host.models.parent / "strategies" / f"{name}.yaml").write_text(text)
    started = time.monotonic()
    response = host.start(name)
    assert time.monotonic() - started < 2
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert detail["error_code"] == "STRATEGY-Unreadable"
    assert "limit for strategy files" in detail["details"]["errors"][0]
    assert host.http.get("/health").status_code == 200


def test_bad_body_is_422_in_ktrdrs_envelope(host: Host) -> None:
    response = host.http.post("/trainings/start", json={"strategy_name": BASE, "symbols": []})
    assert response.status_code == 422
    body = response.json()
    assert body["success"] is False
    assert {"code", "message", "details"} <= set(body["error"]) and body["error"]["details"]


def test_oversized_body_is_413(host: Host) -> None:
    response = host.start(BASE, task_id="x" * 5000)
    assert response.status_code == 413


def test_unknown_operation_is_404(host: Host) -> None:
    for method in ("GET", "DELETE"):
        response = host.http.request(method, "/operations/op_training_20240101_000000_deadbeef")
        assert response.status_code == 404
        assert response.json() == {
            "detail": "Operation not found: op_training_20240101_000000_deadbeef"
        }


def test_no_data_answers_200_and_fails_at_once(host: Host) -> None:
    response = host.start(BASE, start_date=None, end_date=None)
    assert response.status_code == 200
    info = host.info(response.json()["task_id"])
    assert info["status"] == "failed"
    assert info["error_message"].startswith("No data found for EURUSD 1h")
    assert "2017-04-19" in info["error_message"]
    unknown = host.info(host.started(BASE, symbols=["GBPUSD"]))
    assert unknown["status"] == "failed" and "GOOG 1d" in unknown["error_message"]


def test_single_class_labels_fail_with_a_fix(host: Host) -> None:
    info = host.wait(host.started("it_one_class"), {"completed", "failed"})
    assert info["status"] == "failed"
    assert "zigzag_threshold" in info["error_message"]
    assert not (host.models / "it_one_class").exists()


def test_list_filters_and_counts(host: Host) -> None:
    failed = host.http.get("/operations", params={"status": "failed"}).json()
    assert failed["success"] is True and failed["data"]
    assert all(row["status"] == "failed" for row in failed["data"])
    assert failed["total_count"] == len(failed["data"])
    everything = host.http.get("/operations", params={"operation_type": "training"}).json()
    created = [row["created_at"] for row in everything["data"]]
    assert created == sorted(created, reverse=True)
    limited = host.http.get("/operations", params={"limit": 2}).json()
    assert len(limited["data"]) == 2 and limited["total_count"] == everything["total_count"]
    active = host.http.get("/operations", params={"active_only": True}).json()
    assert active["data"] == [] and active["active_count"] == 0


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_example_strategy_trains_to_completion(host: Host, name: str) -> None:
    config = check_any_strategy(load_strategy_file(REPO / "strategies" / f"{name}.yaml"), name)
    operation_id = host.started(
        name,
        symbols=config.symbols,
        timeframes=config.timeframes,
        start_date=config.start_date or EURUSD_DATES["start_date"],
        end_date=config.end_date or EURUSD_DATES["end_date"],
    )
    info = host.wait(operation_id, {"completed", "failed", "cancelled"}, timeout=120)
    assert info["status"] == "completed", info["error_message"]
    test = info["result_summary"]["test_metrics"]
    print(f"{name}: test_accuracy={test['test_accuracy']:.3f} test_loss={test['test_loss']:.3f}")
    v3_files = {"metadata_v3.json"} if config.format == "v3" else set()
    assert {path.name for path in Path(info["result_summary"]["model_path"]).iterdir()} == (
        MODEL_FILES | v3_files
    )
