"""The training API goes away: shorter than the error budget the cycle rides it out; longer,
the cycle fails naming the API, and the remote job is cancelled once the API is back."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ktrdr_tasks import workflow
from ktrdr_tasks.store import get_store
from tests.chaos.conftest import ScriptedApi, record, wait_all, wait_for_condition, write_strategy
from tests.support.fake_training_api import Behaviour
from tests.support.processes import Process

pytestmark = [pytest.mark.chaos, pytest.mark.integration]


def _polling(api: ScriptedApi, op_id: str) -> None:
    wait_for_condition(
        lambda: record(op_id)["metadata"].get("training_status"), 30, "the first poll"
    )


def test_outage_longer_than_a_poll_but_within_the_budget_completes(
    workers: Callable[..., Process], chaos_api: ScriptedApi, chaos_strategies: Path
) -> None:
    name = write_strategy(chaos_strategies, "outage_short")
    chaos_api.behaviours[name] = Behaviour(polls=4)
    workers(name="outage-short")
    op_id = workflow.trigger(strategy=name).operation_id
    _polling(chaos_api, op_id)

    chaos_api.stop()
    down_at = time.monotonic()
    wait_for_condition(
        lambda: get_store().get(op_id).bookkeeping.transient_errors >= 4, 20, "4 failed polls"
    )
    chaos_api.start()
    outage = time.monotonic() - down_at
    [final] = wait_all([op_id], {"completed", "failed", "cancelled"}, 30)

    assert final["status"] == "completed", final["error_message"]
    assert chaos_api.jobs_for(name) == 1
    print(f"API down {outage:.1f} s (4 of 8 polls failed): cycle completed")


def test_outage_beyond_the_budget_fails_naming_the_api_and_cancels_once_back(
    workers: Callable[..., Process], chaos_api: ScriptedApi, chaos_strategies: Path
) -> None:
    name = write_strategy(chaos_strategies, "outage_long")
    chaos_api.behaviours[name] = Behaviour(outcome="never")
    workers(name="outage-long")
    op_id = workflow.trigger(strategy=name).operation_id
    _polling(chaos_api, op_id)
    training_id = chaos_api.training_id_for(op_id)

    chaos_api.stop()
    down_at = time.monotonic()
    [final] = wait_all([op_id], {"completed", "failed", "cancelled"}, 30)
    failed_after = time.monotonic() - down_at
    time.sleep(2.0)  # the first cancel attempts fail; the cancel_training task keeps retrying
    chaos_api.start()
    back_at = time.monotonic()
    wait_for_condition(
        lambda: chaos_api.jobs[training_id].status == "cancelled", 60, "the retried cancel"
    )

    assert final["status"] == "failed"
    assert chaos_api.url in final["error_message"]
    assert "KTRDR_POLL_MAX_ERRORS=8" in final["error_message"]
    print(
        f"API down: cycle failed after {failed_after:.1f} s; remote job cancelled "
        f"{time.monotonic() - back_at:.1f} s after the API came back"
    )


def test_start_outage_past_celerys_default_retry_limit_still_completes(
    workers: Callable[..., Process], chaos_api: ScriptedApi, chaos_strategies: Path
) -> None:
    # Celery's default max_retries (3) must not cut the start short of KTRDR_POLL_MAX_ERRORS.
    name = write_strategy(chaos_strategies, "outage_at_start")
    chaos_api.behaviours[name] = Behaviour(polls=2)
    worker = workers(name="outage-start")
    chaos_api.stop()
    op_id = workflow.trigger(strategy=name).operation_id
    wait_for_condition(
        lambda: get_store().get(op_id).bookkeeping.transient_errors >= 5, 40, "5 failed starts"
    )
    chaos_api.start()
    [final] = wait_all([op_id], {"completed", "failed", "cancelled"}, 30)

    assert final["status"] == "completed", final["error_message"]
    assert chaos_api.jobs_for(name) == 1
    assert "MaxRetriesExceeded" not in worker.log()
