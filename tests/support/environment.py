"""Point this test process (trigger, status, cancel, revoke) at the services a module started.

Settings, the store and the Celery app each read the environment once; a test module with its
own redis-server must make all three read it again, or it talks to the previous module's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def apply_env(env: Mapping[str, str]) -> None:
    os.environ.update(env)
    from ktrdr_tasks.settings import get_settings
    from ktrdr_tasks.store import reset_store

    get_settings.cache_clear()
    reset_store()
    reload_celery_config()


def reload_celery_config() -> None:
    """celeryconfig reads REDIS_URL when the app is first configured: make the app read it
    again on next use, with a fresh connection pool, producer pool and control object."""
    from ktrdr_tasks.app import reload_configuration

    reload_configuration()
