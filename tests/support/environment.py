"""Point this test process (trigger, status, cancel, revoke) at the services a module started.

The one test helper that resets process state; the package does the resetting itself
(`workflow.use_environment`), the same way for the demo and the tests.
"""

from __future__ import annotations

from collections.abc import Mapping


def apply_env(env: Mapping[str, str]) -> None:
    from ktrdr_tasks.workflow import use_environment

    use_environment(env)
