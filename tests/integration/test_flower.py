"""Flower against the real worker: a cycle's tasks are found through Flower's HTTP API, by
name and by operation id, behind basic auth; and Flower refuses to be exposed without it.
Celery's own doors tell the truth: a finished cycle's tasks are in terminal states, and a
revoke of a task id (`celery control revoke`, `AsyncResult.revoke()`) cancels the cycle and
its training on the host."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from ktrdr_tasks.stack import FLOWER_USER, Stack, free_port
from ktrdr_tasks.steps import Step
from tests.support.environment import restored_environment
from tests.support.local_stack import local_stack
from tests.support.processes import BIN, start, wait_until

pytestmark = pytest.mark.integration

GUARDED_FLOWER = [str(BIN / "python"), "-m", "ktrdr_tasks.stack", "flower"]
STRATEGY = ("--strategy", "eurusd_1h_rsi_macd_adx")
CHAIN_HEAD = (
    "ktrdr.design",
    "ktrdr.load_training_params",
    "ktrdr.start_training",
    "ktrdr.poll_training",
    "ktrdr.training_gate",
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with restored_environment(), local_stack(tmp_path_factory.mktemp("flower-stack")) as started:
        yield started


def flower_tasks(stack: Stack, operation_id: str) -> dict[str, dict[str, Any]]:
    answer = httpx.get(
        f"{stack.flower_url}/api/tasks",
        params={"limit": 1000},
        auth=(FLOWER_USER, stack.flower_password),
        timeout=5,
    )
    answer.raise_for_status()
    return {
        task_id: task
        for task_id, task in answer.json().items()
        if operation_id in str(task.get("args"))
    }


def test_flower_shows_every_task_of_a_cycle_by_name_with_its_operation_id(stack: Stack) -> None:
    done = subprocess.run(
        [str(BIN / "ktrdr"), "agent", "trigger", "--follow", "--json", *STRATEGY],
        env={**os.environ, **stack.env()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    final = json.loads(done.stdout.strip().splitlines()[-1])
    operation_id = final["operation_id"]
    assert final["status"] in ("completed", "failed"), final

    def all_steps_seen() -> bool:
        names = {task["name"] for task in flower_tasks(stack, operation_id).values()}
        return set(CHAIN_HEAD) <= names

    wait_until(all_steps_seen, 15, "the cycle's tasks in Flower", interval=0.3)
    tasks = flower_tasks(stack, operation_id)
    by_name = {task["name"]: task for task in tasks.values()}
    design = by_name["ktrdr.design"]
    assert design["state"] == "SUCCESS"
    assert design["args"] == f"('{operation_id}',)"
    assert design["worker"].startswith("ktrdr-demo-")
    # The ids Flower shows are the ones frozen in the operation record before enqueueing.
    assert set(final["task_ids"]) >= {
        task_id for task_id, task in tasks.items() if task["name"] != "ktrdr.cancel_training"
    }


def test_flower_api_requires_the_credentials(stack: Stack) -> None:
    url = f"{stack.flower_url}/api/workers"
    assert httpx.get(url, timeout=5).status_code == 401
    assert httpx.get(url, auth=(FLOWER_USER, "wrong"), timeout=5).status_code == 401
    assert httpx.get(url, auth=(FLOWER_USER, stack.flower_password), timeout=5).status_code == 200


def _flower_env(stack: Stack, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    return {**env, **stack.env(), **extra}


def test_flower_refuses_to_listen_beyond_loopback_without_credentials(stack: Stack) -> None:
    port = free_port()
    refused = subprocess.run(
        [*GUARDED_FLOWER, "--address=0.0.0.0", f"--port={port}"],
        env=_flower_env(stack),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 4
    assert "refusing to start Flower on 0.0.0.0 without credentials" in refused.stderr
    assert "FLOWER_BASIC_AUTH" in refused.stderr
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthcheck", timeout=1)


def test_guarded_flower_beyond_loopback_starts_with_basic_auth(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    port = free_port()
    flower = start(
        "flower-exposed",
        [*GUARDED_FLOWER, "--address=0.0.0.0", f"--port={port}"],
        tmp_path_factory.mktemp("flower-logs"),
        _flower_env(stack, FLOWER_BASIC_AUTH="admin:s3cret-pass"),
    )
    try:
        url = f"http://127.0.0.1:{port}/api/workers"
        wait_until(
            lambda: httpx.get(url, auth=("admin", "s3cret-pass"), timeout=1).status_code == 200,
            60,
            "guarded Flower",
            interval=0.2,
        )
        assert httpx.get(url, timeout=5).status_code == 401
    finally:
        flower.stop()
    assert "s3cret-pass" not in flower.log()


# -- Celery's own doors -------------------------------------------------------------------


def _use(stack: Stack) -> Any:
    from ktrdr_tasks import workflow

    workflow.use_environment(stack.env())
    return workflow


def _variant(stack: Stack, name: str, **training: object) -> str:
    """A copy of the example strategy under `name` with other training settings."""
    source = stack.strategies_dir / "eurusd_1h_rsi_macd_adx.yaml"
    document = yaml.safe_load(source.read_text())
    document["name"] = name
    document["model"]["training"].update(training)
    (stack.strategies_dir / f"{name}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return name


def _long_training(stack: Stack, name: str) -> str:
    """Trains long enough to be revoked while training."""
    return _variant(stack, name, epochs=400)


def _training_on_host(stack: Stack, workflow: Any, operation_id: str) -> str:
    def training() -> bool:
        meta = workflow.status(operation_id)["metadata"]
        return meta.get("training_status") == "running"

    wait_until(training, 60, "the training to run on the host", interval=0.1)
    return str(workflow.status(operation_id)["metadata"]["training_operation_id"])


def _host_status(stack: Stack, training_id: str) -> str:
    answer = httpx.get(f"{stack.api_url}/api/v1/operations/{training_id}", timeout=5)
    return str(answer.json()["data"]["status"])


def _cancelled_everywhere(stack: Stack, workflow: Any, op_id: str, training_id: str) -> dict:
    revoked_at = time.monotonic()
    wait_until(
        lambda: workflow.status(op_id)["status"] == "cancelled", 20, "the cycle to be cancelled"
    )
    wait_until(
        lambda: _host_status(stack, training_id) in ("cancelled", "failed"),
        20,
        "the training to be cancelled on the host",
    )
    print(f"{op_id}: cancelled everywhere {time.monotonic() - revoked_at:.1f} s after the revoke")
    wait_until(
        lambda: all(t["state"] != "STARTED" for t in flower_tasks(stack, op_id).values()),
        15,
        "no task of the cycle left STARTED in Flower",
        interval=0.3,
    )
    return workflow.status(op_id)


def test_every_step_of_a_completed_cycle_is_a_success_in_flower(stack: Stack) -> None:
    workflow = _use(stack)
    op_id = workflow.trigger(strategy=STRATEGY[1], bypass_gates=True).operation_id
    wait_until(lambda: workflow.status(op_id)["status"] == "completed", 120, "the cycle")

    steps = {step.task_name for step in Step}

    def all_succeeded() -> bool:
        states = {t["name"]: t["state"] for t in flower_tasks(stack, op_id).values()}
        return steps <= set(states) and {states[name] for name in steps} == {"SUCCESS"}

    wait_until(all_succeeded, 15, "every step SUCCESS in Flower", interval=0.3)


def test_a_gate_rejected_cycle_shows_its_gate_task_failed_with_the_reason(stack: Stack) -> None:
    # One epoch at a learning rate that moves nothing: the test loss stays near chance (about
    # 1.1 for three classes), far above the gate's 0.8.
    workflow = _use(stack)
    name = _variant(stack, "untrained", epochs=1, learning_rate=1e-9)
    op_id = workflow.trigger(strategy=name).operation_id
    wait_until(lambda: workflow.status(op_id)["status"] == "failed", 120, "the gate to reject")
    message = workflow.status(op_id)["error_message"]
    assert message.startswith("Training gate failed")

    def gate_failed() -> bool:
        by_name = {t["name"]: t for t in flower_tasks(stack, op_id).values()}
        gate = by_name.get("ktrdr.training_gate") or {}
        return gate.get("state") == "FAILURE" and "Training gate failed" in str(
            gate.get("exception")
        )

    wait_until(gate_failed, 15, "the gate task FAILURE in Flower", interval=0.3)
    states = [t["state"] for t in flower_tasks(stack, op_id).values()]
    assert "STARTED" not in states


def test_flowers_revoke_endpoint_cancels_the_cycle_and_the_training(stack: Stack) -> None:
    workflow = _use(stack)
    op_id = workflow.trigger(strategy=_long_training(stack, "revoked_in_flower")).operation_id
    training_id = _training_on_host(stack, workflow, op_id)
    poll_task = workflow.status(op_id)["task_ids"][Step.POLL_TRAINING - 1]

    answer = httpx.post(
        f"{stack.flower_url}/api/task/revoke/{poll_task}",
        auth=(FLOWER_USER, stack.flower_password),
        timeout=10,
    )

    assert answer.status_code == 200, answer.text
    final = _cancelled_everywhere(stack, workflow, op_id, training_id)
    assert poll_task in final["error_message"]


def test_celery_control_revoke_of_the_poll_cancels_the_cycle_and_the_training(
    stack: Stack,
) -> None:
    workflow = _use(stack)
    op_id = workflow.trigger(strategy=_long_training(stack, "revoked_by_cli")).operation_id
    training_id = _training_on_host(stack, workflow, op_id)
    poll_task = workflow.status(op_id)["task_ids"][Step.POLL_TRAINING - 1]

    subprocess.run(
        [str(BIN / "celery"), "-A", "ktrdr_tasks", "control", "revoke", poll_task],
        env={**os.environ, **stack.env()},
        check=True,
        capture_output=True,
        timeout=60,
    )

    final = _cancelled_everywhere(stack, workflow, op_id, training_id)
    assert final["error_message"].startswith(f"revoked through Celery: task {poll_task}")


def test_revoking_a_later_task_of_the_chain_cancels_the_cycle_at_the_next_poll(
    stack: Stack,
) -> None:
    from celery.result import AsyncResult

    from ktrdr_tasks.app import app

    workflow = _use(stack)
    op_id = workflow.trigger(strategy=_long_training(stack, "revoked_gate")).operation_id
    training_id = _training_on_host(stack, workflow, op_id)
    gate_task = workflow.status(op_id)["task_ids"][Step.TRAINING_GATE - 1]

    AsyncResult(gate_task, app=app).revoke()

    final = _cancelled_everywhere(stack, workflow, op_id, training_id)
    assert gate_task in final["error_message"]
