"""A backend's own door: another process builds `research_chain(...)` and enqueues it itself
with `.apply_async()`; the worker's first task creates the cycle under the active-cycle
limit, and a cycle over it is recorded refused, never dropped."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ktrdr_tasks import workflow
from ktrdr_tasks.store import get_store
from tests.integration.conftest import wait_for, wait_for_condition, write_strategy
from tests.support.environment import apply_env
from tests.support.fake_training_api import Behaviour, FakeTrainingApi
from tests.support.processes import BIN, REPO, Process, RedisServer, start_worker

pytestmark = pytest.mark.integration

BACKEND = (
    "from ktrdr_tasks import workflow\n"
    "chain = workflow.research_chain(strategy={strategy!r})\n"
    "print(chain.operation_id, flush=True)\n"
    "chain.apply_async()\n"
)


@pytest.fixture(scope="module")
def backend_env(cycle_env: dict[str, str], redis_srv: RedisServer) -> Iterator[dict[str, str]]:
    """A Redis database of its own (no other module's cycles count) and a limit of one."""
    env = {
        **cycle_env,
        "REDIS_URL": redis_srv.url.rsplit("/", 1)[0] + "/7",
        "KTRDR_MAX_ACTIVE_CYCLES": "1",
    }
    apply_env(env)
    yield env
    apply_env(cycle_env)


@pytest.fixture(scope="module")
def limited_worker(
    backend_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Process]:
    process = start_worker(backend_env, tmp_path_factory.mktemp("backend-logs"), name="backend")
    yield process
    process.stop()


def enqueue_from_a_backend(env: dict[str, str], strategy: str) -> str:
    done = subprocess.run(
        [str(BIN / "python"), "-c", BACKEND.format(strategy=strategy)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.split()[0]


def recorded(op_id: str) -> bool:
    return get_store().find(op_id) is not None


def test_a_chain_a_backend_enqueued_reaches_its_verdict_and_is_listed(
    limited_worker: Process,
    backend_env: dict[str, str],
    fake_api: FakeTrainingApi,
    strategies_dir: Path,
) -> None:
    name = write_strategy(strategies_dir, "backend_chain")

    op_id = enqueue_from_a_backend(backend_env, name)
    wait_for_condition(lambda: recorded(op_id), 30, "the first task to create the cycle")
    record = wait_for(op_id, {"completed", "failed", "cancelled"})

    assert record["status"] == "completed", record["error_message"]
    assert fake_api.starts_for(op_id) == 1
    assert op_id in [op["operation_id"] for op in workflow.list_operations(limit=10)]


def test_two_backend_chains_at_limit_one_one_runs_and_one_is_recorded_refused(
    limited_worker: Process,
    backend_env: dict[str, str],
    fake_api: FakeTrainingApi,
    strategies_dir: Path,
) -> None:
    name = write_strategy(strategies_dir, "backend_pair")
    fake_api.behaviours[name] = Behaviour(polls=60)  # ~12 s: the second arrives meanwhile

    first = enqueue_from_a_backend(backend_env, name)
    wait_for_condition(lambda: recorded(first), 30, "the first cycle to be created")
    second = enqueue_from_a_backend(backend_env, name)
    wait_for_condition(lambda: recorded(second), 30, "the second cycle to be recorded")
    refused = wait_for(second, {"completed", "failed", "cancelled"}, 30)
    winner = wait_for(first, {"completed", "failed", "cancelled"})

    assert refused["status"] == "failed"
    assert refused["error_message"] == (
        f"Refused (active_cycle_exists): Active cycle exists: {first}"
    )
    assert fake_api.starts_for(second) == 0
    assert winner["status"] == "completed", winner["error_message"]


def readme_backend_example() -> str:
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- backend-example -->", 1)[1]
    return block.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readmes_fastapi_backend_starts_a_cycle_that_reaches_its_verdict(
    limited_worker: Process,
    backend_env: dict[str, str],
    fake_api: FakeTrainingApi,
    strategies_dir: Path,
) -> None:
    from fastapi.testclient import TestClient

    name = write_strategy(strategies_dir, "backend_fastapi")
    example: dict[str, object] = {}
    exec(compile(readme_backend_example(), "README.md", "exec"), example)
    client = TestClient(example["api"])  # type: ignore[arg-type]

    op_id = client.post("/cycles", params={"strategy": name}).json()["operation_id"]
    wait_for_condition(lambda: recorded(op_id), 30, "the first task to create the cycle")
    wait_for(op_id, {"completed", "failed", "cancelled"})

    answer = client.get(f"/cycles/{op_id}").json()
    assert answer["status"] == "completed", answer["error_message"]
    assert answer["metadata"]["strategy_name"] == name
