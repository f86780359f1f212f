"""Point this test process (trigger, status, cancel, revoke) at the services a module started.

The one test helper that resets process state; the package does the resetting itself
(`workflow.use_environment`), the same way for the demo and the tests.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping


def apply_env(env: Mapping[str, str]) -> None:
    from ktrdr_tasks.workflow import use_environment

    use_environment(env)


@contextlib.contextmanager
def restored_environment() -> Iterator[None]:
    """Give the environment back as it was, so a module that pointed this process at its own
    stack leaves the next module's services (session fixtures) in place."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        apply_env({})
