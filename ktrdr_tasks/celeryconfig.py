"""Celery configuration, derived from the one `Settings` so workers, beat and CLI agree.

It lives inside the package and the app loads it by its full name
(`app.config_from_object("ktrdr_tasks.celeryconfig")`): a host project's own `celeryconfig`
module on `sys.path` cannot replace it. The repository's top-level `celeryconfig.py` only
re-exports this module.

Why these values (DESIGN section 4):
- acks late + reject on worker lost: a SIGKILLed worker's task is delivered again, not lost.
- prefetch 1: a busy worker does not sit on queued cycles another worker could run.
- visibility timeout and the unacked-restore sweep: kombu's defaults (1 hour, swept every
  100 s) would strand a dead worker's held messages, countdown polls included, for an hour.
  The timeout must exceed the longest task run plus the poll countdown, which Settings checks.
- events on so Flower shows every task with its operation id (and its final state); no
  `task-sent` events (see docs/performance.md: events that cost what they are worth).
"""

from __future__ import annotations

from ktrdr_tasks import broker
from ktrdr_tasks.settings import get_settings

_settings = get_settings()

broker_url = _settings.redis_url
if broker_url.startswith(("redis://", "rediss://")):
    # kombu's Redis transport, minus a new client object per call (ktrdr_tasks/broker.py).
    broker_transport = broker.TRANSPORT_NAME
broker_connection_retry_on_startup = True
# rediss:// (TLS): verified by default (KTRDR_REDIS_SSL_CERT_REQS, KTRDR_REDIS_SSL_CA_CERTS).
if _settings.redis_ssl_options() is not None:
    broker_use_ssl = _settings.redis_ssl_options()
broker_transport_options = {
    "visibility_timeout": _settings.visibility_timeout_s,
    "unacked_restore_interval": max(1, int(_settings.visibility_timeout_s / 6)),
    "unacked_restore_throttle": 1,
}
# telemetry: the log format, the metrics endpoint and per-task counts, via Celery signals.
imports = ("ktrdr_tasks.tasks", "ktrdr_tasks.telemetry")
# Every cycle's state lives in the operation record; Celery's own results are not needed.
result_backend = None
task_ignore_result = True

task_serializer = "json"
accept_content = ["json"]
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
worker_cancel_long_running_tasks_on_connection_loss = False

worker_send_task_events = True
# Flower needs each task's received/started/final events, not `task-sent`: one more Redis
# PUBLISH per message (every poll) that shows nothing Flower would not show anyway.
task_send_sent_event = False
task_track_started = True

timezone = "UTC"
enable_utc = True
beat_schedule = {
    "reconcile-cycles": {
        "task": "ktrdr.reconcile",
        "schedule": _settings.reconcile_interval_s,
    },
}
