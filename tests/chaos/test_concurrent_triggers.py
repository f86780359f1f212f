"""50 processes trigger at the same instant with KTRDR_MAX_ACTIVE_CYCLES=1: exactly one cycle."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.chaos.conftest import FINAL, ScriptedApi, apply_env, wait_all, write_strategy
from tests.support.processes import Process

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

TRIGGERS = 50


@pytest.fixture
def limit_one(chaos_env: dict[str, str]) -> Iterator[None]:
    apply_env({"KTRDR_MAX_ACTIVE_CYCLES": "1"})
    yield
    apply_env({"KTRDR_MAX_ACTIVE_CYCLES": chaos_env["KTRDR_MAX_ACTIVE_CYCLES"]})


def _trigger(name: str, barrier: object, answers: object) -> None:
    from ktrdr_tasks import workflow

    barrier.wait()  # type: ignore[attr-defined]
    answers.put(workflow.trigger(strategy=name).model_dump())  # type: ignore[attr-defined]
    answers.close()  # type: ignore[attr-defined]
    answers.join_thread()  # type: ignore[attr-defined]  # flushed before the hard exit
    os._exit(0)  # skip the parent's atexit handlers (its Celery pools, its sockets)


def test_fifty_simultaneous_triggers_with_limit_one_start_exactly_one_cycle(
    limit_one: None,
    workers: Callable[..., Process],
    chaos_api: ScriptedApi,
    chaos_strategies: Path,
) -> None:
    name = write_strategy(chaos_strategies, "fifty_triggers")
    # No worker yet: the winner stays active however slowly the 50 processes get going.
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(TRIGGERS)
    answers = context.Queue()
    processes = [
        context.Process(target=_trigger, args=(name, barrier, answers)) for _ in range(TRIGGERS)
    ]
    for process in processes:
        process.start()
    results = [answers.get(timeout=60) for _ in range(TRIGGERS)]
    for process in processes:
        process.join(timeout=30)

    started = [r for r in results if r["triggered"]]
    refused = [r for r in results if not r["triggered"]]
    assert len(started) == 1
    winner = started[0]["operation_id"]
    assert {r["reason"] for r in refused} == {"active_cycle_exists"}
    assert {r["operation_id"] for r in refused} == {winner}
    workers(name="single")
    [final] = wait_all([winner], FINAL, timeout=60)
    assert final["status"] == "completed", final["error_message"]
    assert chaos_api.jobs_for(name) == 1
    print(f"{TRIGGERS} simultaneous triggers: 1 started, {len(refused)} refused")
