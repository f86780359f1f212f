"""The whole cycle on real parts: redis-server, a Celery worker and the reference training host
really training a model, from design to gate verdict, with the model files on disk."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ktrdr_tasks import workflow
from tests.integration.conftest import wait_for
from tests.support.processes import Process, free_port, start_training_host, start_worker

pytestmark = pytest.mark.integration

MODEL_FILES = ("model.pt", "config.json", "metrics.json", "features.json", "metadata.json")


@pytest.fixture(scope="module")
def host_and_worker(
    cycle_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Process, Process]]:
    logs = tmp_path_factory.mktemp("e2e-logs")
    port = free_port()
    host = start_training_host(cycle_env, logs, port)
    worker = start_worker({**cycle_env, "KTRDR_API_URL": f"http://127.0.0.1:{port}"}, logs)
    yield host, worker
    worker.stop()
    host.stop()


def _assert_trained(record: dict, models_dir: Path) -> Path:
    meta = record["metadata"]
    result = meta["training_result"]
    assert 0 < result["test_metrics"]["test_accuracy"] <= 1
    assert result["training_metrics"]["history"]["train_loss"]
    model_dir = Path(meta["model_path"])
    if not model_dir.is_absolute():
        model_dir = models_dir / model_dir
    for name in MODEL_FILES:
        assert (model_dir / name).is_file(), f"{name} missing in {model_dir}"
    metadata = json.loads((model_dir / "metadata.json").read_text())
    assert (
        metadata["strategy_name"] == meta["strategy_name"]
        or metadata.get("strategy") == meta["strategy_name"]
    )
    return model_dir


def test_designed_strategy_trains_and_is_judged(
    host_and_worker: tuple[Process, Process], cycle_env: dict[str, str], strategies_dir: Path
) -> None:
    record = wait_for(workflow.trigger().operation_id, {"completed", "failed"}, timeout=180)

    # Both verdicts are real outcomes; a failure must be a gate's, after real training.
    if record["status"] == "failed":
        assert record["error_message"].startswith(
            ("Training gate failed:", "Backtest gate failed:")
        ), record
    name = record["metadata"]["strategy_name"]
    assert (strategies_dir / f"{name}.yaml").is_file()
    _assert_trained(record, Path(cycle_env["KTRDR_MODELS_DIR"]))
    assert record["metadata"]["gate"]["outcome"] in ("passed", "failed")


def test_example_strategy_completes_with_epoch_progress_and_model(
    host_and_worker: tuple[Process, Process], cycle_env: dict[str, str]
) -> None:
    op_id = workflow.trigger(strategy="eurusd_1h_willr_bbw_dist", bypass_gates=True).operation_id
    seen_epochs: set[int] = set()

    def watch() -> dict:
        record = workflow.status(op_id)
        epoch = (record["progress"].get("context") or {}).get("epoch")
        if epoch is not None:
            seen_epochs.add(epoch)
        return record

    record = watch()
    while record["status"] in ("pending", "running"):
        time.sleep(0.05)
        record = watch()
    assert record["status"] == "completed", record["error_message"]
    _assert_trained(record, Path(cycle_env["KTRDR_MODELS_DIR"]))
    assert seen_epochs, "no epoch progress was ever visible in the record"
