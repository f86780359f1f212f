"""Flower against the real worker: a cycle's tasks are found through Flower's HTTP API, by
name and by operation id, behind basic auth; and Flower refuses to be exposed without it."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ktrdr_tasks.stack import FLOWER_USER, Stack, free_port
from ktrdr_tasks.steps import Step
from ktrdr_tasks.store import Store
from tests.support.local_stack import local_stack
from tests.support.processes import BIN, start, wait_until

pytestmark = pytest.mark.integration

GUARDED_FLOWER = [str(BIN / "python"), "-m", "ktrdr_tasks.stack", "flower"]
STRATEGY = ("--strategy", "eurusd_1h_rsi_macd_adx")
POLL = Step.POLL_TRAINING.task_name
CHAIN_HEAD = (
    "ktrdr.design",
    "ktrdr.load_training_params",
    "ktrdr.start_training",
    "ktrdr.poll_training",
    "ktrdr.training_gate",
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with local_stack(tmp_path_factory.mktemp("flower-stack")) as started:
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


def test_flower_shows_the_polling_task_in_progress_then_final_as_one_task(stack: Stack) -> None:
    store = Store.from_url(stack.redis_url, retention_s=3600)
    started = subprocess.run(
        [str(BIN / "ktrdr"), "agent", "trigger", "--json", *STRATEGY],
        env={**os.environ, **stack.env()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    operation_id = json.loads(started.stdout.strip().splitlines()[-1])["operation_id"]

    seen: set[float] = set()

    def polled_twice() -> bool:
        record = store.get(operation_id)
        if record.step == Step.POLL_TRAINING and record.progress.percentage > 35:
            seen.add(record.progress.percentage)  # each poll writes the training's progress
        return len(seen) >= 2

    wait_until(polled_twice, 60, "the cycle polling its training", interval=0.05)
    polls = [t for t in flower_tasks(stack, operation_id).values() if t["name"] == POLL]
    while_polling = polls[0]["state"] if len(polls) == 1 else polls
    wait_until(lambda: store.get(operation_id).status.is_terminal, 120, "the cycle's end")

    def poll_final() -> bool:
        found = [t for t in flower_tasks(stack, operation_id).values() if t["name"] == POLL]
        return len(found) == 1 and found[0]["state"] in ("SUCCESS", "FAILURE")

    wait_until(poll_final, 15, "the poll task's final state in Flower", interval=0.3)
    assert while_polling in ("RECEIVED", "STARTED", "RETRY")
    [poll] = [t for t in flower_tasks(stack, operation_id).values() if t["name"] == POLL]
    # The poll ended when the training did (the gate after it judges the result).
    assert store.get(operation_id).metadata["training_status"] == "completed"
    assert poll["state"] == "SUCCESS"


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
