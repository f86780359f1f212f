"""redis-server (AOF on) dies and restarts while cycles train: every cycle still completes,
the workers survive it, and nothing starts a second remote job.

The worker used to die on the lost connection (Celery 5.7 / kombu 5.x: `Unrecoverable error:
AttributeError: 'NoneType' object has no attribute 'hostname'`, see `ktrdr_tasks.broker` for
the cause and the fix). The records, the queue and the unacked messages are in the AOF, so
once the worker reconnects the held polls come back through the visibility-timeout sweep.

Three cases: the exact close sequence of the fault against a real redis-server; a SIGKILLed
redis-server restarted on its AOF with the scripted API (the worker must not restart); and
the same under the `ktrdr demo` stack with the real training host, where the stack's
supervisor restarts redis-server.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml
from kombu import Connection, Exchange, Queue

from ktrdr_tasks import broker
from ktrdr_tasks.models import parse_iso
from tests.chaos.conftest import (
    FINAL,
    ScriptedApi,
    record,
    trigger_all,
    wait_all,
    wait_for_condition,
    write_strategy,
)
from tests.support.environment import apply_env, restored_environment
from tests.support.fake_training_api import Behaviour
from tests.support.local_stack import local_stack
from tests.support.processes import REPO, Process, RedisServer, redis_server

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

CYCLES = 3


def test_closing_a_channel_after_its_transport_was_detached_keeps_unacked_messages(
    tmp_path: Path,
) -> None:
    """The last step of the worker's fatal traceback: after `connection.collect()` detached
    the transport (`transport.client = None`), closing the still-open channel restores its
    unacked messages through a new pool. That must be a connection error, which kombu's
    close ignores, and the messages must stay in Redis's unacked set for the sweep."""
    broker.install()
    with redis_server(tmp_path / "redis") as server:
        queue = Queue("held", Exchange("held"), routing_key="held")
        with Connection(server.url) as producer:
            producer.Producer().publish(
                {"n": 1}, exchange=queue.exchange, routing_key="held", declare=[queue]
            )
        connection = Connection(server.url)
        channel = connection.default_channel
        assert queue(channel).get(no_ack=False) is not None  # delivered, not acknowledged
        server.process.kill(signal.SIGKILL)
        channel.connection.client = None  # what collect() leaves behind

        # Without the fix: AttributeError: 'NoneType' object has no attribute 'hostname'.
        connection.maybe_close_channel(channel)

        server.process = server.restart_after_kill()
        assert server.client().hlen("unacked") == 1


def test_redis_sigkill_while_training_every_cycle_completes_and_the_worker_survives(
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

    chaos_redis.process.kill(signal.SIGKILL)
    killed_at = time.monotonic()
    chaos_redis.process = chaos_redis.restart_after_kill()
    records = wait_all(ids, FINAL, timeout=150)
    took = time.monotonic() - killed_at

    assert survivor.popen.poll() is None, survivor.log()[-3000:]
    assert "Unrecoverable error" not in survivor.log()
    assert [r["status"] for r in records] == ["completed"] * CYCLES, records
    assert [chaos_api.jobs_for(name) for name in names] == [1] * CYCLES
    print(
        f"redis SIGKILL + AOF restart: {CYCLES}/{CYCLES} cycles completed {took:.1f} s after "
        "the kill; the worker survived (no restart)"
    )


def _long_strategy(directory: Path, name: str, epochs: int) -> str:
    document = yaml.safe_load((REPO / "strategies" / "eurusd_1h_rsi_macd_adx.yaml").read_text())
    document["name"] = name
    document["model"]["training"]["epochs"] = epochs
    (directory / f"{name}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return name


def test_redis_sigkill_mid_training_under_the_demo_stack_the_cycle_completes(
    tmp_path: Path,
) -> None:
    from ktrdr_tasks import workflow

    with local_stack(tmp_path) as stack, restored_environment():
        name = _long_strategy(stack.strategies_dir, "redis_kill_demo", epochs=60)
        apply_env(stack.env())
        answer = workflow.trigger(strategy=name, bypass_gates=True)
        assert answer.triggered, answer
        op_id = answer.operation_id or ""

        def training() -> bool:
            meta = workflow.status(op_id)["metadata"]
            return meta.get("training_status") == "running"

        wait_for_condition(training, 90, "training to run on the host")
        redis_before = stack.supervisor.children["redis"]
        worker_pid = stack.supervisor.children["worker"].pid
        redis_before.kill(signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for_condition(
            lambda: stack.supervisor.children["redis"] is not redis_before, 15, "restart"
        )
        restarted_in = time.monotonic() - killed_at
        final = _wait_status(op_id, timeout=240)
        took = time.monotonic() - killed_at
        jobs = httpx.get(f"{stack.api_url}/api/v1/operations", timeout=5).json()["data"]

        assert final["status"] == "completed", final
        [job] = [  # one remote training (the backtest is an operation of its own)
            job
            for job in jobs
            if job["strategy_name"] == name and job["operation_type"] == "training"
        ]
        lag = parse_iso(final["completed_at"]) - parse_iso(job["completed_at"])
        assert stack.supervisor.children["worker"].pid == worker_pid  # it survived
        assert stack.supervisor.restarts == {"redis": 1}
        events = stack.paths.log("supervisor").read_text()
        assert "redis (pid" in events and "restarted as pid" in events
    print(
        f"demo stack, redis SIGKILL mid-training: restarted by the supervisor in "
        f"{restarted_in:.1f} s, cycle completed {took:.1f} s after the kill and "
        f"{lag.total_seconds():.1f} s after its remote job ({job['duration_seconds']:.0f} s of "
        "training); one remote job; worker not restarted"
    )


def _wait_status(op_id: str, timeout: float) -> dict:
    from ktrdr_tasks import workflow

    deadline = time.monotonic() + timeout
    while True:
        try:
            current = workflow.status(op_id)
        except Exception:  # Redis still loading its AOF
            current = {"status": "unknown"}
        if current["status"] in FINAL or time.monotonic() > deadline:
            return current
        time.sleep(0.2)
