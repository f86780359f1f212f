"""redis-server (AOF on) restarts while cycles train: every cycle still completes.

Celery 5.7.0 / kombu 5.7.0: a worker holding unacked messages (every polling cycle's countdown
is one) dies with `Unrecoverable error: AttributeError('NoneType' object has no attribute
'hostname')` when the broker connection drops: closing the broken connection tries to restore
its unacked messages through a connection that is already gone. The messages stay in Redis's
unacked set (AOF), so a worker restarted by its supervisor (docker-compose `restart:
unless-stopped`) gets them back after the visibility timeout. The test plays that supervisor.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.chaos.conftest import (
    FINAL,
    ScriptedApi,
    record,
    trigger_all,
    wait_all,
    wait_for_condition,
    write_strategy,
)
from tests.support.fake_training_api import Behaviour
from tests.support.processes import Process, RedisServer

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

CYCLES = 3


def test_redis_restart_while_training_every_cycle_completes(
    workers: Callable[..., Process],
    chaos_api: ScriptedApi,
    chaos_strategies: Path,
    chaos_redis: RedisServer,
) -> None:
    names = [write_strategy(chaos_strategies, f"redis_restart_{i}") for i in range(CYCLES)]
    for name in names:
        chaos_api.behaviours[name] = Behaviour(polls=30)
    survivor = workers(concurrency=2, name="survivor")
    ids = trigger_all(names)
    wait_for_condition(
        lambda: all(record(op)["metadata"].get("training_status") for op in ids), 30, "polling"
    )

    chaos_redis.restart()
    restarted_at = time.monotonic()
    # The supervisor's job: if the worker died on the lost connection, start it again.
    deadline = time.monotonic() + 8
    while survivor.popen.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    worker_died = survivor.popen.poll() is not None
    if worker_died:
        workers(concurrency=2, name="supervised-restart")
    records = wait_all(ids, FINAL, timeout=90)

    assert [r["status"] for r in records] == ["completed"] * CYCLES, records
    assert [chaos_api.jobs_for(name) for name in names] == [1] * CYCLES
    print(
        f"redis restart: {CYCLES}/{CYCLES} cycles completed "
        f"{time.monotonic() - restarted_at:.1f} s after the restart "
        f"(worker {'died and was restarted' if worker_died else 'survived'})"
    )
