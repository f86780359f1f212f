"""Celery signal handlers: what a task start counts, and that they never stop a task."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import REGISTRY

from ktrdr_tasks import logs, telemetry


def task(name: str, **request: object) -> SimpleNamespace:
    defaults = {"retries": 0, "eta": None, "delivery_info": {}}
    return SimpleNamespace(name=name, request=SimpleNamespace(**{**defaults, **request}))


def value(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_a_first_design_run_counts_a_started_cycle_and_a_retry_does_not() -> None:
    before = value("ktrdr_cycles_started_total")
    telemetry.on_task_start(task=task("ktrdr.design"))
    telemetry.on_task_start(task=task("ktrdr.design", retries=1))
    telemetry.on_task_start(task=task("ktrdr.design", delivery_info={"redelivered": True}))
    telemetry.on_task_start(task=task("ktrdr.load_training_params"))
    assert value("ktrdr_cycles_started_total") == before + 1


def test_a_poll_after_its_countdown_records_its_lag() -> None:
    count = value("ktrdr_poll_lag_seconds_count")
    total = value("ktrdr_poll_lag_seconds_sum")
    telemetry.on_task_start(task=task("ktrdr.poll_training", eta="2000-01-01T00:00:00+00:00"))
    telemetry.on_task_start(task=task("ktrdr.poll_training"))  # the first poll: no countdown
    assert value("ktrdr_poll_lag_seconds_count") == count + 1
    assert value("ktrdr_poll_lag_seconds_sum") - total > 25 * 365 * 86400


def test_each_task_starts_with_a_clean_log_context() -> None:
    logs.bind(training_id="op_training_old")
    telemetry.on_task_start(task=task("ktrdr.assess"))
    assert "training_id" not in logs.current()


def test_a_broken_request_never_stops_the_task() -> None:
    telemetry.on_task_start(task=task("ktrdr.poll_training", eta="not a date"))
    done = {"training": "completed"}
    telemetry.on_task_success(sender=task("ktrdr.poll_training", args=()), result=done)
