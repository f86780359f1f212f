"""Prometheus metrics of the research chain, as the worker exposes them on `/metrics`.

What an operator graphs (names as exported):
    ktrdr_cycles_started_total                          a worker ran a cycle's first step
    ktrdr_cycles_finished_total{verdict,phase}          passed|bypassed|gate_failed|failed|
                                                        cancelled, and the phase it ended in
    ktrdr_active_cycles                                 read from Redis at each scrape
    ktrdr_poll_lag_seconds                              how late a poll ran after its countdown
    ktrdr_training_duration_seconds{outcome}            training start request to its end
    ktrdr_training_api_errors_total{kind,method}        unreachable (timeouts too)|http_5xx|
                                                        http_4xx|not_found|malformed
    ktrdr_gate_verdicts_total{gate,outcome,reason}      one per gate judged in a finished cycle

Where they are counted: a finished cycle once, by the writer that wins the final
compare-and-set (`cycle_finished`, called by the store); API errors where the client
classifies them (`count_api_errors`); the rest from Celery signals (`telemetry.py`).

A prefork worker runs tasks in child processes, so the worker uses prometheus-client's
multiprocess mode: `serve_worker_metrics` (in the parent, before the pool forks) points
`PROMETHEUS_MULTIPROC_DIR` at a fresh directory and serves the sum of every child's files.
prometheus-client reads that variable when it is first imported, so this module imports it
lazily and re-reads it once the directory is set. Without a metrics port nothing is served and
the counters stay in the process (the CLI, tests).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar

from ktrdr_tasks.errors import (
    KtrdrTasksError,
    OperationNotFoundError,
    PermanentApiError,
    TrainingApiError,
    TransientApiError,
)
from ktrdr_tasks.history import history_entry
from ktrdr_tasks.models import Operation, OperationStatus, parse_iso

log = logging.getLogger("ktrdr_tasks.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Seconds: polls run every few seconds and trainings last minutes to hours.
LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)
DURATION_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200)
_REASON = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*")

P = ParamSpec("P")
R = TypeVar("R")


@functools.cache
def _instruments() -> dict[str, Any]:
    """Created on first use, in the process that uses them (after a fork, in the child)."""
    from prometheus_client import Counter, Histogram

    return {
        "started": Counter("ktrdr_cycles_started", "Research cycles a worker started running."),
        "finished": Counter(
            "ktrdr_cycles_finished",
            "Research cycles that ended, by verdict and the phase they ended in.",
            ["verdict", "phase"],
        ),
        "poll_lag": Histogram(
            "ktrdr_poll_lag_seconds",
            "How long after its countdown ran out a training poll started.",
            buckets=LAG_BUCKETS,
        ),
        "training": Histogram(
            "ktrdr_training_duration_seconds",
            "From the training start request to the poll that saw the training end.",
            ["outcome"],
            buckets=DURATION_BUCKETS,
        ),
        "api_errors": Counter(
            "ktrdr_training_api_errors",
            "Failed calls to the training service, by kind of failure.",
            ["kind", "method"],
        ),
        "gates": Counter(
            "ktrdr_gate_verdicts",
            "Gate verdicts of finished cycles; a failed gate counts once per reason.",
            ["gate", "outcome", "reason"],
        ),
    }


# -- what the chain reports ------------------------------------------------------------------


def cycle_started() -> None:
    _instruments()["started"].inc()


def poll_lag(seconds: float) -> None:
    _instruments()["poll_lag"].observe(max(0.0, seconds))


def training_ended(outcome: str, seconds: float) -> None:
    _instruments()["training"].labels(outcome=outcome).observe(max(0.0, seconds))


def verdict_of(operation: Operation) -> str:
    """The same verdicts `ktrdr agent history` shows."""
    return str(history_entry(operation)["verdict"])


def gate_reason_codes(reasons: list[Any]) -> list[str]:
    """`accuracy_below_threshold (30.00% < 45%)` -> `accuracy_below_threshold` (few labels)."""
    codes = []
    for reason in reasons:
        match = _REASON.match(str(reason))
        codes.append(match.group(0)[:60] if match else "other")
    return codes or ["none"]


def _gates(operation: Operation) -> Iterator[dict[str, Any]]:
    for key, value in operation.metadata.items():
        if (key == "gate" or key.endswith("_gate")) and isinstance(value, dict):
            yield {"name": value.get("name") or key.removesuffix("_gate") or "training", **value}


def cycle_finished(operation: Operation) -> None:
    """Count a cycle that just ended; called once, by the writer of its final status."""
    try:
        instruments = _instruments()
        instruments["finished"].labels(
            verdict=verdict_of(operation), phase=operation.phase.value
        ).inc()
        for gate in _gates(operation):
            outcome = str(gate.get("outcome") or "unknown")
            reasons = gate_reason_codes(gate.get("reasons") or []) if outcome != "passed" else []
            for reason in reasons or ["none"]:
                instruments["gates"].labels(
                    gate=str(gate["name"]), outcome=outcome, reason=reason
                ).inc()
        started = operation.bookkeeping.training_start_requested_at
        training_status = operation.metadata.get("training_status")
        # A completed training was timed by the poll that saw it end; the others end here.
        if started and operation.completed_at and training_status != "completed":
            seconds = (parse_iso(operation.completed_at) - parse_iso(started)).total_seconds()
            outcome = "cancelled" if operation.status is OperationStatus.CANCELLED else "failed"
            training_ended(outcome, seconds)
    except Exception:  # metrics must never break the write they observe
        log.debug("could not count the end of %s", operation.operation_id, exc_info=True)


def api_error_kind(error: TrainingApiError) -> str:
    if isinstance(error, OperationNotFoundError):
        return "not_found"
    code = error.status_code
    if isinstance(error, TransientApiError):
        return "unreachable" if code is None else "http_5xx"
    if isinstance(error, PermanentApiError) and code is not None and 400 <= code < 500:
        return "http_4xx"
    return "malformed"


def count_api_errors(method: Callable[P, R]) -> Callable[P, R]:
    """Decorates the client's one request method: every failed call counts, then re-raises."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except TrainingApiError as exc:
            verb = str(args[1]) if len(args) > 1 else "?"
            _instruments()["api_errors"].labels(kind=api_error_kind(exc), method=verb).inc()
            raise

    return wrapper


