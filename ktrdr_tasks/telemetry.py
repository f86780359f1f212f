"""Celery's door to logs and metrics: signal handlers that worker and beat load with the tasks.

- logging set up by Celery (worker, beat, the task logger) gets the cycle context on every
  line and, with `KTRDR_LOG_FORMAT=json`, one JSON object per line (`logs.py`);
- a worker with `KTRDR_METRICS_PORT` serves `/metrics` from its parent process, summing its
  pool processes (`metrics.py`);
- each task run starts with a clean log context, a first design run counts a started cycle,
  a training poll records how late it ran, and the poll that sees a training complete times it.

Nothing here changes what a task does: a failing handler logs and lets the task run.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from celery import Task
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    task_prerun,
    task_success,
    worker_init,
    worker_process_shutdown,
    worker_shutdown,
)

from ktrdr_tasks import logs, metrics
from ktrdr_tasks.models import parse_iso
from ktrdr_tasks.settings import get_settings
from ktrdr_tasks.steps import Step
from ktrdr_tasks.store import get_store

log = logging.getLogger("ktrdr_tasks.telemetry")

DESIGN_TASK = Step.DESIGN.task_name
POLL_TASK = Step.POLL_TRAINING.task_name
_served: dict[str, Any] = {}


@after_setup_logger.connect
@after_setup_task_logger.connect
def format_celery_logs(logger: logging.Logger, **_: Any) -> None:
    logs.format_handlers(list(logger.handlers), get_settings().log_format)


@worker_init.connect
def serve_metrics(**_: Any) -> None:
    settings = get_settings()
    if not settings.metrics_port:
        return
    owned = not os.environ.get(metrics.MULTIPROC_ENV)
    server = metrics.serve_worker_metrics(
        settings.metrics_port, settings.metrics_bind, lambda: len(get_store().active_ids())
    )
    if server is not None:
        _served.update(server=server, directory=os.environ[metrics.MULTIPROC_ENV], owned=owned)


@worker_shutdown.connect
def stop_metrics(**_: Any) -> None:
    server = _served.pop("server", None)
    if server is not None:
        server.shutdown()
        if _served.get("owned"):
            metrics.remove_multiprocess_dir(_served["directory"])


@worker_process_shutdown.connect
def forget_pool_process(pid: int | None = None, **_: Any) -> None:
    metrics.process_exited(pid or os.getpid())


@task_prerun.connect
def on_task_start(task: Task | None = None, **_: Any) -> None:
    logs.clear()
    if task is None:
        return
    request = task.request
    try:
        if task.name == DESIGN_TASK and not request.retries and not _redelivered(request):
            metrics.cycle_started()
        elif task.name == POLL_TASK and request.eta:
            eta = request.eta if not isinstance(request.eta, str) else parse_iso(request.eta)
            metrics.poll_lag(time.time() - eta.timestamp())
    except Exception:  # metrics never stop a task
        log.debug("metrics: task start not counted", exc_info=True)


@task_success.connect
def on_task_success(sender: Task | None = None, result: Any = None, **_: Any) -> None:
    if sender is None or sender.name != POLL_TASK or result != {"training": "completed"}:
        return
    try:
        operation = get_store().find(str(sender.request.args[0]))
        started = operation.bookkeeping.training_start_requested_at if operation else None
        if started:
            metrics.training_ended("completed", time.time() - parse_iso(started).timestamp())
    except Exception:
        log.debug("metrics: training duration not recorded", exc_info=True)


def _redelivered(request: Any) -> bool:
    return bool((getattr(request, "delivery_info", None) or {}).get("redelivered"))
