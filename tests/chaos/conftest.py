"""Fixtures for the chaos suite: a real redis-server (AOF on), a scripted training API whose
answers can be slowed or cut off, and Celery workers that tests SIGKILL and replace.

Each module gets its own redis-server and API, so one module's killed cycles never leak into
the next. Workers run `tests.chaos.worker_app` (ktrdr_tasks' app plus test-only phase delays).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.environment import apply_env
from tests.support.fake_training_api import FakeTrainingApi
from tests.support.processes import (
    BIN,
    REPO,
    Process,
    RedisServer,
    free_port,
    redis_server,
    start,
    start_worker,
    wait_until,
)

POLL_INTERVAL_S = "0.2"
VISIBILITY_TIMEOUT_S = "4"
FINAL = {"completed", "failed", "cancelled"}


class ScriptedApi(FakeTrainingApi):
    """The fake ktrdr API, plus answers held back by strategy-name prefix and a log of
    requests as they *arrive* (the base class logs them when they are answered)."""

    def __init__(self) -> None:
        super().__init__()
        self.start_delays: dict[str, float] = {}  # strategy name prefix -> seconds
        self.poll_delay_s = 0.0
        self.arrived: list[tuple[float, str, str, Any]] = []

    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        with self.lock:
            self.arrived.append((time.time(), method, path, body))
        delay = 0.0
        if method == "POST" and isinstance(body, dict):
            name = str(body.get("strategy_name") or "")
            delay = max((d for p, d in self.start_delays.items() if name.startswith(p)), default=0)
        elif method == "GET":
            delay = self.poll_delay_s
        if delay:
            time.sleep(delay)
        return super().handle(method, path, body)

    def start_arrived(self, task_id: str) -> bool:
        with self.lock:
            return any(
                m == "POST" and isinstance(b, dict) and b.get("task_id") == task_id
                for _, m, _, b in self.arrived
            )

    def jobs_for(self, strategy_name: str) -> int:
        """Remote jobs created for a strategy (each test cycle has its own strategy)."""
        with self.lock:
            return sum(1 for job in self.jobs.values() if job.strategy_name == strategy_name)

    def training_id_for(self, task_id: str) -> str | None:
        with self.lock:
            return self.by_task_id.get(task_id)


def write_strategy(directory: Path, name: str) -> str:
    """A copy of the first example strategy under a new name."""
    document = yaml.safe_load((REPO / "strategies" / "eurusd_1h_rsi_macd_adx.yaml").read_text())
    document["name"] = name
    (directory / f"{name}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return name


@pytest.fixture(scope="module")
def chaos_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("chaos-redis")) as server:
        yield server


@pytest.fixture(scope="module")
def chaos_api() -> Iterator[ScriptedApi]:
    api = ScriptedApi()
    api.start()
    yield api
    api.stop()


@pytest.fixture(scope="module")
def chaos_strategies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("chaos-strategies")
    for path in (REPO / "strategies").glob("*.yaml"):
        shutil.copy(path, directory / path.name)
    return directory


@pytest.fixture(scope="module")
def chaos_env(
    chaos_redis: RedisServer,
    chaos_api: ScriptedApi,
    chaos_strategies: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, str]]:
    env = {
        "REDIS_URL": chaos_redis.url,
        "KTRDR_API_URL": chaos_api.url,
        "KTRDR_STRATEGIES_DIR": str(chaos_strategies),
        "KTRDR_MODELS_DIR": str(tmp_path_factory.mktemp("chaos-models")),
        "KTRDR_POLL_INTERVAL_S": POLL_INTERVAL_S,
        "KTRDR_VISIBILITY_TIMEOUT_S": VISIBILITY_TIMEOUT_S,
        "KTRDR_MAX_ACTIVE_CYCLES": "200",
        "KTRDR_POLL_MAX_ERRORS": "8",
        "KTRDR_API_TIMEOUT_S": "5",
        "KTRDR_RESUME_AFTER_S": "600",
        "KTRDR_TRAINING_START_DATE": "2017-05-01",
        "KTRDR_TRAINING_END_DATE": "2018-02-01",
        "PYTHONPATH": str(REPO),
    }
    saved = {name: os.environ.get(name) for name in env}
    apply_env(env)
    yield env
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    apply_env({})


def start_chaos_worker(
    env: dict[str, str],
    log_dir: Path,
    concurrency: int = 2,
    name: str = "worker",
    extra_env: dict[str, str] | None = None,
) -> Process:
    """A worker of `tests.chaos.worker_app`: ktrdr_tasks plus test-only phase delays."""
    return start_worker(
        {**env, **(extra_env or {})}, log_dir, concurrency, name, app="tests.chaos.worker_app"
    )


def start_beat(env: dict[str, str], log_dir: Path) -> Process:
    schedule = log_dir / f"beat-schedule-{free_port()}"
    argv = [
        str(BIN / "celery"),
        "-A",
        "tests.chaos.worker_app",
        "beat",
        "--loglevel",
        "INFO",
        "--schedule",
        str(schedule),
    ]
    process = start("beat", argv, log_dir, env)
    wait_until(lambda: "beat: Starting" in process.log(), 30, "celery beat", interval=0.1)
    return process


@pytest.fixture
def workers(chaos_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Process]]:
    """Start workers (and beat) for one test; all of them are stopped afterwards."""
    started: list[Process] = []

    def launch(kind: str = "worker", **options: Any) -> Process:
        if kind == "beat":
            process = start_beat({**chaos_env, **options.get("extra_env", {})}, tmp_path)
        else:
            process = start_chaos_worker(chaos_env, tmp_path, **options)
        started.append(process)
        return process

    yield launch
    for process in started:
        process.stop()


def record(operation_id: str) -> dict[str, Any]:
    from ktrdr_tasks import workflow

    return workflow.status(operation_id)


def wait_all(operation_ids: Iterable[str], statuses: set[str], timeout: float) -> list[dict]:
    """Wait until every cycle reaches one of `statuses`; returns their records."""
    ids = list(operation_ids)
    deadline = time.monotonic() + timeout
    while True:
        records = [record(op_id) for op_id in ids]
        if all(r["status"] in statuses for r in records):
            return records
        if time.monotonic() > deadline:
            stuck = {
                r["operation_id"]: (r["status"], r["step"])
                for r in records
                if r["status"] not in statuses
            }
            raise AssertionError(f"cycles not in {statuses} after {timeout} s: {stuck}")
        time.sleep(0.1)


def wait_for_condition(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def trigger_all(names: Iterable[str], threads: bool = True) -> list[str]:
    """Trigger one cycle per strategy name, concurrently (each trigger is one Lua CAS)."""
    from ktrdr_tasks import workflow

    names = list(names)
    results: dict[str, str] = {}

    def one(name: str) -> None:
        answer = workflow.trigger(strategy=name)
        assert answer.triggered, answer
        results[name] = answer.operation_id or ""

    if not threads:
        for name in names:
            one(name)
    else:
        pool = [threading.Thread(target=one, args=(name,)) for name in names]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
    return [results[name] for name in names]