# -- how the worker serves them ----------------------------------------------------------------


class ActiveCyclesCollector:
    """`ktrdr_active_cycles` from Redis at scrape time: exact whichever process changed it."""

    def __init__(self, count: Callable[[], int]) -> None:
        self._count = count

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        try:
            value = self._count()
        except KtrdrTasksError as exc:  # Redis down: leave the series out, say why in the log
            log.warning("metrics: cannot count active cycles: %s", exc)
            return
        gauge = GaugeMetricFamily("ktrdr_active_cycles", "Research cycles pending or running.")
        gauge.add_metric([], value)
        yield gauge


def prepare_multiprocess_dir() -> str:
    """A clean directory for the pool's metric files, set before prometheus-client loads.

    An operator's own PROMETHEUS_MULTIPROC_DIR is used (and emptied: files of a previous run
    would be summed in); otherwise a new temporary directory.
    """
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        for entry in os.scandir(directory):
            if entry.name.endswith(".db"):
                os.unlink(entry.path)
    else:
        directory = tempfile.mkdtemp(prefix="ktrdr-metrics-")
        os.environ[MULTIPROC_ENV] = directory
    # prometheus-client picks its value store when first imported, and Flower (a `celery`
    # subcommand, loaded by every `celery` command line) imports it before any of our code
    # runs: pick again, so the metrics the pool creates after the fork go to the shared files.
    from prometheus_client import values

    values.ValueClass = values.get_value_class()
    return directory


def serve_worker_metrics(port: int, bind: str, active_count: Callable[[], int]) -> Any:
    """Serve `/metrics` for a worker and its pool; returns the server (None if it failed).

    `active_count` reads the active cycles (the store's, handed in: the store reports to this
    module, so this module does not import it).
    """
    directory = prepare_multiprocess_dir()
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    registry.register(ActiveCyclesCollector(active_count))
    try:
        server, _thread = start_http_server(port, addr=bind, registry=registry)
    except OSError as exc:
        log.warning("metrics: cannot listen on %s:%s (%s); not serving /metrics", bind, port, exc)
        return None
    log.info("metrics: serving /metrics on http://%s:%s", bind, port)
    return server


def process_exited(pid: int) -> None:
    """Tidy a dead pool process's live gauges (counters and histograms keep their sums)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def remove_multiprocess_dir(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)
