"""The host's `/metrics` for Prometheus: its HTTP traffic and the trainings it holds.

prometheus-fastapi-instrumentator counts every request by handler, method and status, with
latencies (`http_requests_total`, `http_request_duration_seconds`, ...). The trainings are
read from the operation registry and the job pool at scrape time, so they are exact without
a hook in the training code:
    ktrdr_host_operations{operation_type,status}   operations the host holds, by status
    ktrdr_host_training_jobs_active                 jobs queued or training now
    ktrdr_host_training_slots                       trainings that may run at once
    ktrdr_host_operation_duration_seconds{...}      a summary of finished operations' run time

Each app gets its own registry: tests build several apps in one process, and the default
registry refuses a second metric of the same name.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, SummaryMetricFamily
from prometheus_fastapi_instrumentator import Instrumentator

from training_host.jobs import JobRunner
from training_host.operations import OperationRegistry

METRICS_PATH = "/metrics"
_ALL = 10**9


class TrainingCollector:
    """Reads the registry and the job pool when Prometheus scrapes."""

    def __init__(self, registry: OperationRegistry, runner: JobRunner) -> None:
        self._registry = registry
        self._runner = runner

    def collect(self) -> Iterator[Any]:
        rows, _, _ = self._registry.list(limit=_ALL)
        held = GaugeMetricFamily(
            "ktrdr_host_operations",
            "Operations the host holds, by type and status.",
            labels=["operation_type", "status"],
        )
        for (kind, status), count in sorted(
            Counter((row["operation_type"], row["status"]) for row in rows).items()
        ):
            held.add_metric([kind, status], count)
        yield held
        durations = SummaryMetricFamily(
            "ktrdr_host_operation_duration_seconds",
            "Run time of the finished operations the host holds.",
            labels=["operation_type", "status"],
        )
        totals: dict[tuple[str, str], list[float]] = {}
        for row in rows:
            if row["completed_at"] and row["duration_seconds"] is not None:
                key = (row["operation_type"], row["status"])
                totals.setdefault(key, []).append(float(row["duration_seconds"]))
        for (kind, status), values in sorted(totals.items()):
            durations.add_metric([kind, status], count_value=len(values), sum_value=sum(values))
        yield durations
        yield GaugeMetricFamily(
            "ktrdr_host_training_jobs_active",
            "Training jobs queued or running.",
            value=self._runner.active_jobs(),
        )
        yield GaugeMetricFamily(
            "ktrdr_host_training_slots",
            "Trainings that may run at once (KTRDR_TRAINING_CONCURRENCY).",
            value=self._runner.concurrency,
        )


def instrument(app: FastAPI, registry: OperationRegistry, runner: JobRunner) -> None:
    """Count the app's requests and serve them, with the trainings, on `/metrics`."""
    metrics_registry = CollectorRegistry()
    metrics_registry.register(TrainingCollector(registry, runner))
    Instrumentator(
        registry=metrics_registry,
        excluded_handlers=[METRICS_PATH],
        should_group_status_codes=False,
    ).instrument(app).expose(app, endpoint=METRICS_PATH, include_in_schema=False)
