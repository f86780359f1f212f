"""The store's two calls of a step run (`begin_step`, `end_step`), against fakeredis and a real
redis-server alike: what each one-round-trip script does must be what the separate calls
(`acquire_lease`, `enter_step`, `get`; `update`, `release_lease`) did."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import fakeredis
import pytest

from ktrdr_tasks.models import OperationStatus, Phase, Progress
from ktrdr_tasks.steps import Step
from ktrdr_tasks.store import Store, lease_key
from tests.support.cycles import CYCLE_ID, make_cycle
from tests.support.processes import redis_server

LEASE = Step.POLL_TRAINING.name


@pytest.fixture(scope="module")
def real_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis-step-calls")) as server:
        yield server.url


@pytest.fixture(params=["fakeredis", "redis-server"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "fakeredis":
        yield Store(fakeredis.FakeRedis(decode_responses=True), retention_s=3600)
    else:
        store = Store.from_url(request.getfixturevalue("real_redis_url"), retention_s=3600)
        store.redis.flushdb()
        yield store
        store.redis.flushdb()


def begin(store: Store, token: str, step: Step = Step.POLL_TRAINING, ttl_s: float = 30):
    return store.begin_step(CYCLE_ID, step, step.phase, step.name, token, ttl_s)


def lease_holder(store: Store) -> str | None:
    return store.redis.get(lease_key(CYCLE_ID, LEASE))


def test_begin_takes_the_lease_enters_the_step_and_returns_the_record(store: Store) -> None:
    make_cycle(store, step=Step.START_TRAINING, metadata={"strategy_name": "s1"})

    entry = begin(store, "run-1")

    assert entry.state == "ok"
    assert entry.operation is not None
    assert entry.operation.step == Step.POLL_TRAINING
    assert entry.operation.status is OperationStatus.RUNNING
    assert entry.operation.phase is Phase.TRAINING
    assert entry.operation.strategy_name == "s1"
    assert entry.operation.started_at is not None
    assert lease_holder(store) == "run-1"
    assert store.get(CYCLE_ID).step == Step.POLL_TRAINING


def test_begin_while_another_run_holds_the_lease_says_for_how_long(store: Store) -> None:
    make_cycle(store, step=Step.START_TRAINING)
    begin(store, "run-1", ttl_s=30)

    entry = begin(store, "run-2")

    assert entry.state == "held"
    assert entry.operation is None
    assert 25 < entry.lease_remaining_s <= 30
    assert lease_holder(store) == "run-1"


def test_the_same_run_entering_again_keeps_its_lease(store: Store) -> None:
    make_cycle(store, step=Step.START_TRAINING)
    begin(store, "run-1", ttl_s=5)

    assert begin(store, "run-1", ttl_s=30).state == "ok"

    assert store.lease_remaining_s(CYCLE_ID, LEASE) > 25


@pytest.mark.parametrize("final", [OperationStatus.CANCELLED, OperationStatus.COMPLETED])
def test_begin_on_an_ended_cycle_refuses_and_leaves_no_lease(
    store: Store, final: OperationStatus
) -> None:
    make_cycle(store, step=Step.POLL_TRAINING)
    store.finish(CYCLE_ID, final)

    assert begin(store, "run-1").state == "ended"

    assert lease_holder(store) is None
    assert store.get(CYCLE_ID).status is final


def test_begin_on_an_unknown_cycle_is_ended(store: Store) -> None:
    assert begin(store, "run-1").state == "ended"
    assert lease_holder(store) is None


def test_begin_of_a_step_the_chain_has_passed_is_stale_and_moves_nothing(store: Store) -> None:
    make_cycle(store, step=Step.TRAINING_GATE)

    entry = begin(store, "run-1", step=Step.START_TRAINING)

    assert entry.state == "stale"
    assert store.redis.get(lease_key(CYCLE_ID, Step.START_TRAINING.name)) is None
    assert store.get(CYCLE_ID).step == Step.TRAINING_GATE


def test_end_writes_the_change_and_lets_the_next_run_take_the_step(store: Store) -> None:
    make_cycle(store, step=Step.START_TRAINING)
    begin(store, "run-1")

    written = store.end_step(
        CYCLE_ID,
        LEASE,
        "run-1",
        progress=Progress(percentage=60, current_step="Epoch 5/10"),
        metadata={"training_status": "running"},
    )

    assert written
    record = store.get(CYCLE_ID)
    assert record.progress.percentage == 60
    assert record.metadata["training_status"] == "running"
    assert lease_holder(store) is None
    assert begin(store, "run-2").state == "ok"


def test_end_after_a_cancel_writes_nothing_and_still_lets_go(store: Store) -> None:
    make_cycle(store, step=Step.START_TRAINING)
    begin(store, "run-1")
    store.cancel(CYCLE_ID)

    written = store.end_step(CYCLE_ID, LEASE, "run-1", metadata={"training_status": "running"})

    assert not written
    record = store.get(CYCLE_ID)
    assert record.status is OperationStatus.CANCELLED
    assert "training_status" not in record.metadata
    assert lease_holder(store) is None


def test_end_by_a_run_whose_lease_lapsed_leaves_the_new_holder_alone(store: Store) -> None:
    make_cycle(store, step=Step.START_TRAINING)
    begin(store, "run-1")
    store.redis.delete(lease_key(CYCLE_ID, LEASE))  # run-1's lease expired
    begin(store, "run-2")

    store.end_step(CYCLE_ID, LEASE, "run-1", metadata={"training_status": "running"})

    assert lease_holder(store) == "run-2"
