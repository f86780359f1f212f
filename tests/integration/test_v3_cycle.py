"""Designed v3 cycles on real parts: redis-server, a Celery worker and the reference training
host training today's ktrdr format, from design to gate verdict, with ktrdr's v3 model files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from ktrdr_tasks import workflow
from ktrdr_tasks.strategy_schema import load_strategy_file
from ktrdr_tasks.strategy_v3 import StrategyConfigV3, check_any_strategy, is_v3, resolve_features
from tests.integration.conftest import wait_for
from tests.support.processes import free_port, start_training_host, start_worker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def v3_stack(
    cycle_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    logs = tmp_path_factory.mktemp("v3-logs")
    port = free_port()
    env = {**cycle_env, "KTRDR_STRATEGY_FORMAT": "v3", "KTRDR_API_URL": f"http://127.0.0.1:{port}"}
    host = start_training_host(env, logs, port)
    worker = start_worker(env, logs)
    yield env
    worker.stop()
    host.stop()


def _model_dir(record: dict, models_dir: Path) -> Path:
    path = Path(record["metadata"]["model_path"])
    return path if path.is_absolute() else models_dir / path


def test_a_designed_v3_cycle_trains_on_the_reference_host_and_is_judged(
    v3_stack: dict[str, str], strategies_dir: Path
) -> None:
    record = wait_for(workflow.trigger().operation_id, {"completed", "failed"}, timeout=240)
    if record["status"] == "failed":  # a real verdict, after real training
        assert record["error_message"].startswith(
            ("Training gate failed:", "Backtest gate failed:")
        ), record
    assert record["metadata"]["gate"]["outcome"] in ("passed", "failed")
    name = record["metadata"]["strategy_name"]
    path = strategies_dir / f"{name}.yaml"
    document = load_strategy_file(path)
    assert is_v3(document)
    config = check_any_strategy(document, stem=name)
    assert isinstance(config, StrategyConfigV3)

    model_dir = _model_dir(record, Path(v3_stack["KTRDR_MODELS_DIR"]))
    meta = json.loads((model_dir / "metadata_v3.json").read_text())
    assert meta["strategy_name"] == name
    assert meta["resolved_features"] == [
        f.feature_id for f in resolve_features(config, config.timeframes)
    ]
    # Dates live in the file only for the chain: they reach the host in the start request.
    trained = json.loads((model_dir / "metadata.json").read_text())
    assert (trained["start_date"], trained["end_date"]) == (config.start_date, config.end_date)
    result = record["metadata"]["training_result"]
    assert result["training_metrics"]["epochs_completed"] == config.epochs
    print(
        f"v3 cycle {name}: {record['status']}, gate {record['metadata']['gate']['outcome']}, "
        f"test_accuracy {result['test_metrics']['test_accuracy']:.3f}"
    )


def test_a_designed_v3_cycle_completes_when_the_gate_is_bypassed(
    v3_stack: dict[str, str], strategies_dir: Path
) -> None:
    record = wait_for(
        workflow.trigger(bypass_gates=True).operation_id, {"completed", "failed"}, timeout=240
    )
    assert record["status"] == "completed", record["error_message"]
    # "bypassed" records a verdict the gate would have failed; a passing one stays "passed".
    assert record["metadata"]["gate"]["outcome"] in ("passed", "bypassed")
    assert is_v3(load_strategy_file(strategies_dir / f"{record['metadata']['strategy_name']}.yaml"))
    model_dir = _model_dir(record, Path(v3_stack["KTRDR_MODELS_DIR"]))
    assert (model_dir / "metadata_v3.json").is_file()


def test_the_multi_timeframe_v3_example_completes(v3_stack: dict[str, str]) -> None:
    op_id = workflow.trigger(strategy="eurusd_1h_4h_v3_multi", bypass_gates=True).operation_id
    record = wait_for(op_id, {"completed", "failed"}, timeout=240)
    assert record["status"] == "completed", record["error_message"]
    model_dir = _model_dir(record, Path(v3_stack["KTRDR_MODELS_DIR"]))
    meta = json.loads((model_dir / "metadata_v3.json").read_text())
    assert meta["training_timeframes"] == ["1h", "4h"]
    assert len(meta["resolved_features"]) == 14
    assert model_dir.name.startswith("1h_v")


def test_an_invalid_v3_strategy_is_400_with_ktrdrs_code_and_message(
    v3_stack: dict[str, str], strategies_dir: Path
) -> None:
    document = load_strategy_file(strategies_dir / "eurusd_1h_4h_v3_multi.yaml")
    document["name"] = "v3_bad_reference"
    document["fuzzy_sets"]["rsi_momentum"]["indicator"] = "rsi_99"
    (strategies_dir / "v3_bad_reference.yaml").write_text(yaml.safe_dump(document))
    answer = httpx.post(
        f"{v3_stack['KTRDR_API_URL']}/api/v1/trainings/start",
        json={"strategy_name": "v3_bad_reference", "symbols": ["EURUSD"], "timeframes": ["1h"]},
        timeout=10,
    )
    assert answer.status_code == 400
    detail = answer.json()["detail"]
    assert detail["error_code"] == "STRATEGY-V3ValidationFailed"
    assert detail["details"]["errors"] == [
        "fuzzy_sets.rsi_momentum.indicator: 'rsi_99' not found in indicators. "
        "Available indicators: adx_14, macd_12_26_9, roc_10, rsi_14"
    ]
