"""The store's contract, run against fakeredis and a real redis-server alike."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import fakeredis
import pytest

from ktrdr_tasks.errors import OperationStateError, StoreUnavailableError
from ktrdr_tasks.models import Operation, OperationStatus, Phase, Progress, iso, utc_now
from ktrdr_tasks.store import Store, operation_key
from tests.support.processes import redis_server


@pytest.fixture(scope="module")
def real_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis-store")) as server:
        yield server.url


@pytest.fixture(params=["fakeredis", "redis-server"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "fakeredis":
        client = fakeredis.FakeRedis(decode_responses=True)
        yield Store(client, retention_s=3600)
    else:
        url = request.getfixturevalue("real_redis_url")
        store = Store.from_url(url, retention_s=3600)
        store.redis.flushdb()
        yield store
        store.redis.flushdb()


def new_operation(op_id: str = "op_agent_research_20260101_000000_abcdef01") -> Operation:
    now = iso(utc_now())
    return Operation(operation_id=op_id, created_at=now, heartbeat_at=now, task_ids=["t1", "t2"])


def test_create_and_read_back(store: Store) -> None:
    op = new_operation()
    op.metadata["bypass_gates"] = True
    assert store.create_operation(op, limit=1) == []
    read = store.get(op.operation_id)
    assert read.status is OperationStatus.PENDING
    assert read.task_ids == ["t1", "t2"]
    assert read.metadata == {"bypass_gates": True}
    assert store.active_ids() == [op.operation_id]


def test_limit_refuses_and_names_the_active_cycle(store: Store) -> None:
    store.create_operation(new_operation("a"), limit=1)
    assert store.create_operation(new_operation("b"), limit=1) == ["a"]
    assert store.find("b") is None


def test_fifty_concurrent_creates_admit_exactly_the_limit(store: Store) -> None:
    limit = 3
    outcomes: list[bool] = []
    barrier = threading.Barrier(50)

    def attempt(i: int) -> None:
        barrier.wait()
        outcomes.append(store.create_operation(new_operation(f"op{i}"), limit=limit) == [])

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count(True) == limit
    assert len(store.active_ids()) == limit


def test_terminal_is_final(store: Store) -> None:
    store.create_operation(new_operation("a"), limit=1)
    assert store.finish("a", OperationStatus.CANCELLED, error_message="stop")
    assert not store.finish("a", OperationStatus.COMPLETED)
    assert not store.update("a", status=OperationStatus.RUNNING, metadata={"x": 1})
    record = store.get("a")
    assert record.status is OperationStatus.CANCELLED
    assert "x" not in record.metadata
    assert store.active_ids() == []


def test_cancel_racing_completion_never_yields_completed_after_cancel(store: Store) -> None:
    for round_ in range(20):
        op_id = f"race{round_}"
        store.create_operation(new_operation(op_id), limit=100)
        barrier = threading.Barrier(50)
        cancelled: list[bool] = []

        def racer(
            i: int,
            op_id: str = op_id,
            barrier: threading.Barrier = barrier,
            cancelled: list[bool] = cancelled,
        ) -> None:
            barrier.wait()
            if i % 2:
                try:
                    store.cancel(op_id)
                    cancelled.append(True)
                except OperationStateError:
                    pass
            else:
                store.finish(op_id, OperationStatus.COMPLETED)

        threads = [threading.Thread(target=racer, args=(i,)) for i in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        final = store.get(op_id).status
        assert len(cancelled) <= 1
        assert final is (OperationStatus.CANCELLED if cancelled else OperationStatus.COMPLETED)


def test_progress_never_goes_backwards(store: Store) -> None:
    store.create_operation(new_operation("a"), limit=1)
    store.update("a", progress=Progress(percentage=50, current_step="half"))
    late = Progress(percentage=40, current_step="late write")
    store.update("a", progress=late, phase=Phase.TRAINING)
    record = store.get("a")
    assert record.progress.percentage == 50
    assert record.progress.current_step == "half"
    assert record.phase is Phase.TRAINING  # the rest of a regressing update still applies


def test_step_only_moves_forward(store: Store) -> None:
    store.create_operation(new_operation("a"), limit=1)
    assert store.enter_step("a", 2, Phase.TRAINING) == "ok"
    assert store.enter_step("a", 2, Phase.TRAINING) == "ok"  # a redelivery of the same step
    assert store.enter_step("a", 1, Phase.DESIGNING) == "stale"
    store.finish("a", OperationStatus.FAILED, error_message="x")
    assert store.enter_step("a", 3, Phase.TRAINING) == "ended"


def test_started_at_is_when_the_cycle_first_ran(store: Store) -> None:
    op = new_operation()
    store.create_operation(op, limit=1)
    assert store.get(op.operation_id).started_at is None
    assert store.enter_step(op.operation_id, 1, Phase.DESIGNING) == "ok"
    first = store.get(op.operation_id).started_at
    store.redis.hset(operation_key(op.operation_id), "started_at", "2001-01-01T00:00:00Z")

    assert store.enter_step(op.operation_id, 2, Phase.TRAINING) == "ok"

    assert first is not None
    assert store.get(op.operation_id).started_at == "2001-01-01T00:00:00Z"


def test_a_write_that_is_no_heartbeat_leaves_the_newest_one(store: Store) -> None:
    op = new_operation()
    store.create_operation(op, limit=1)
    store.redis.hset(operation_key(op.operation_id), "heartbeat_at", "2030-01-01T00:00:00Z")

    assert store.update(op.operation_id, bookkeeping={"resume_count": 1}, heartbeat=False)
    assert store.get(op.operation_id).heartbeat_at == "2030-01-01T00:00:00Z"

    assert store.update(op.operation_id, bookkeeping={"resume_count": 2})
    assert store.get(op.operation_id).heartbeat_at != "2030-01-01T00:00:00Z"


def test_metadata_keys_are_merged_not_replaced(store: Store) -> None:
    store.create_operation(new_operation("a"), limit=1)
    store.update("a", metadata={"strategy_name": "s"})
    store.update("a", metadata={"training_operation_id": "t"})
    assert store.get("a").metadata == {"strategy_name": "s", "training_operation_id": "t"}


def test_finished_operations_expire_after_retention(store: Store) -> None:
    store.create_operation(new_operation("a"), limit=1)
    store.finish("a", OperationStatus.COMPLETED)
    ttl = store.redis.ttl(operation_key("a"))
    assert 3500 < ttl <= 3600
    store.create_operation(new_operation("b"), limit=1)
    assert store.redis.ttl(operation_key("b")) == -1


def test_listing_is_newest_first_and_skips_expired(store: Store) -> None:
    for op_id in ("a", "b", "c"):
        store.create_operation(new_operation(op_id), limit=10)
    store.redis.delete(operation_key("b"))
    assert [op.operation_id for op in store.list_operations(10)] == ["c", "a"]
    store.finish("a", OperationStatus.FAILED, error_message="x")
    failed = store.list_operations(10, OperationStatus.FAILED)
    assert [op.operation_id for op in failed] == ["a"]


def test_unknown_operation_is_a_state_error(store: Store) -> None:
    with pytest.raises(OperationStateError, match="unknown operation"):
        store.get("nope")
    with pytest.raises(OperationStateError):
        store.cancel("nope")


def test_cancel_of_an_ended_cycle_is_refused(store: Store) -> None:
    store.create_operation(new_operation("a"), limit=1)
    store.finish("a", OperationStatus.COMPLETED)
    with pytest.raises(OperationStateError, match="already ended"):
        store.cancel("a")


def test_lease_admits_one_run(store: Store) -> None:
    assert store.acquire_lease("a", "POLL", "run1", 10)
    assert not store.acquire_lease("a", "POLL", "run2", 10)
    store.release_lease("a", "POLL", "run2")  # not its lease: no effect
    assert not store.acquire_lease("a", "POLL", "run2", 10)
    store.release_lease("a", "POLL", "run1")
    assert store.acquire_lease("a", "POLL", "run2", 10)


def test_history_is_recorded_once_by_the_final_writer(store: Store) -> None:
    store.create_operation(new_operation("a"), limit=1)
    store.update("a", metadata={"strategy_name": "s", "design": {"fingerprint": "f1"}})
    store.finish("a", OperationStatus.FAILED, error_message="boom")
    store.finish("a", OperationStatus.COMPLETED)
    rows = store.recent_history()
    assert len(rows) == 1
    assert rows[0]["fingerprint"] == "f1"
    assert rows[0]["verdict"] == "failed"


def test_unreachable_redis_is_a_clear_error_without_the_password() -> None:
    store = Store.from_url(
        "redis://:s3cret@127.0.0.1:1/0", 3600, safe_url="redis://:***@127.0.0.1:1/0"
    )
    with pytest.raises(StoreUnavailableError) as error:
        store.ping()
    assert "127.0.0.1:1" in str(error.value)
    assert "s3cret" not in str(error.value)


def test_an_active_member_whose_record_is_gone_never_blocks_a_trigger(store: Store) -> None:
    store.create_operation(new_operation("a"), limit=1)
    store.redis.delete(operation_key("a"))  # e.g. evicted: its final write never happened

    assert store.create_operation(new_operation("b"), limit=1) == []
    assert store.active_ids() == ["b"]


def test_bookkeeping_is_typed_kept_apart_and_merged_field_by_field(store: Store) -> None:
    store.create_operation(new_operation("a"), limit=1)
    store.update("a", bookkeeping={"transient_errors": 2}, metadata={"strategy_name": "s"})
    store.update("a", bookkeeping={"poll_task_id": "p1"})

    record = store.get("a")
    assert record.bookkeeping.transient_errors == 2
    assert record.bookkeeping.poll_task_id == "p1"
    assert record.metadata == {"strategy_name": "s"}
    with pytest.raises(ValueError, match="not bookkeeping fields: nonsense"):
        store.update("a", bookkeeping={"nonsense": 1})


def test_no_script_spells_a_key_itself() -> None:
    # Every key a script touches comes in KEYS, built from the one prefix by the key functions.
    from ktrdr_tasks import store as module

    scripts = [v for v in vars(module).values() if isinstance(v, str) and "redis.call" in v]
    assert len(scripts) >= 5
    assert [script for script in scripts if f"{module.PREFIX}:" in script] == []
