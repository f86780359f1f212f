"""The reconciler over fakeredis with a controlled clock: resume what it can, fail what is lost
(cancelling the remote job), and never touch a healthy cycle. Its services and the function
that enqueues a resumed chain are handed in; nothing is monkeypatched."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import fakeredis
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from ktrdr_tasks.cycle import Services
from ktrdr_tasks.models import OperationStatus, Phase, Progress
from ktrdr_tasks.reconciler import MAX_RESUMES, reconcile_cycles
from ktrdr_tasks.settings import Settings
from ktrdr_tasks.steps import Step
from ktrdr_tasks.store import Store
from tests.support.cycles import TRAINING_ID, Remote, make_cycle

Reconcile = Callable[[float], dict[str, list[str]]]

RESUME_AFTER = 60.0
LOST_AFTER = 600.0


@dataclass
class Enqueued:
    chains: list[tuple[str, dict[Step, str]]] = field(default_factory=list)

    def __call__(self, op_id: str, ids: dict[Step, str]) -> None:
        """Stands in for the broker: records the chains the reconciler enqueues."""
        self.chains.append((op_id, ids))


@pytest.fixture
def store() -> Store:
    return Store(fakeredis.FakeRedis(decode_responses=True), retention_s=3600)


@pytest.fixture
def settings() -> Settings:
    return Settings(resume_after_s=RESUME_AFTER, lost_after_s=LOST_AFTER)


@pytest.fixture
def remote() -> Remote:
    return Remote()


@pytest.fixture
def enqueued() -> Enqueued:
    return Enqueued()


@pytest.fixture
def reconcile(store: Store, settings: Settings, remote: Remote, enqueued: Enqueued) -> Reconcile:
    """One reconciler pass at the given clock, over this test's store and training API."""
    services: Services = remote.services(store, settings)
    return lambda now: reconcile_cycles(services, now, enqueued)


def later(seconds: float) -> float:
    return time.time() + seconds


def test_healthy_cycle_is_not_touched(
    store: Store, remote: Remote, enqueued: Enqueued, reconcile: Reconcile
) -> None:
    op = make_cycle(store, step=Step.POLL_TRAINING, training_id=TRAINING_ID)
    before = store.redis.hgetall(f"ktrdr:op:{op.operation_id}")

    report = reconcile(later(RESUME_AFTER - 5))

    assert report == {"resumed": [], "failed": []}
    assert store.redis.hgetall(f"ktrdr:op:{op.operation_id}") == before
    assert enqueued.chains == [] and remote.deletes == []


def test_stale_polling_cycle_is_resumed_at_its_step_with_a_new_poll_owner(
    store: Store, remote: Remote, enqueued: Enqueued, reconcile: Reconcile
) -> None:
    op = make_cycle(store, step=Step.POLL_TRAINING, training_id=TRAINING_ID)

    report = reconcile(later(RESUME_AFTER + 1))

    assert report == {"resumed": [op.operation_id], "failed": []}
    [(op_id, ids)] = enqueued.chains
    assert op_id == op.operation_id
    assert sorted(ids) == [
        Step.POLL_TRAINING,
        Step.TRAINING_GATE,
        Step.START_BACKTEST,
        Step.POLL_BACKTEST,
        Step.BACKTEST_GATE,
        Step.ASSESS,
    ]
    after = store.get(op.operation_id)
    assert after.status is OperationStatus.RUNNING
    assert after.bookkeeping.resume_count == 1
    assert after.bookkeeping.poll_task_id == ids[Step.POLL_TRAINING]
    assert after.bookkeeping.backtest_poll_task_id == ids[Step.POLL_BACKTEST]
    assert set(ids.values()) <= set(after.task_ids) and "t0" in after.task_ids
    # A resume is not progress: "lost since" still counts from the last real heartbeat.
    assert after.heartbeat_at == op.heartbeat_at
    assert remote.deletes == []


def test_never_started_cycle_is_resumed_from_design(
    store: Store, remote: Remote, enqueued: Enqueued, reconcile: Reconcile
) -> None:
    make_cycle(store)

    reconcile(later(RESUME_AFTER + 1))

    [(_, ids)] = enqueued.chains
    assert min(ids) == Step.DESIGN and len(ids) == len(Step)


