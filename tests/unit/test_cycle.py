"""The step functions of `cycle.py`, and the runner over them, on fakeredis and an httpx
MockTransport: what each step writes, what it asks the training API, how it ends. The
services are built here and handed in; nothing is monkeypatched."""

from __future__ import annotations

import json
import time
from pathlib import Path

import fakeredis
import httpx
import pytest

from ktrdr_tasks import cycle, runner, workflow
from ktrdr_tasks.cycle import Ended, Fail, Reschedule, Services
from ktrdr_tasks.models import OperationStatus, Phase
from ktrdr_tasks.settings import Settings
from ktrdr_tasks.steps import Step
from ktrdr_tasks.store import Store
from tests.support.cycles import CYCLE_ID, TRAINING_ID, Remote, make_cycle
from tests.support.fake_training_api import GOOD_BACKTEST, GOOD_RESULT, POOR_RESULT

STRATEGY = "unit_strategy"
BACKTEST_ID = "op_backtesting_20260101_000000_cafe0001"
START = "POST /api/v1/trainings/start"
POLL = f"GET /api/v1/operations/{TRAINING_ID}"
STRATEGY_YAML = f"""
name: {STRATEGY}
training_data:
  symbols: {{mode: single, symbol: EURUSD}}
  timeframes: {{mode: single, timeframe: 1h}}
  date_range: {{start: "2017-05-01", end: "2018-02-01"}}
"""


@pytest.fixture
def store() -> Store:
    return Store(fakeredis.FakeRedis(decode_responses=True), retention_s=3600)


@pytest.fixture
def remote() -> Remote:
    remote = Remote()
    remote.answers[START] = lambda _: httpx.Response(
        200, json={"success": True, "task_id": TRAINING_ID, "status": "training_started"}
    )
    return remote


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    (tmp_path / f"{STRATEGY}.yaml").write_text(STRATEGY_YAML)
    return Settings(
        strategies_dir=tmp_path, poll_interval_s=5, poll_max_errors=3, api_url="http://trainer"
    )


@pytest.fixture
def services(store: Store, remote: Remote, settings: Settings) -> Services:
    return remote.services(store, settings)


def answer_poll(remote: Remote, status: str, **data: object) -> None:
    body = {"success": True, "data": {"operation_id": TRAINING_ID, "status": status, **data}}
    remote.answers[POLL] = lambda _: httpx.Response(200, json=body)


def cycle_ready_to_start(store: Store) -> None:
    make_cycle(
        store,
        step=Step.START_TRAINING,
        metadata={
            "strategy_name": STRATEGY,
            "training_params": {"symbols": ["EURUSD"], "timeframes": ["1h"]},
        },
    )


def polling(store: Store, **bookkeeping: object) -> None:
    make_cycle(
        store,
        step=Step.POLL_TRAINING,
        training_id=TRAINING_ID,
        metadata={"strategy_name": STRATEGY, "training_status": "running"},
        bookkeeping=bookkeeping or None,
    )


def posts(remote: Remote) -> list[dict]:
    return [json.loads(r.content) for r in remote.requests if r.method == "POST"]


# -- load_training_params -------------------------------------------------------------------


def test_load_training_params_records_symbols_timeframes_and_dates(
    store: Store, settings: Settings
) -> None:
    make_cycle(store, step=Step.LOAD_TRAINING_PARAMS, metadata={"strategy_name": STRATEGY})

    params = cycle.run_load_training_params(store, settings, store.get(CYCLE_ID))

    assert params["symbols"] == ["EURUSD"] and params["timeframes"] == ["1h"]
    assert (params["start_date"], params["end_date"]) == ("2017-05-01", "2018-02-01")
    record = store.get(CYCLE_ID)
    assert record.metadata["training_params"] == params
    assert record.progress.percentage == Step.LOAD_TRAINING_PARAMS.start


# -- start_training -------------------------------------------------------------------------


def test_start_posts_once_with_the_cycle_id_as_idempotency_key(
    store: Store, remote: Remote, services: Services, settings: Settings
) -> None:
    cycle_ready_to_start(store)

    outcome = cycle.run_start_training(services, store.get(CYCLE_ID))

    assert outcome == {"training_operation_id": TRAINING_ID}
    [body] = posts(remote)
    assert body["task_id"] == CYCLE_ID and body["strategy_name"] == STRATEGY
    record = store.get(CYCLE_ID)
    assert record.training_operation_id == TRAINING_ID
    assert record.progress.percentage == Step.START_TRAINING.end
    deadline = record.bookkeeping.training_deadline_ts
    assert deadline is not None
    assert deadline == pytest.approx(time.time() + settings.training_timeout_s, abs=5)


