"""ktrdr-tasks: research cycles for ktrdr strategies as a Celery chain over Redis.

`celery -A ktrdr_tasks worker` finds the Celery app through `celery` below, imported lazily
so that the schema and catalogue modules stay importable without starting Celery. That door
is also where a worker or beat meets its configuration first: under the `celery` command,
bad settings end the process there in one line (exit code 4) instead of a traceback from
inside Celery's start-up.
"""

from __future__ import annotations

import sys
from typing import Any

# The one place the version is written: pyproject.toml reads it, and so do both packages.
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "celery":
        # Only the `celery` command line ends the process; a backend importing the app gets
        # the ConfigurationError to handle as it sees fit.
        if "celery.bin.celery" in sys.modules:
            from ktrdr_tasks.settings import settings_or_exit

            settings_or_exit("celery")
        from ktrdr_tasks.app import app

        return app
    raise AttributeError(name)
