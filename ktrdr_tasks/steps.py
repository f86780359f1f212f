"""The one table of a research cycle's steps: order, task name, phase, label, progress span.

The chain (`workflow.chain_of`), the tasks, the reconciler and the progress maths all
read this table, so adding a step is one entry here, its function and body in `cycle.py`
and its one-line task in `tasks.py`. A step's position is its value: the store lets the
recorded position only move forward, which is how a late duplicate of a passed step learns
that the chain moved on. Positions follow the order of the entries, so an upgrade that
inserts a step shifts the positions of the steps after it (finish or cancel running cycles
before such an upgrade).

Pure: no Redis, no HTTP, no Celery.
"""

from __future__ import annotations

from enum import IntEnum

from ktrdr_tasks.models import Phase

TASK_PREFIX = "ktrdr."


class Step(IntEnum):
    """A step of the chain; each entry is (phase, label, progress start %, progress end %)."""

    phase: Phase
    label: str
    start: float
    end: float

    DESIGN = (Phase.DESIGNING, "design", 0.0, 30.0)
    LOAD_TRAINING_PARAMS = (Phase.TRAINING, "loading training parameters", 30.0, 30.0)
    START_TRAINING = (Phase.TRAINING, "starting training", 30.0, 35.0)
    POLL_TRAINING = (Phase.TRAINING, "training", 35.0, 85.0)
    TRAINING_GATE = (Phase.TRAINING, "training gate", 85.0, 90.0)
    START_BACKTEST = (Phase.BACKTESTING, "starting backtest", 90.0, 90.0)
    POLL_BACKTEST = (Phase.BACKTESTING, "backtesting", 90.0, 98.0)
    BACKTEST_GATE = (Phase.BACKTESTING, "backtest gate", 98.0, 98.0)
    ASSESS = (Phase.ASSESSING, "assessment", 98.0, 100.0)

    def __new__(cls, phase: Phase, label: str, start: float, end: float) -> Step:
        position = len(cls.__members__) + 1
        member = int.__new__(cls, position)
        member._value_ = position
        member.phase = phase
        member.label = label
        member.start = start
        member.end = end
        return member

    @property
    def task_name(self) -> str:
        """The Celery task name, `ktrdr.<step>` (what Flower and `celery inspect` show)."""
        return f"{TASK_PREFIX}{self.name.lower()}"

    @property
    def span(self) -> float:
        return self.end - self.start


FIRST_STEP = min(Step)
LAST_STEP = max(Step)
_BY_TASK_NAME = {step.task_name: step for step in Step}


def step_of_task(task_name: str) -> Step | None:
    """The step a task name runs, or None for housekeeping tasks (cancel, reconcile)."""
    return _BY_TASK_NAME.get(task_name)


def steps_from(first: Step) -> list[Step]:
    """The rest of the chain from `first` on, in order."""
    return [step for step in Step if step >= first]