def test_start_redelivered_after_the_id_was_stored_never_posts_again(
    store: Store, remote: Remote, services: Services
) -> None:
    cycle_ready_to_start(store)
    store.update(CYCLE_ID, metadata={"training_operation_id": TRAINING_ID})

    outcome = cycle.run_start_training(services, store.get(CYCLE_ID))

    assert outcome == {"training_operation_id": TRAINING_ID}
    assert posts(remote) == []


def cancel_during_the_post(store: Store, remote: Remote, api_goes_down: bool) -> None:
    """The user's cancel lands while the POST is in flight (the canceller sees no id yet)."""

    def start(_: httpx.Request) -> httpx.Response:
        store.cancel(CYCLE_ID)
        remote.up = not api_goes_down
        return httpx.Response(200, json={"success": True, "task_id": TRAINING_ID})

    remote.answers[START] = start


def test_cancel_during_the_start_with_the_api_down_queues_the_cancel_no_orphan(
    store: Store, remote: Remote, services: Services
) -> None:
    cycle_ready_to_start(store)
    cancel_during_the_post(store, remote, api_goes_down=True)

    outcome = cycle.run_start_training(services, store.get(CYCLE_ID))

    assert isinstance(outcome, Ended)
    assert remote.deletes == []  # the API was down: the cancel went to the retrying task
    assert [cancel[0] for cancel in remote.queued_cancels] == [TRAINING_ID]
    record = store.get(CYCLE_ID)
    assert record.status is OperationStatus.CANCELLED
    assert record.training_operation_id is None


def test_cancel_during_the_start_cancels_the_new_job_at_once(
    store: Store, remote: Remote, services: Services
) -> None:
    cycle_ready_to_start(store)
    cancel_during_the_post(store, remote, api_goes_down=False)

    outcome = runner.run_step(Step.START_TRAINING, CYCLE_ID, services, "task-1")

    assert isinstance(outcome, Ended)
    assert remote.deletes == [TRAINING_ID] and remote.queued_cancels == []
    assert store.get(CYCLE_ID).status is OperationStatus.CANCELLED


def test_start_refused_for_a_bad_strategy_fails_the_cycle_with_the_services_words(
    store: Store, remote: Remote, services: Services
) -> None:
    cycle_ready_to_start(store)
    remote.answers[START] = lambda _: httpx.Response(
        400, json={"detail": f"Strategy file not found: {STRATEGY}.yaml"}
    )

    outcome = runner.run_step(Step.START_TRAINING, CYCLE_ID, services, "task-1")

    assert isinstance(outcome, Fail)
    record = store.get(CYCLE_ID)
    assert record.status is OperationStatus.FAILED
    assert record.error_message.startswith("starting training failed: ")
    assert f"Strategy file not found: {STRATEGY}.yaml" in record.error_message


# -- poll_training --------------------------------------------------------------------------


def test_poll_of_a_running_job_reschedules_and_maps_its_progress(
    store: Store, remote: Remote, services: Services
) -> None:
    polling(store)
    answer_poll(remote, "running", progress={"percentage": 50, "current_step": "Epoch 5/10"})

    outcome = cycle.run_poll_training(services, store.get(CYCLE_ID))

    assert outcome == Reschedule(5)
    assert isinstance(outcome, Reschedule)
    store.update(CYCLE_ID, **outcome.changes)  # as the runner does when it lets go of the step
    record = store.get(CYCLE_ID)
    assert record.progress.percentage == 60  # halfway through the poll step's 35-85 %
    assert record.progress.context == {"epoch": 5, "total_epochs": 10}
    assert record.metadata["training_status"] == "running"


def test_poll_of_a_completed_job_stores_the_result_for_the_gate(
    store: Store, remote: Remote, services: Services
) -> None:
    polling(store)
    answer_poll(remote, "completed", result_summary=GOOD_RESULT)

    outcome = cycle.run_poll_training(services, store.get(CYCLE_ID))

    assert outcome == {"training": "completed"}
    record = store.get(CYCLE_ID)
    assert record.metadata["training_result"] == GOOD_RESULT
    assert record.metadata["model_path"] == GOOD_RESULT["model_path"]
    assert record.progress.percentage == Step.TRAINING_GATE.start


