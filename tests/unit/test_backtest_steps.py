"""The backtest steps of a cycle (start, poll, gate) on fakeredis and an httpx MockTransport:
what they send, what they write, how they end, and the remote backtest never orphaned."""

from __future__ import annotations

import json
import time
from pathlib import Path

import fakeredis
import httpx
import pytest

from ktrdr_tasks import cycle, runner
from ktrdr_tasks.cycle import Ended, Fail, Reschedule, Services
from ktrdr_tasks.models import OperationStatus
from ktrdr_tasks.remote import cancel_orphaned_job
from ktrdr_tasks.settings import Settings
from ktrdr_tasks.steps import Step
from ktrdr_tasks.store import Store
from tests.support.cycles import CYCLE_ID, TRAINING_ID, Remote, make_cycle
from tests.support.fake_training_api import GOOD_BACKTEST, POOR_BACKTEST

BACKTEST_ID = "op_backtesting_20260101_000000_cafe0001"
START = "POST /api/v1/backtests/start"
POLL = f"GET /api/v1/operations/{BACKTEST_ID}"
PARAMS = {
    "symbols": ["EURUSD"],
    "timeframes": ["1h"],
    "start_date": "2017-05-01",
    "end_date": "2018-02-01",
}
TRAINED = {
    "strategy_name": "unit_strategy",
    "training_params": PARAMS,
    "training_status": "completed",
    "model_path": "models/unit_strategy/1h_v2",
    "gate": {"outcome": "passed"},
}


@pytest.fixture
def store() -> Store:
    return Store(fakeredis.FakeRedis(decode_responses=True), retention_s=3600)


@pytest.fixture
def remote() -> Remote:
    remote = Remote()
    remote.answers[START] = lambda _: httpx.Response(
        200, json={"success": True, "operation_id": BACKTEST_ID, "status": "started"}
    )
    return remote


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(strategies_dir=tmp_path, poll_interval_s=5, api_url="http://trainer")


@pytest.fixture
def services(store: Store, remote: Remote, settings: Settings) -> Services:
    return remote.services(store, settings)


def at(store: Store, step: Step, **metadata: object) -> None:
    make_cycle(store, step=step, training_id=TRAINING_ID, metadata={**TRAINED, **metadata})


def answer_poll(remote: Remote, status: str, **data: object) -> None:
    body = {"success": True, "data": {"operation_id": BACKTEST_ID, "status": status, **data}}
    remote.answers[POLL] = lambda _: httpx.Response(200, json=body)


def starts(remote: Remote) -> list[dict]:
    return [
        json.loads(r.content)
        for r in remote.requests
        if r.method == "POST" and r.url.path == "/api/v1/backtests/start"
    ]


# -- start_backtest -------------------------------------------------------------------------


def test_start_sends_the_model_out_of_sample_and_stores_the_id_once(
    store: Store, remote: Remote, services: Services
) -> None:
    at(store, Step.START_BACKTEST)

    outcome = runner.run_step(Step.START_BACKTEST, CYCLE_ID, services, "task-1")

    assert outcome == {"backtest_operation_id": BACKTEST_ID}
    [body] = starts(remote)
    assert body["model_path"] == "models/unit_strategy/1h_v2"  # exactly as training returned
    assert (body["symbol"], body["timeframe"]) == ("EURUSD", "1h")
    assert body["start_date"] == "2018-02-02"  # the day after the training window
    assert body["task_id"] == f"{CYCLE_ID}-backtest"
    assert (body["initial_capital"], body["commission"], body["slippage"]) == (
        100000.0,
        0.001,
        0.0005,
    )
    record = store.get(CYCLE_ID)
    assert record.backtest_operation_id == BACKTEST_ID
    assert record.metadata["backtest_window"]["start_date"] == "2018-02-02"
    assert record.bookkeeping.backtest_deadline_ts > time.time()
    # Redelivered: the stored id is the answer, nothing is POSTed again.
    assert runner.run_step(Step.START_BACKTEST, CYCLE_ID, services, "task-2") == outcome
    assert len(starts(remote)) == 1


def test_start_that_loses_to_a_cancel_cancels_the_backtest_it_started(
    store: Store, remote: Remote, services: Services
) -> None:
    at(store, Step.START_BACKTEST)

    def start_then_cancelled(_: httpx.Request) -> httpx.Response:
        store.cancel(CYCLE_ID)  # the user cancels while the POST is in flight
        return httpx.Response(200, json={"success": True, "operation_id": BACKTEST_ID})

    remote.answers[START] = start_then_cancelled
    outcome = cycle.run_start_backtest(services, store.get(CYCLE_ID))

    assert isinstance(outcome, Ended)
    assert remote.deletes == [BACKTEST_ID]