def test_resume_at_gate_leaves_the_poll_owner_alone(
    store: Store, remote: Remote, enqueued: Enqueued, reconcile: Reconcile
) -> None:
    op = make_cycle(store, step=Step.TRAINING_GATE, bookkeeping={"poll_task_id": "p1"})

    reconcile(later(RESUME_AFTER + 1))

    [(_, ids)] = enqueued.chains
    assert min(ids) == Step.TRAINING_GATE
    assert store.get(op.operation_id).bookkeeping.poll_task_id == "p1"


def test_a_resumed_cycle_gets_a_full_resume_period_before_the_next_resume(
    store: Store, remote: Remote, enqueued: Enqueued, reconcile: Reconcile
) -> None:
    make_cycle(store, step=Step.DESIGN)
    reconcile(later(RESUME_AFTER + 1))

    reconcile(later(RESUME_AFTER + 15))  # the next beat, 14 s on
    assert len(enqueued.chains) == 1

    reconcile(later(2 * RESUME_AFTER + 2))
    assert len(enqueued.chains) == 2


def test_cycle_stale_past_lost_after_is_failed_and_its_remote_job_cancelled(
    store: Store, remote: Remote, enqueued: Enqueued, reconcile: Reconcile
) -> None:
    op = make_cycle(store, step=Step.POLL_TRAINING, training_id=TRAINING_ID)

    report = reconcile(later(LOST_AFTER + 1))

    assert report == {"resumed": [], "failed": [op.operation_id]}
    after = store.get(op.operation_id)
    assert after.status is OperationStatus.FAILED
    assert after.error_message.startswith(
        f"cycle lost: no worker progressed it since {op.heartbeat_at}"
    )
    assert "celery -A ktrdr_tasks worker" in after.error_message
    assert remote.deletes == [TRAINING_ID]
    assert enqueued.chains == []
    assert store.active_ids() == []


def reconcile_passes(
    reconcile: Reconcile, passes: int, between: Callable[[], object] = lambda: None
) -> float:
    """Run `passes` reconciler passes a full resume period apart; return the clock after them."""
    clock = RESUME_AFTER + 1
    for _ in range(passes):
        reconcile(later(clock))
        between()
        clock += RESUME_AFTER + 1
    return clock


def test_resumes_without_progress_stop_but_the_cycle_fails_only_at_lost_after(
    store: Store, remote: Remote, enqueued: Enqueued, reconcile: Reconcile
) -> None:
    op = make_cycle(store, step=Step.START_TRAINING)
    clock = reconcile_passes(reconcile, MAX_RESUMES + 2)
    assert clock < LOST_AFTER
    assert len(enqueued.chains) == MAX_RESUMES
    assert store.get(op.operation_id).status is OperationStatus.RUNNING

    report = reconcile(later(LOST_AFTER + 1))

    assert report["failed"] == [op.operation_id]
    after = store.get(op.operation_id)
    assert after.status is OperationStatus.FAILED
    assert f"{MAX_RESUMES} resumes" in after.error_message
    assert remote.deletes == []  # nothing had started remotely


def test_progress_after_a_resume_starts_the_resume_count_anew(
    store: Store, remote: Remote, enqueued: Enqueued, reconcile: Reconcile
) -> None:
    op = make_cycle(store, step=Step.POLL_TRAINING, training_id=TRAINING_ID)
    clock = reconcile_passes(reconcile, MAX_RESUMES)
    assert len(enqueued.chains) == MAX_RESUMES

    # The resumed poll reported training progress, then its worker died too.
    store.update(op.operation_id, progress=Progress(percentage=50, current_step="Epoch 4/10"))
    report = reconcile(later(clock))

    assert report["resumed"] == [op.operation_id]
    assert store.get(op.operation_id).bookkeeping.resume_count == 1


def test_step_that_kills_its_worker_every_time_is_not_resumed_forever(
    store: Store, remote: Remote, enqueued: Enqueued, reconcile: Reconcile
) -> None:
    # Each resumed run enters its step (writing the heartbeat), then its worker dies.
    op = make_cycle(store, step=Step.START_TRAINING)

    def resumed_run_enters_and_dies() -> None:
        assert store.enter_step(op.operation_id, Step.START_TRAINING, Phase.TRAINING) == "ok"

    reconcile_passes(reconcile, MAX_RESUMES + 3, between=resumed_run_enters_and_dies)

    assert len(enqueued.chains) == MAX_RESUMES
    report = reconcile(later(LOST_AFTER + 1))
    assert report["failed"] == [op.operation_id]


