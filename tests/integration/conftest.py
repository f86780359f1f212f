"""Real processes for the chain's integration tests: redis-server, the scripted training API,
Celery workers started as subprocesses with the same environment the test process reads."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.environment import apply_env
from tests.support.fake_training_api import FakeTrainingApi
from tests.support.processes import REPO, Process, RedisServer, redis_server, start_worker

pytestmark = pytest.mark.integration

POLL_INTERVAL_S = "0.2"
VISIBILITY_TIMEOUT_S = "4"


@pytest.fixture(scope="session")
def redis_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def fake_api() -> Iterator[FakeTrainingApi]:
    api = FakeTrainingApi().start()
    yield api
    api.stop()


def write_strategy(directory: Path, name: str, **changes: Any) -> str:
    """A copy of the first example strategy under a new name (and optional changes)."""
    document = yaml.safe_load((REPO / "strategies" / "eurusd_1h_rsi_macd_adx.yaml").read_text())
    document["name"] = name
    document.update(changes)
    (directory / f"{name}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return name


@pytest.fixture(scope="session")
def strategies_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("strategies")
    for path in (REPO / "strategies").glob("*.yaml"):
        shutil.copy(path, directory / path.name)
    return directory


@pytest.fixture(scope="session")
def cycle_env(
    redis_srv: RedisServer,
    fake_api: FakeTrainingApi,
    strategies_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    """The environment shared by this process (trigger, status) and the workers."""
    env = {
        "REDIS_URL": redis_srv.url,
        "KTRDR_API_URL": fake_api.url,
        "KTRDR_STRATEGIES_DIR": str(strategies_dir),
        "KTRDR_MODELS_DIR": str(tmp_path_factory.mktemp("models")),
        "KTRDR_POLL_INTERVAL_S": POLL_INTERVAL_S,
        "KTRDR_VISIBILITY_TIMEOUT_S": VISIBILITY_TIMEOUT_S,
        "KTRDR_MAX_ACTIVE_CYCLES": "100",
        "KTRDR_POLL_MAX_ERRORS": "8",
        "KTRDR_API_TIMEOUT_S": "2",
        "KTRDR_TRAINING_START_DATE": "2017-05-01",
        "KTRDR_TRAINING_END_DATE": "2018-02-01",
    }
    apply_env(env)
    return env


@pytest.fixture(scope="module")
def worker(
    cycle_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Process]:
    process = start_worker(cycle_env, tmp_path_factory.mktemp("logs"))
    yield process
    process.stop()


def wait_for(operation_id: str, statuses: set[str], timeout: float = 60) -> dict[str, Any]:
    """Poll the record (as any client would) until the cycle reaches one of `statuses`."""
    from ktrdr_tasks import workflow

    deadline = time.monotonic() + timeout
    record = workflow.status(operation_id)
    while record["status"] not in statuses:
        if time.monotonic() > deadline:
            raise AssertionError(f"{operation_id} still {record['status']}: {record}")
        time.sleep(0.1)
        record = workflow.status(operation_id)
    return record


def wait_for_condition(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
