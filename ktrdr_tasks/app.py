"""The Celery application: configured from `celeryconfig`, tasks in `ktrdr_tasks.tasks`."""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import after_setup_logger

app = Celery("ktrdr_tasks")
app.config_from_object("celeryconfig")
app.conf.imports = ("ktrdr_tasks.tasks",)


# Celery's lines for every task message at INFO ("received", "succeeded in"): two per poll,
# 800 a second at 2,000 polling cycles. The cycle's own INFO lines say what happens.
_PER_MESSAGE_LOGGERS = ("celery.app.trace", "celery.worker.strategy")


@after_setup_logger.connect
def _quiet_http_logs(logger: logging.Logger, **_: object) -> None:
    # httpx logs every request at INFO: one line per poll would drown the phase changes.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if logger.getEffectiveLevel() > logging.DEBUG:
        for name in _PER_MESSAGE_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