def test_start_without_a_model_or_with_an_overlapping_window_fails_saying_why(
    store: Store, remote: Remote, services: Services, settings: Settings
) -> None:
    at(store, Step.START_BACKTEST, model_path=None)
    outcome = runner.run_step(Step.START_BACKTEST, CYCLE_ID, services, "task-1")
    assert isinstance(outcome, Fail) and "no model_path" in outcome.message

    store2 = Store(fakeredis.FakeRedis(decode_responses=True), retention_s=3600)
    at(store2, Step.START_BACKTEST)
    overlapping = settings.model_copy(update={"backtest_start_date": "2018-01-15"})
    outcome = runner.run_step(
        Step.START_BACKTEST, CYCLE_ID, remote.services(store2, overlapping), "task-1"
    )
    assert isinstance(outcome, Fail)
    assert "overlaps the training window" in outcome.message
    assert store2.get(CYCLE_ID).error_message.startswith("starting backtest failed:")
    assert starts(remote) == []


# -- poll_backtest --------------------------------------------------------------------------


def polling(store: Store, **bookkeeping: object) -> None:
    make_cycle(
        store,
        step=Step.POLL_BACKTEST,
        training_id=TRAINING_ID,
        metadata={**TRAINED, "backtest_operation_id": BACKTEST_ID, "backtest_status": "running"},
        bookkeeping={"backtest_deadline_ts": time.time() + 600, **bookkeeping},
    )


def test_running_backtest_reschedules_with_bars_trades_and_return_so_far(
    store: Store, remote: Remote, services: Services
) -> None:
    polling(store)
    context = {"bars_processed": 40, "bars_total": 80, "trades": 2, "total_return_pct": 0.004}
    answer_poll(
        remote,
        "running",
        progress={"percentage": 50.0, "current_step": "bar 40/80", "context": context},
    )

    assert runner.run_step(Step.POLL_BACKTEST, CYCLE_ID, services, "t") == Reschedule(5)
    record = store.get(CYCLE_ID)
    assert record.progress.percentage == 94.0
    assert record.progress.context == context
    assert record.phase.value == "backtesting"


def test_completed_backtest_keeps_its_result_and_summary(
    store: Store, remote: Remote, services: Services
) -> None:
    polling(store)
    answer_poll(remote, "completed", result_summary=GOOD_BACKTEST)

    assert runner.run_step(Step.POLL_BACKTEST, CYCLE_ID, services, "t") == {"backtest": "completed"}
    meta = store.get(CYCLE_ID).metadata
    assert meta["backtest_status"] == "completed"
    assert meta["backtest_result"] == GOOD_BACKTEST
    assert meta["backtest"]["trades"] == 6 and meta["backtest"]["sharpe_ratio"] == 1.2


def test_failed_backtest_fails_the_cycle_with_ktrdrs_message_and_no_cancel(
    store: Store, remote: Remote, services: Services
) -> None:
    polling(store)
    answer_poll(remote, "failed", error_message="Model directory not found: models/x/1h_v1")

    outcome = runner.run_step(Step.POLL_BACKTEST, CYCLE_ID, services, "t")

    assert isinstance(outcome, Fail)
    record = store.get(CYCLE_ID)
    assert record.status is OperationStatus.FAILED
    assert record.error_message == (
        f"backtest {BACKTEST_ID} failed: Model directory not found: models/x/1h_v1"
    )
    assert remote.deletes == []


def test_backtest_timeout_fails_and_cancels_the_remote_backtest(
    store: Store, remote: Remote, services: Services
) -> None:
    polling(store, backtest_deadline_ts=time.time() - 1)

    outcome = runner.run_step(Step.POLL_BACKTEST, CYCLE_ID, services, "t")

    assert isinstance(outcome, Fail) and "KTRDR_BACKTEST_TIMEOUT_S" in outcome.message
    assert remote.deletes == [BACKTEST_ID]  # the backtest, not the completed training


def test_lost_backtest_fails_without_retrying_forever(
    store: Store, remote: Remote, services: Services
) -> None:
    polling(store)
    remote.answers[POLL] = lambda _: httpx.Response(
        404, json={"detail": f"Operation not found: {BACKTEST_ID}"}
    )
    outcome = runner.run_step(Step.POLL_BACKTEST, CYCLE_ID, services, "t")
    assert isinstance(outcome, Fail) and "no longer knows backtest" in outcome.message


def test_completed_without_metrics_is_read_again_then_fails(
    store: Store, remote: Remote, services: Services
) -> None:
    polling(store)
    answer_poll(remote, "completed", result_summary={})

    outcomes = [runner.run_step(Step.POLL_BACKTEST, CYCLE_ID, services, "t") for _ in range(5)]

    assert all(isinstance(o, Reschedule) for o in outcomes[:4])
    assert isinstance(outcomes[4], Fail) and "no metrics" in outcomes[4].message