def test_job_failed_remotely_fails_the_cycle_with_its_message_and_no_cancel(
    store: Store, remote: Remote, services: Services
) -> None:
    polling(store)
    answer_poll(remote, "failed", error_message="No data found in cache for GBPUSD 1h")

    outcome = runner.run_step(Step.POLL_TRAINING, CYCLE_ID, services, "task-1")

    assert isinstance(outcome, Fail)
    record = store.get(CYCLE_ID)
    assert record.status is OperationStatus.FAILED
    assert "No data found in cache for GBPUSD 1h" in record.error_message
    assert remote.deletes == []  # nothing runs remotely


def test_job_the_service_forgot_fails_the_cycle_saying_so(
    store: Store, remote: Remote, services: Services
) -> None:
    polling(store)
    remote.answers[POLL] = lambda _: httpx.Response(
        404, json={"detail": f"Operation not found: {TRAINING_ID}"}
    )

    runner.run_step(Step.POLL_TRAINING, CYCLE_ID, services, "task-1")

    record = store.get(CYCLE_ID)
    assert record.status is OperationStatus.FAILED
    assert "no longer knows training" in record.error_message
    assert remote.deletes == []


def test_training_past_its_deadline_is_cancelled_and_the_cycle_fails(
    store: Store, remote: Remote, services: Services
) -> None:
    polling(store, training_deadline_ts=time.time() - 1)
    answer_poll(remote, "running")

    runner.run_step(Step.POLL_TRAINING, CYCLE_ID, services, "task-1")

    record = store.get(CYCLE_ID)
    assert record.status is OperationStatus.FAILED
    assert "KTRDR_TRAINING_TIMEOUT_S" in record.error_message
    assert remote.deletes == [TRAINING_ID]


def test_completed_without_a_result_is_read_again_then_fails_without_judging(
    store: Store, remote: Remote, services: Services
) -> None:
    polling(store)
    answer_poll(remote, "completed", result_summary=None)

    outcomes = [
        runner.run_step(Step.POLL_TRAINING, CYCLE_ID, services, "task-1")
        for _ in range(cycle.EMPTY_RESULT_READS)
    ]

    assert outcomes[:-1] == [Reschedule(5)] * (cycle.EMPTY_RESULT_READS - 1)
    record = store.get(CYCLE_ID)
    assert record.status is OperationStatus.FAILED
    assert "reported no result" in record.error_message
    assert "gate" not in record.metadata
    assert remote.deletes == []


def test_poll_after_a_resume_gave_the_cycle_to_another_poll_stops(
    store: Store, remote: Remote, services: Services
) -> None:
    polling(store, poll_task_id="the-resumed-poll")
    answer_poll(remote, "running")

    outcome = runner.run_step(Step.POLL_TRAINING, CYCLE_ID, services, "the-old-poll")

    assert isinstance(outcome, Ended)
    assert [r for r in remote.requests if r.method == "GET"] == []


# -- the gate and the end -------------------------------------------------------------------


def gate_cycle(store: Store, result: dict, bypass: bool = False) -> None:
    make_cycle(
        store,
        step=Step.TRAINING_GATE,
        training_id=TRAINING_ID,
        metadata={
            "training_result": result,
            "training_status": "completed",
            "bypass_gates": bypass,
        },
    )


def test_gate_passes_a_good_training(store: Store, settings: Settings) -> None:
    gate_cycle(store, GOOD_RESULT)

    outcome = cycle.run_training_gate(store, settings, store.get(CYCLE_ID))

    assert outcome == {"gate": "passed"}
    record = store.get(CYCLE_ID)
    assert record.metadata["gate"]["outcome"] == "passed"
    assert record.progress.percentage == Step.TRAINING_GATE.end


def test_gate_failing_fails_the_cycle_with_its_reasons(
    store: Store, remote: Remote, services: Services
) -> None:
    gate_cycle(store, POOR_RESULT)

    outcome = runner.run_step(Step.TRAINING_GATE, CYCLE_ID, services, "task-1")

    assert isinstance(outcome, Fail)
    record = store.get(CYCLE_ID)
    assert record.status is OperationStatus.FAILED
    assert record.error_message.startswith("Training gate failed: accuracy_below_threshold")
    assert record.metadata["gate"]["outcome"] == "failed"
    assert remote.deletes == []  # the training had completed


def test_bypassed_gate_records_the_verdict_and_goes_on(store: Store, settings: Settings) -> None:
    gate_cycle(store, POOR_RESULT, bypass=True)

    assert cycle.run_training_gate(store, settings, store.get(CYCLE_ID)) == {"gate": "bypassed"}
    assert store.get(CYCLE_ID).status is OperationStatus.RUNNING


