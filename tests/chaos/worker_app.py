"""The Celery app for chaos workers: ktrdr_tasks' own app, with test-only slow phases.

A chaos test must SIGKILL a worker while a cycle is inside a given phase. Phases that are
normally instant are held open here, per cycle, by the strategy's name prefix, and only when
the worker's environment asks for it (so the replacement worker runs at full speed):

- `CHAOS_DESIGN_DELAY_S`: the design step of a cycle whose requested strategy starts with
  `slowdesign` sleeps this long before it runs;
- `CHAOS_LOAD_DELAY_S`: loading the training parameters, strategies starting `slowload`;
- `CHAOS_GATE_DELAY_S`: the training gate of a cycle whose strategy starts with `slowgate`.

Start it as `celery -A tests.chaos.worker_app worker`.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Any

from ktrdr_tasks import cycle
from ktrdr_tasks.app import app
from ktrdr_tasks.models import Operation

__all__ = ["app"]


def _held(function: Callable[..., Any], env_name: str, prefix: str, name_of: str) -> Callable:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        operation = next(a for a in args if isinstance(a, Operation))
        name = str(operation.metadata.get(name_of) or "")
        delay = float(os.environ.get(env_name) or 0)
        if delay and name.startswith(prefix):
            time.sleep(delay)
        return function(*args, **kwargs)

    return wrapper


cycle.run_design = _held(
    cycle.run_design, "CHAOS_DESIGN_DELAY_S", "slowdesign", "requested_strategy"
)
cycle.run_load_training_params = _held(
    cycle.run_load_training_params, "CHAOS_LOAD_DELAY_S", "slowload", "strategy_name"
)
cycle.run_training_gate = _held(
    cycle.run_training_gate, "CHAOS_GATE_DELAY_S", "slowgate", "strategy_name"
)
