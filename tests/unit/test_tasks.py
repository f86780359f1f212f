"""The rules every step shares (`runner.run_step`): who may touch the remote job, what a revoke
does, what a Redis blip does to a running cycle, and the one error budget. The runner gets
its services (fakeredis, an httpx MockTransport) as an argument; nothing is monkeypatched."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import fakeredis
import httpx
import pytest
from celery.app.task import Context
from celery.signals import task_revoked

from ktrdr_tasks import cycle, runner, tasks
from ktrdr_tasks.cycle import Ended, Fail, Reschedule, Services
from ktrdr_tasks.design import DesignResult
from ktrdr_tasks.errors import CycleEnded, StoreUnavailableError
from ktrdr_tasks.models import OperationStatus
from ktrdr_tasks.settings import Settings
from ktrdr_tasks.steps import Step
from ktrdr_tasks.store import Store
from tests.support.cycles import CYCLE_ID, TRAINING_ID, Remote, make_cycle

SETTINGS = Settings(poll_interval_s=5, poll_max_errors=3, api_url="http://trainer")


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def store(server: fakeredis.FakeServer) -> Store:
    return Store(fakeredis.FakeRedis(server=server, decode_responses=True), retention_s=3600)


@pytest.fixture
def remote() -> Remote:
    return Remote()


@pytest.fixture
def services(store: Store, remote: Remote) -> Services:
    return remote.services(store, SETTINGS)


def polling_cycle(store: Store) -> None:
    make_cycle(store, step=Step.POLL_TRAINING, training_id=TRAINING_ID)
    store.update(CYCLE_ID, metadata={"training_status": "running"})


def run(step: Step, services: Services, body: runner.StepBody | None = None) -> cycle.Outcome:
    return runner.run_step(step, CYCLE_ID, services, "task-1", body)


def test_late_duplicate_of_a_passed_step_leaves_the_live_remote_job_alone(
    store: Store, remote: Remote, services: Services
) -> None:
    polling_cycle(store)

    assert isinstance(run(Step.START_TRAINING, services), Ended)

    assert remote.deletes == [] and remote.queued_cancels == []
    after = store.get(CYCLE_ID)
    assert after.status is OperationStatus.RUNNING
    assert after.step == Step.POLL_TRAINING


@pytest.mark.parametrize("final", [OperationStatus.CANCELLED, OperationStatus.FAILED])
def test_step_of_an_ended_cycle_makes_sure_the_remote_job_is_cancelled(
    store: Store, remote: Remote, services: Services, final: OperationStatus
) -> None:
    polling_cycle(store)
    store.finish(CYCLE_ID, final, error_message="stopped")

    assert isinstance(run(Step.POLL_TRAINING, services), Ended)

    assert remote.deletes == [TRAINING_ID]


def test_step_of_a_completed_cycle_cancels_nothing(
    store: Store, remote: Remote, services: Services
) -> None:
    polling_cycle(store)
    store.finish(CYCLE_ID, OperationStatus.COMPLETED)

    assert isinstance(run(Step.POLL_TRAINING, services), Ended)

    assert remote.deletes == []


def revoke(task_name: str, operation_id: str, services: Services) -> None:
    """What a worker sends when it drops a revoked message: the task, and the message context."""
    task_revoked.send(
        sender=tasks.app.tasks[task_name],
        request=Context(id="t-revoked", task=task_name, args=[operation_id]),
        terminated=False,
        signum=None,
        expired=False,
        services=services,
    )


def test_revoked_step_of_a_cancelled_cycle_cancels_the_remote_job(
    store: Store, remote: Remote, services: Services
) -> None:
    polling_cycle(store)
    store.cancel(CYCLE_ID)

    revoke("ktrdr.poll_training", CYCLE_ID, services)

    assert remote.deletes == [TRAINING_ID]


def test_revoked_step_of_a_running_cycle_cancels_the_cycle_and_its_remote_job(
    store: Store, remote: Remote, services: Services
) -> None:
    polling_cycle(store)

    revoke("ktrdr.poll_training", CYCLE_ID, services)

    after = store.get(CYCLE_ID)
    assert after.status is OperationStatus.CANCELLED
    assert after.error_message == "revoked through Celery: task t-revoked (ktrdr.poll_training)"
    assert remote.deletes == [TRAINING_ID]


def test_a_revoke_of_any_task_id_of_a_cycle_cancels_that_cycle_only(
    store: Store, remote: Remote, services: Services
) -> None:
    # What the worker's `revoke` command hands on: ids, wherever their messages are (here the
    # gate's, not yet published while the cycle polls).
    polling_cycle(store)
    store.update(CYCLE_ID, task_ids=["t0", "gate-task"])
    make_cycle(store, op_id="op_agent_research_20260101_000000_0000bbbb", step=Step.DESIGN)

    cancelled = runner.cancel_cycles_of_revoked(services, ["gate-task", "unrelated"])

    assert cancelled == [CYCLE_ID]
    after = store.get(CYCLE_ID)
    assert after.status is OperationStatus.CANCELLED
    assert after.error_message == "revoked through Celery: task gate-task"
    assert remote.deletes == [TRAINING_ID]
    other = store.get("op_agent_research_20260101_000000_0000bbbb")
    assert other.status is OperationStatus.RUNNING


def test_a_revoke_of_a_finished_cycles_task_changes_nothing(
    store: Store, remote: Remote, services: Services
) -> None:
    make_cycle(store, step=Step.ASSESS)
    store.finish(CYCLE_ID, OperationStatus.COMPLETED)

    assert runner.cancel_cycles_of_revoked(services, ["t0"]) == []
    assert store.get(CYCLE_ID).status is OperationStatus.COMPLETED


def test_revoked_housekeeping_task_is_not_mistaken_for_a_step(
    store: Store, remote: Remote, services: Services
) -> None:
    polling_cycle(store)
    store.cancel(CYCLE_ID)

    revoke("ktrdr.reconcile", CYCLE_ID, services)

    assert remote.deletes == []


def test_redis_down_when_a_step_starts_retries_the_step(
    store: Store, server: fakeredis.FakeServer, remote: Remote, services: Services
) -> None:
    polling_cycle(store)
    server.connected = False

    outcome = run(Step.POLL_TRAINING, services)

    server.connected = True
    assert outcome == Reschedule(5)
    assert store.get(CYCLE_ID).status is OperationStatus.RUNNING
    assert remote.deletes == []


def test_redis_blip_inside_a_step_retries_it_instead_of_failing_the_cycle(
    store: Store, server: fakeredis.FakeServer, services: Services
) -> None:
    make_cycle(store, step=Step.LOAD_TRAINING_PARAMS)

    def redis_drops(_: runner.StepRun) -> cycle.Outcome:
        server.connected = False
        raise StoreUnavailableError("cannot reach Redis at redis://localhost:6379/0")

    outcome = run(Step.START_TRAINING, services, redis_drops)

    server.connected = True
    assert outcome == Reschedule(5)
    after = store.get(CYCLE_ID)
    assert after.status is OperationStatus.RUNNING
    assert after.error_message is None


def unreachable_poll(remote: Remote) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    remote.answers[f"GET /api/v1/operations/{TRAINING_ID}"] = refuse


def test_transient_errors_reschedule_until_the_budget_fails_the_cycle_naming_the_api(
    store: Store, remote: Remote, services: Services
) -> None:
    polling_cycle(store)
    unreachable_poll(remote)

    outcomes = [run(Step.POLL_TRAINING, services) for _ in range(SETTINGS.poll_max_errors)]

    assert outcomes[:-1] == [Reschedule(5)] * (SETTINGS.poll_max_errors - 1)
    assert isinstance(outcomes[-1], Fail)
    after = store.get(CYCLE_ID)
    assert after.status is OperationStatus.FAILED
    assert "http://trainer" in after.error_message
    assert "KTRDR_POLL_MAX_ERRORS=3" in after.error_message
    assert after.bookkeeping.transient_errors == SETTINGS.poll_max_errors - 1
    assert remote.deletes == [TRAINING_ID]  # the job may still train: cancelled


def test_a_run_that_gets_through_resets_the_error_budget(
    store: Store, remote: Remote, services: Services
) -> None:
    polling_cycle(store)
    unreachable_poll(remote)
    for _ in range(SETTINGS.poll_max_errors - 1):
        run(Step.POLL_TRAINING, services)
    remote.answers[f"GET /api/v1/operations/{TRAINING_ID}"] = lambda _: httpx.Response(
        200, json={"success": True, "data": {"status": "running"}}
    )

    assert run(Step.POLL_TRAINING, services) == Reschedule(5)

    assert store.get(CYCLE_ID).bookkeeping.transient_errors == 0


def test_bookkeeping_is_not_in_what_a_user_reads(store: Store, services: Services) -> None:
    make_cycle(store, step=Step.POLL_TRAINING, bookkeeping={"transient_errors": 2})

    record = store.get(CYCLE_ID)

    assert record.bookkeeping.transient_errors == 2
    assert "bookkeeping" not in record.model_dump(mode="json")
    assert "transient_errors" not in record.model_dump(mode="json")["metadata"]


def designer_writing(tmp_path: Path, name: str) -> Callable[..., DesignResult]:
    def design(*_: object, **__: object) -> DesignResult:
        path = tmp_path / f"{name}.yaml"
        path.write_text("name: x\n")
        return DesignResult(name, path, {"name": name}, "a hypothesis", name, "builtin")

    return design


def test_design_finishing_after_another_run_recorded_one_is_discarded(
    store: Store, tmp_path: Path
) -> None:
    # Two runs of one design step (the first lost its lease): the chain goes on with the
    # design recorded first, whatever the second run produced.
    make_cycle(store, step=Step.DESIGN)
    settings = Settings(strategies_dir=tmp_path)

    def run(name: str) -> str:
        return cycle.run_design(
            store,
            settings,
            store.get(CYCLE_ID),
            designer_writing(tmp_path, name),
            lambda config: {"name": config["name"]},
            lambda: None,
        )

    stale_view = store.get(CYCLE_ID)  # the second run read the record before the first wrote
    assert run("first_design") == "first_design"
    late = cycle.run_design(
        store,
        settings,
        stale_view,
        designer_writing(tmp_path, "second_design"),
        lambda config: {"name": config["name"]},
        lambda: None,
    )

    assert late == "first_design"
    assert store.get(CYCLE_ID).strategy_name == "first_design"
    assert store.get(CYCLE_ID).metadata["design"] == {"name": "first_design"}
    assert sorted(p.name for p in tmp_path.glob("*.yaml")) == ["first_design.yaml"]


def test_design_finishing_after_a_cancel_stops_and_keeps_its_file(
    store: Store, tmp_path: Path
) -> None:
    make_cycle(store, step=Step.DESIGN)
    running = store.get(CYCLE_ID)
    store.cancel(CYCLE_ID)

    with pytest.raises(CycleEnded):
        cycle.run_design(
            store,
            Settings(strategies_dir=tmp_path),
            running,
            designer_writing(tmp_path, "late_design"),
            lambda config: config,
            lambda: None,
        )

    assert store.get(CYCLE_ID).strategy_name is None
    assert (tmp_path / "late_design.yaml").is_file()


@pytest.mark.parametrize("visibility_s", [30.0, 250.0, 600.0, 3600.0])
def test_lease_ttl_fits_the_visibility_timeout_and_an_llm_call(visibility_s: float) -> None:
    llm = Settings(
        visibility_timeout_s=visibility_s,
        anthropic_timeout_s=min(120.0, visibility_s / 2 - 1),
        designer="anthropic",
        poll_interval_s=5,
    )
    ttl = runner.lease_ttl_s(Step.DESIGN, llm)
    assert llm.anthropic_timeout_s < ttl <= visibility_s / 2


def test_lease_never_outlasts_half_the_visibility_timeout() -> None:
    # A run waiting for a held lease sleeps as a countdown; one longer than the visibility
    # timeout would be redelivered while it waits.
    # (The LLM design's longer lease: the parametrised test above, 600 s among its cases.)
    quick = Settings(visibility_timeout_s=30, poll_interval_s=5)
    assert all(runner.lease_ttl_s(step, quick) <= 15 for step in Step)


def test_every_step_has_its_task_under_the_table_name() -> None:
    assert set(runner.STEP_BODIES) == set(Step)
    for step in Step:
        assert tasks.app.tasks[step.task_name].max_retries is None