def test_every_step_in_table_order_takes_a_cycle_from_queued_to_completed(
    store: Store, remote: Remote, services: Services
) -> None:
    make_cycle(store, metadata={"requested_strategy": STRATEGY})
    answer_poll(remote, "completed", result_summary=GOOD_RESULT)
    backtest = {"operation_id": BACKTEST_ID, "status": "completed", "result_summary": GOOD_BACKTEST}
    remote.answers["POST /api/v1/backtests/start"] = lambda _: httpx.Response(
        200, json={"success": True, "operation_id": BACKTEST_ID, "status": "started"}
    )
    remote.answers[f"GET /api/v1/operations/{BACKTEST_ID}"] = lambda _: httpx.Response(
        200, json={"success": True, "data": backtest}
    )
    seen: list[float] = []

    for step in Step:
        outcome = runner.run_step(step, CYCLE_ID, services, f"task-{step.name}")
        assert isinstance(outcome, dict), (step, outcome)
        record = store.get(CYCLE_ID)
        assert record.phase is (Phase.DONE if step is Step.ASSESS else step.phase)
        seen.append(record.progress.percentage)

    record = store.get(CYCLE_ID)
    assert record.status is OperationStatus.COMPLETED
    assert seen == sorted(seen) and seen[-1] == 100
    assert record.result_summary["gate"] == "passed"
    assert record.result_summary["backtest_gate"] == "passed"
    assert record.result_summary["backtest"]["trades"] == 6
    assert record.result_summary["assessment"].startswith("stub")
    assert len(posts(remote)) == 2  # one training, one backtest


# -- a chain a backend enqueued itself --------------------------------------------------------


def first_task_of(chain: object) -> tuple[str, dict]:
    head = chain.tasks[0]  # type: ignore[attr-defined]
    return head.args[0], head.kwargs["new_cycle"]


def test_backends_chain_creates_its_cycle_in_its_first_task(
    store: Store, services: Services
) -> None:
    built = workflow.research_chain(strategy=STRATEGY, bypass_gates=True)
    op_id, new_cycle = first_task_of(built)
    assert op_id == built.operation_id and store.find(op_id) is None

    outcome = runner.run_step(Step.DESIGN, op_id, services, "task-1", new_cycle=new_cycle)

    assert outcome == {"strategy_name": STRATEGY}
    record = store.get(op_id)
    assert record.status is OperationStatus.RUNNING and record.metadata["bypass_gates"] is True
    assert record.task_ids == [task.id for task in built.tasks]
    assert store.active_ids() == [op_id]


def test_backends_chain_over_the_limit_is_recorded_refused_never_dropped(
    store: Store, remote: Remote, settings: Settings
) -> None:
    make_cycle(store, step=Step.POLL_TRAINING, training_id=TRAINING_ID)
    at_limit_one = remote.services(store, settings.model_copy(update={"max_active_cycles": 1}))
    op_id, new_cycle = first_task_of(workflow.research_chain(strategy=STRATEGY))

    outcome = runner.run_step(Step.DESIGN, op_id, at_limit_one, "task-1", new_cycle=new_cycle)

    assert isinstance(outcome, Ended) and not outcome.superseded
    refused = store.get(op_id)
    assert refused.status is OperationStatus.FAILED
    assert (
        refused.error_message == f"Refused (active_cycle_exists): Active cycle exists: {CYCLE_ID}"
    )
    assert refused.metadata["refused"]["operation_id"] == CYCLE_ID
    assert store.active_ids() == [CYCLE_ID]
    assert [op.operation_id for op in store.list_operations(10)] == [op_id, CYCLE_ID]


def test_backends_chain_redelivered_after_creating_its_cycle_goes_on(
    store: Store, remote: Remote, settings: Settings
) -> None:
    at_limit_one = remote.services(store, settings.model_copy(update={"max_active_cycles": 1}))
    op_id, new_cycle = first_task_of(workflow.research_chain(strategy=STRATEGY))
    runner.run_step(Step.DESIGN, op_id, at_limit_one, "task-1", new_cycle=new_cycle)

    again = runner.run_step(Step.DESIGN, op_id, at_limit_one, "task-1", new_cycle=new_cycle)

    assert again == {"strategy_name": STRATEGY}  # its own record is no other active cycle
    assert store.get(op_id).status is OperationStatus.RUNNING


def test_research_chain_takes_keywords_only() -> None:
    with pytest.raises(TypeError):
        workflow.research_chain(CYCLE_ID)  # type: ignore[misc]