def test_a_resumed_backtest_poll_owns_the_cycle(
    store: Store, remote: Remote, services: Services
) -> None:
    polling(store, backtest_poll_task_id="the-resumed-poll")
    answer_poll(remote, "running")
    assert isinstance(runner.run_step(Step.POLL_BACKTEST, CYCLE_ID, services, "old"), Ended)
    assert runner.run_step(Step.POLL_BACKTEST, CYCLE_ID, services, "the-resumed-poll") == (
        Reschedule(5)
    )


def test_cancel_during_the_backtest_cancels_the_remote_backtest(
    store: Store, remote: Remote, services: Services
) -> None:
    polling(store)
    cancelled = store.cancel(CYCLE_ID)

    assert cancel_orphaned_job(services.client, cancelled, remote.queue_cancel) == BACKTEST_ID
    assert remote.deletes == [BACKTEST_ID]
    remote.up = False  # the API is down: the cancel is queued, never dropped
    assert cancel_orphaned_job(services.client, cancelled, remote.queue_cancel) == BACKTEST_ID
    assert remote.queued_cancels[0][0] == BACKTEST_ID


# -- backtest_gate ----------------------------------------------------------------------------


def gated(store: Store, result: dict, bypass: bool = False) -> None:
    at(
        store,
        Step.BACKTEST_GATE,
        backtest_operation_id=BACKTEST_ID,
        backtest_status="completed",
        backtest_result=result,
        bypass_gates=bypass,
    )


def test_backtest_gate_passes_a_good_backtest(store: Store, settings: Settings) -> None:
    gated(store, GOOD_BACKTEST)
    outcome = cycle.run_backtest_gate(store, settings, store.get(CYCLE_ID))
    assert outcome == {"backtest_gate": "passed"}
    gate = store.get(CYCLE_ID).metadata["backtest_gate"]
    assert gate["metrics"]["max_drawdown_pct"] == 0.021
    assert store.get(CYCLE_ID).progress.percentage == Step.BACKTEST_GATE.end


def test_backtest_gate_failure_fails_the_cycle_naming_the_metric(
    store: Store, remote: Remote, services: Services
) -> None:
    gated(store, POOR_BACKTEST)

    outcome = runner.run_step(Step.BACKTEST_GATE, CYCLE_ID, services, "t")

    assert isinstance(outcome, Fail)
    record = store.get(CYCLE_ID)
    assert record.error_message.startswith("Backtest gate failed: win_rate_too_low")
    assert "sharpe_too_low" in record.error_message
    assert record.metadata["backtest_gate"]["outcome"] == "failed"
    assert remote.deletes == []


def test_zero_trades_fail_as_too_few_unless_bypassed(
    store: Store, services: Services, settings: Settings
) -> None:
    nothing = {**GOOD_BACKTEST, "metrics": {**GOOD_BACKTEST["metrics"], "total_trades": 0}}
    gated(store, nothing)
    outcome = runner.run_step(Step.BACKTEST_GATE, CYCLE_ID, services, "t")
    assert isinstance(outcome, Fail) and "too_few_trades" in outcome.message

    again = Store(fakeredis.FakeRedis(decode_responses=True), retention_s=3600)
    gated(again, nothing, bypass=True)
    assert cycle.run_backtest_gate(again, settings, again.get(CYCLE_ID)) == {
        "backtest_gate": "bypassed"
    }


def test_assessment_stub_summarises_both_verdicts(store: Store, services: Services) -> None:
    gated(store, GOOD_BACKTEST)
    assert runner.run_step(Step.BACKTEST_GATE, CYCLE_ID, services, "t") == {
        "backtest_gate": "passed"
    }
    assert runner.run_step(Step.ASSESS, CYCLE_ID, services, "t") == {"status": "completed"}
    record = store.get(CYCLE_ID)
    assert record.status is OperationStatus.COMPLETED
    assert record.result_summary["assessment"] == (
        "stub: not implemented yet (training gate passed, backtest gate passed)"
    )
    assert record.result_summary["backtest_gate"] == "passed"
    assert record.result_summary["backtest_operation_id"] == BACKTEST_ID


def test_history_shows_the_backtest_figures_and_a_backtest_gate_failure(
    store: Store, remote: Remote, services: Services
) -> None:
    from ktrdr_tasks.backtest import backtest_summary
    from ktrdr_tasks.history import history_entry

    gated(store, POOR_BACKTEST)
    store.update(CYCLE_ID, metadata={"backtest": backtest_summary(POOR_BACKTEST)})
    runner.run_step(Step.BACKTEST_GATE, CYCLE_ID, services, "t")

    entry = history_entry(store.get(CYCLE_ID))
    assert entry["verdict"] == "gate_failed"
    assert entry["backtest_gate_reasons"][0].startswith("win_rate_too_low")
    assert (entry["trades"], entry["total_return_pct"], entry["sharpe_ratio"]) == (6, 0.0125, -1.4)
    assert entry["max_drawdown_pct"] == 0.021
