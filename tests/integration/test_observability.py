"""What an operator sees of real cycles: JSON log lines with the cycle's context, and the
worker's and the training host's `/metrics` moving as cycles start, poll, pass and fail."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ktrdr_tasks import workflow
from tests.integration.conftest import wait_for, wait_for_condition, write_strategy
from tests.support.fake_training_api import POOR_RESULT, Behaviour, FakeTrainingApi
from tests.support.processes import Process, free_port, start_training_host, start_worker

pytestmark = pytest.mark.integration

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")


def scrape(url: str) -> dict[str, float]:
    """`name{labels}` -> value, for every sample of a Prometheus text page."""
    samples: dict[str, float] = {}
    for line in httpx.get(url, timeout=5).raise_for_status().text.splitlines():
        match = SAMPLE.match(line)
        if match:
            samples[f"{match.group(1)}{match.group(2) or ''}"] = float(match.group(3))
    return samples


def json_lines(process: Process) -> list[dict[str, Any]]:
    """The log's JSON objects (Celery's start-up banner is printed, not logged)."""
    return [json.loads(line) for line in process.log().splitlines() if line.startswith("{")]


@pytest.fixture
def observed_worker(cycle_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Process, str]]:
    port = free_port()
    env = {**cycle_env, "KTRDR_LOG_FORMAT": "json", "KTRDR_METRICS_PORT": str(port)}
    worker = start_worker(env, tmp_path, name="observed")
    url = f"http://127.0.0.1:{port}/metrics"
    wait_for_condition(lambda: _up(url), 20, "worker /metrics")
    yield worker, url
    worker.stop()


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_two_cycles_move_the_worker_metrics_and_every_log_line_names_its_cycle(
    observed_worker: tuple[Process, str], fake_api: FakeTrainingApi, strategies_dir: Path
) -> None:
    worker, url = observed_worker
    good = write_strategy(strategies_dir, "obs_passes")
    poor = write_strategy(strategies_dir, "obs_fails_gate")
    fake_api.behaviours[good] = Behaviour(polls=8)
    fake_api.behaviours[poor] = Behaviour(polls=3, result=POOR_RESULT)
    before = scrape(url)

    passing = workflow.trigger(strategy=good).operation_id
    wait_for_condition(
        lambda: workflow.status(passing)["phase"] == "training", 30, "the first poll"
    )
    during = scrape(url)
    failing = workflow.trigger(strategy=poor).operation_id
    assert wait_for(passing, {"completed", "failed"})["status"] == "completed"
    assert wait_for(failing, {"completed", "failed"})["status"] == "failed"
    after = scrape(url)

    def moved(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert during["ktrdr_active_cycles"] >= 1
    assert after["ktrdr_active_cycles"] <= during["ktrdr_active_cycles"] - 1
    assert moved("ktrdr_cycles_started_total") == 2
    assert moved('ktrdr_cycles_finished_total{phase="done",verdict="passed"}') == 1
    assert moved('ktrdr_cycles_finished_total{phase="training",verdict="gate_failed"}') == 1
    assert (
        moved(
            'ktrdr_gate_verdicts_total{gate="training",outcome="failed",'
            'reason="accuracy_below_threshold"}'
        )
        == 1
    )
    assert moved('ktrdr_gate_verdicts_total{gate="training",outcome="passed",reason="none"}') == 1
    assert moved("ktrdr_poll_lag_seconds_count") >= 8  # every poll after a countdown
    assert moved('ktrdr_training_duration_seconds_count{outcome="completed"}') == 2

    lines = json_lines(worker)
    for operation_id in (passing, failing):
        mine = [line for line in lines if line["operation_id"] == operation_id]
        # Every line that speaks of the cycle carries its id as a field too.
        assert all(
            line["operation_id"] == operation_id
            for line in lines
            if operation_id in line["message"]
        )
        assert {line["step"] for line in mine} >= {
            "design",
            "load_training_params",
            "start_training",
            "poll_training",
            "training_gate",
        }
        training_id = workflow.status(operation_id)["metadata"]["training_operation_id"]
        polls = [line for line in mine if line["step"] == "poll_training"]
        assert polls and all(line["training_id"] == training_id for line in polls)
        assert {"timestamp", "level", "logger", "message"} <= set(mine[0])


@pytest.fixture
def real_host(cycle_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Process, str]]:
    port = free_port()
    host = start_training_host({**cycle_env, "KTRDR_LOG_FORMAT": "json"}, tmp_path, port)
    yield host, f"http://127.0.0.1:{port}"
    host.stop()


def test_a_real_cycle_moves_the_host_metrics_and_fails_at_a_strict_gate(
    real_host: tuple[Process, str], cycle_env: dict[str, str], tmp_path: Path
) -> None:
    host, host_url = real_host
    metrics_port = free_port()
    worker = start_worker(
        {
            **cycle_env,
            "KTRDR_API_URL": host_url,
            "KTRDR_LOG_FORMAT": "json",
            "KTRDR_METRICS_PORT": str(metrics_port),
            "KTRDR_GATE_MIN_ACCURACY": "0.99",
        },
        tmp_path / "worker",
        name="strict",
    )
    worker_url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        wait_for_condition(lambda: _up(worker_url), 20, "worker /metrics")
        before = scrape(f"{host_url}/metrics")
        record = wait_for(
            workflow.trigger(strategy="eurusd_1h_rsi_macd_adx").operation_id,
            {"completed", "failed"},
            timeout=180,
        )
        host_after = scrape(f"{host_url}/metrics")
        worker_after = scrape(worker_url)
    finally:
        worker.stop()

    assert record["error_message"].startswith("Training gate failed: accuracy_below_threshold")
    start = 'http_requests_total{handler="/api/v1/trainings/start",method="POST",status="200"}'
    # A start that timed out on a loaded machine is sent again with the same task id: the
    # host answers 200 twice and runs one job, which the operations gauge below counts.
    assert host_after[start] - before.get(start, 0) >= 1
    polls = (
        'http_requests_total{handler="/api/v1/operations/{operation_id}",method="GET",status="200"}'
    )
    assert host_after[polls] > before.get(polls, 0)
    done = 'ktrdr_host_operations{operation_type="training",status="completed"}'
    assert host_after[done] - before.get(done, 0) == 1
    assert host_after["ktrdr_host_training_slots"] >= 1
    assert worker_after['ktrdr_cycles_finished_total{phase="training",verdict="gate_failed"}'] == 1

    training_id = record["metadata"]["training_operation_id"]
    # The host writes JSON too: every line of its log parses (uvicorn's access lines included).
    host_log = [line for line in host.log().splitlines() if line.strip()]
    host_lines = [json.loads(line) for line in host_log]
    assert any("POST /api/v1/trainings/start" in line["message"] for line in host_lines)
    ended = [line for line in host_lines if line["message"].startswith("training ")]
    assert ended and all(line["training_id"] == training_id for line in ended)
    worker_lines = [line for line in json_lines(worker) if line["step"] == "poll_training"]
    assert worker_lines and all(line["training_id"] == training_id for line in worker_lines)


def test_beat_writes_json_lines_too(cycle_env: dict[str, str], tmp_path: Path) -> None:
    from tests.support.processes import BIN, start

    beat = start(
        "beat",
        [str(BIN / "celery"), "-A", "ktrdr_tasks", "beat", "-l", "INFO", "-s", str(tmp_path / "s")],
        tmp_path,
        {**cycle_env, "KTRDR_LOG_FORMAT": "json", "KTRDR_RECONCILE_INTERVAL_S": "0.5"},
    )
    try:
        wait_for_condition(
            lambda: any("Sending due task" in line["message"] for line in json_lines(beat)),
            30,
            "beat's first schedule line",
        )
    finally:
        beat.stop()
    fields = {"timestamp", "level", "logger", "message", "operation_id"}
    assert all(fields <= set(line) for line in json_lines(beat))


def test_a_zero_poll_interval_polls_at_the_floor_not_in_a_spin(
    cycle_env: dict[str, str], fake_api: FakeTrainingApi, strategies_dir: Path, tmp_path: Path
) -> None:
    from ktrdr_tasks.settings import MIN_POLL_INTERVAL_S

    name = write_strategy(strategies_dir, "obs_zero_interval")
    fake_api.behaviours[name] = Behaviour(polls=8)
    worker = start_worker({**cycle_env, "KTRDR_POLL_INTERVAL_S": "0"}, tmp_path, name="zero")
    try:
        record = wait_for(workflow.trigger(strategy=name).operation_id, {"completed", "failed"})
    finally:
        worker.stop()
    training_id = record["metadata"]["training_operation_id"]
    polls = [r.at for r in fake_api.calls("GET", f"/api/v1/operations/{training_id}")]
    gaps = sorted(later - earlier for earlier, later in itertools.pairwise(polls))
    assert record["status"] == "completed" and len(polls) >= 8
    # Unfloored, the median gap measured 0.07 s (polls as fast as the worker goes).
    assert gaps[len(gaps) // 2] >= MIN_POLL_INTERVAL_S * 0.9
