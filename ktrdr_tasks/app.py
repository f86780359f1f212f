"""The Celery application: configured from `celeryconfig`, tasks in `ktrdr_tasks.tasks`."""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import after_setup_logger

app = Celery("ktrdr_tasks")
app.config_from_object("celeryconfig")
app.conf.imports = ("ktrdr_tasks.tasks", "ktrdr_tasks.telemetry")  # logs + metrics


@after_setup_logger.connect
def _quiet_http_logs(logger: logging.Logger, **_: object) -> None:
    # httpx logs every request at INFO: one line per poll would drown the phase changes.
    logging.getLogger("httpx").setLevel(logging.WARNING)