def test_lost_cycle_cancel_is_queued_when_the_api_is_unreachable(
    store: Store, remote: Remote, enqueued: Enqueued, reconcile: Reconcile
) -> None:
    make_cycle(store, step=Step.POLL_TRAINING, training_id=TRAINING_ID)
    remote.up = False

    reconcile(later(LOST_AFTER + 1))

    assert remote.deletes == []
    assert [args[0] for args in remote.queued_cancels] == [TRAINING_ID]


def test_stale_cycle_whose_step_lease_is_held_is_left_to_its_live_run(
    store: Store, remote: Remote, enqueued: Enqueued, reconcile: Reconcile
) -> None:
    # A long design renews its lease but writes no heartbeat until it reports progress.
    op = make_cycle(store, step=Step.DESIGN)
    assert store.acquire_lease(op.operation_id, Step.DESIGN.name, "live-run", ttl_s=30)

    report = reconcile(later(RESUME_AFTER + 1))

    assert report == {"resumed": [], "failed": []}
    assert store.get(op.operation_id).status is OperationStatus.RUNNING


def test_finished_cycles_are_never_touched(
    store: Store, remote: Remote, enqueued: Enqueued, reconcile: Reconcile
) -> None:
    op = make_cycle(store, step=Step.POLL_TRAINING, training_id=TRAINING_ID)
    store.finish(op.operation_id, OperationStatus.COMPLETED)

    report = reconcile(later(LOST_AFTER * 10))

    assert report == {"resumed": [], "failed": []}
    assert store.get(op.operation_id).status is OperationStatus.COMPLETED
    assert remote.deletes == []


def test_two_reconcilers_racing_fail_a_lost_cycle_once(
    store: Store, remote: Remote, enqueued: Enqueued, reconcile: Reconcile
) -> None:
    op = make_cycle(store, step=Step.POLL_TRAINING, training_id=TRAINING_ID)
    reports: list[dict] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        barrier.wait()
        reports.append(reconcile(later(LOST_AFTER + 1)))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(len(r["failed"]) for r in reports) == [0, 1]
    assert remote.deletes == [TRAINING_ID]
    assert store.get(op.operation_id).status is OperationStatus.FAILED


@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    age=st.floats(min_value=0, max_value=2 * LOST_AFTER),
    step=st.integers(min_value=0, max_value=int(Step.ASSESS)),
    resumes=st.integers(min_value=0, max_value=MAX_RESUMES + 1),
)
def test_decision_follows_the_rules_for_any_age_step_and_resume_count(
    age: float, step: int, resumes: int, settings: Settings
) -> None:
    store = Store(fakeredis.FakeRedis(decode_responses=True), retention_s=3600)
    enqueued = Enqueued()
    services = Remote().services(store, settings)
    op = make_cycle(store, step=step)
    store.update(
        op.operation_id,
        bookkeeping={
            "resume_count": resumes,
            "resumed_at_step": op.step,
            "resumed_at_pct": op.progress.percentage,
        },
        heartbeat_at=op.heartbeat_at,
    )

    report = reconcile_cycles(services, later(age), enqueued)

    after = store.get(op.operation_id)
    if age < RESUME_AFTER - 1:  # a second of slack for the real clock under the test
        assert report == {"resumed": [], "failed": []}
        assert after.status is op.status
    elif age > LOST_AFTER + 1:
        assert report["failed"] == [op.operation_id]
        assert after.status is OperationStatus.FAILED
    elif RESUME_AFTER + 1 < age < LOST_AFTER - 1 and resumes >= MAX_RESUMES:
        assert report == {"resumed": [], "failed": []}
        assert after.status is op.status
    elif age > RESUME_AFTER + 1 and age < LOST_AFTER - 1:
        assert report["resumed"] == [op.operation_id]
        assert min(enqueued.chains[0][1]) == max(Step.DESIGN, step)
