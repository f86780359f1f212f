"""The Celery application, configured from `ktrdr_tasks.celeryconfig` (tasks: `ktrdr_tasks.tasks`).

Two guards are armed with it, because every process of the system (worker, beat, Flower, a
backend that enqueues) builds this app: kombu's Redis channel is fixed so a worker survives
a Redis restart (`ktrdr_tasks.broker`), and Flower refuses to serve without credentials
beyond 127.0.0.1 (`ktrdr_tasks.flower_guard`).
"""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import after_setup_logger

from ktrdr_tasks import broker, flower_guard

CONFIG_MODULE = "ktrdr_tasks.celeryconfig"

app = Celery("ktrdr_tasks")
app.config_from_object(CONFIG_MODULE)
broker.install()
flower_guard.install(app)


@after_setup_logger.connect
def _quiet_http_logs(logger: logging.Logger, **_: object) -> None:
    # httpx logs every request at INFO: one line per poll would drown the phase changes.
    logging.getLogger("httpx").setLevel(logging.WARNING)
