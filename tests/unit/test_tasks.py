"""The rules every step task shares (`tasks._run_step`): who may touch the remote job, what a
revoke does, and what a Redis blip does to a running cycle."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import fakeredis
import pytest
from celery.app.task import Context
from celery.exceptions import Ignore, Retry
from celery.signals import task_revoked

from ktrdr_tasks import cycle, tasks
from ktrdr_tasks.cycle import CycleStopped, Step
from ktrdr_tasks.design import DesignResult
from ktrdr_tasks.errors import StoreUnavailableError
from ktrdr_tasks.models import OperationStatus
from ktrdr_tasks.settings import Settings
from ktrdr_tasks.store import Store
from tests.support.cycles import CYCLE_ID, TRAINING_ID, Remote, make_cycle, stand_in_training_api


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def store(server: fakeredis.FakeServer, monkeypatch: pytest.MonkeyPatch) -> Store:
    store = Store(fakeredis.FakeRedis(server=server, decode_responses=True), retention_s=3600)
    monkeypatch.setattr(tasks, "get_store", lambda: store)
    monkeypatch.setattr(tasks, "get_settings", lambda: Settings(poll_interval_s=5))
    return store


@pytest.fixture
def remote(monkeypatch: pytest.MonkeyPatch) -> Iterator[Remote]:
    yield from stand_in_training_api(monkeypatch)


@pytest.fixture
def retries(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Countdowns of the retries the step tasks asked for (instead of publishing them)."""
    asked: list[float] = []

    def retry(countdown: float = 0, **_: object) -> Retry:
        asked.append(countdown)
        return Retry(when=countdown)

    for name in tasks.STEP_TASK_NAMES.values():
        monkeypatch.setattr(tasks.app.tasks[name], "retry", retry)
    return asked


def polling_cycle(store: Store) -> None:
    make_cycle(store, step=Step.POLL_TRAINING, training_id=TRAINING_ID)
    store.update(CYCLE_ID, metadata={"training_status": "running"})


def test_late_duplicate_of_a_passed_step_leaves_the_live_remote_job_alone(
    store: Store, remote: Remote
) -> None:
    polling_cycle(store)

    with pytest.raises(Ignore):
        tasks.start_training.run(CYCLE_ID)

    assert remote.deletes == [] and remote.queued_cancels == []
    after = store.get(CYCLE_ID)
    assert after.status is OperationStatus.RUNNING
    assert after.step == Step.POLL_TRAINING


@pytest.mark.parametrize("final", [OperationStatus.CANCELLED, OperationStatus.FAILED])
def test_step_of_an_ended_cycle_makes_sure_the_remote_job_is_cancelled(
    store: Store, remote: Remote, final: OperationStatus
) -> None:
    polling_cycle(store)
    store.finish(CYCLE_ID, final, error_message="stopped")

    with pytest.raises(Ignore):
        tasks.poll_training.run(CYCLE_ID)

    assert remote.deletes == [TRAINING_ID]


def test_step_of_a_completed_cycle_cancels_nothing(store: Store, remote: Remote) -> None:
    polling_cycle(store)
    store.finish(CYCLE_ID, OperationStatus.COMPLETED)

    with pytest.raises(Ignore):
        tasks.poll_training.run(CYCLE_ID)

    assert remote.deletes == []


def revoke(task_name: str, operation_id: str) -> None:
    """What a worker sends when it drops a revoked message: the task, and the message context."""
    task_revoked.send(
        sender=tasks.app.tasks[task_name],
        request=Context(id="t-revoked", task=task_name, args=[operation_id]),
        terminated=False,
        signum=None,
        expired=False,
    )


def test_revoked_step_of_a_cancelled_cycle_cancels_the_remote_job(
    store: Store, remote: Remote
) -> None:
    polling_cycle(store)
    store.cancel(CYCLE_ID)

    revoke("ktrdr.poll_training", CYCLE_ID)

    assert remote.deletes == [TRAINING_ID]


def test_revoked_step_of_a_running_cycle_cancels_nothing(store: Store, remote: Remote) -> None:
    polling_cycle(store)

    revoke("ktrdr.poll_training", CYCLE_ID)

    assert remote.deletes == []
    assert store.get(CYCLE_ID).status is OperationStatus.RUNNING


def test_revoked_housekeeping_task_is_not_mistaken_for_a_step(store: Store, remote: Remote) -> None:
    polling_cycle(store)
    store.cancel(CYCLE_ID)

    revoke("ktrdr.reconcile", CYCLE_ID)

    assert remote.deletes == []


def test_redis_down_when_a_step_starts_retries_the_step(
    store: Store, server: fakeredis.FakeServer, remote: Remote, retries: list[float]
) -> None:
    polling_cycle(store)
    server.connected = False

    with pytest.raises(Retry):
        tasks.poll_training.run(CYCLE_ID)

    server.connected = True
    assert retries == [5]
    assert store.get(CYCLE_ID).status is OperationStatus.RUNNING
    assert remote.deletes == []


def test_redis_blip_inside_a_step_retries_it_instead_of_failing_the_cycle(
    store: Store,
    server: fakeredis.FakeServer,
    remote: Remote,
    retries: list[float],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_cycle(store, step=Step.LOAD_TRAINING_PARAMS)

    def redis_drops(*_: object) -> str:
        server.connected = False
        raise StoreUnavailableError("cannot reach Redis at redis://localhost:6379/0")

    monkeypatch.setattr(cycle, "run_start_training", redis_drops)

    with pytest.raises(Retry):
        tasks.start_training.run(CYCLE_ID)

    server.connected = True
    assert retries == [5]
    after = store.get(CYCLE_ID)
    assert after.status is OperationStatus.RUNNING
    assert after.error_message is None


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

    with pytest.raises(CycleStopped):
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
    ttl = tasks.lease_ttl_s(Step.DESIGN, llm)
    assert llm.anthropic_timeout_s < ttl <= visibility_s / 2


def test_lease_never_outlasts_half_the_visibility_timeout() -> None:
    # A run waiting for a held lease sleeps as a countdown; one longer than the visibility
    # timeout would be redelivered while it waits.
    # (The LLM design's longer lease: the parametrised test above, 600 s among its cases.)
    quick = Settings(visibility_timeout_s=30, poll_interval_s=5)
    assert all(tasks.lease_ttl_s(step, quick) <= 15 for step in Step)
