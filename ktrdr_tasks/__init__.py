"""ktrdr-tasks: research cycles for ktrdr strategies as a Celery chain over Redis.

`celery -A ktrdr_tasks worker` finds the Celery app through `celery` below, imported lazily
so that the schema and catalogue modules stay importable without starting Celery.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "celery":
        from ktrdr_tasks.app import app

        return app
    raise AttributeError(name)
