"""Records that cross a boundary: the operation stored in Redis, trigger answers, history rows.

The operation mirrors ktrdr's OperationInfo so a ktrdr user reads it without a glossary. What
a user reads (`--json`, `status()`) is the operation without its `bookkeeping`: the chain's
own counters, deadlines and owners live there, typed, and are never shown.
"""

from __future__ import annotations

import math
import secrets
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class OperationStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {OperationStatus.COMPLETED, OperationStatus.FAILED, OperationStatus.CANCELLED}
)
ACTIVE_STATUSES = frozenset({OperationStatus.PENDING, OperationStatus.RUNNING})


class Phase(StrEnum):
    """Where a cycle is; several tasks share the `training` phase (DESIGN section 1)."""

    QUEUED = "queued"
    DESIGNING = "designing"
    TRAINING = "training"
    BACKTESTING = "backtesting"
    ASSESSING = "assessing"
    DONE = "done"


class Progress(BaseModel):
    percentage: float = 0.0
    current_step: str = ""
    context: dict[str, Any] = Field(default_factory=dict)


class Bookkeeping(BaseModel):
    """The chain's internal state of one cycle: what the machinery needs, no user reads.

    Kept beside the user-facing `metadata` in the same Redis record (as `b.<field>`), so a
    write of both is still one atomic update.
    """

    transient_errors: int = 0
    """Consecutive transient failures of the current step (the one error budget)."""
    last_error: str | None = None
    training_start_requested_at: str | None = None
    training_deadline_ts: float | None = None
    """Wall-clock deadline of the remote training (KTRDR_TRAINING_TIMEOUT_S after the start)."""
    empty_result_reads: int = 0
    """Reads of a completed training that had no result yet (ktrdr syncs it late)."""
    poll_task_id: str | None = None
    """The poll task that owns the cycle after a resume; older polls stop."""
    backtest_deadline_ts: float | None = None
    """Wall-clock deadline of the remote backtest (KTRDR_BACKTEST_TIMEOUT_S after the start)."""
    backtest_empty_reads: int = 0
    """Reads of a completed backtest that had no metrics yet."""
    backtest_poll_task_id: str | None = None
    """The backtest poll task that owns the cycle after a resume; older polls stop."""
    resume_count: int = 0
    resumed_at_step: int | None = None
    resumed_at_pct: float | None = None
    resumed_from_step: str | None = None
    resumed_at_ts: float | None = None


BOOKKEEPING_FIELDS = frozenset(Bookkeeping.model_fields)


class Operation(BaseModel):
    """One research cycle, the single source of truth for every process.

    `metadata` is what a user reads about the cycle (strategy, training id and result, model
    path, gate verdict, ...); `bookkeeping` is excluded from every dump.
    """

    operation_id: str
    operation_type: str = "agent_research"
    status: OperationStatus = OperationStatus.PENDING
    phase: Phase = Phase.QUEUED
    step: int = 0
    progress: Progress = Field(default_factory=Progress)
    metadata: dict[str, Any] = Field(default_factory=dict)
    bookkeeping: Bookkeeping = Field(default_factory=Bookkeeping, exclude=True)
    task_ids: list[str] = Field(default_factory=list)
    error_message: str | None = None
    result_summary: dict[str, Any] | None = None
    created_at: str
    started_at: str | None = None
    completed_at: str | None = None
    heartbeat_at: str | None = None

    @property
    def training_operation_id(self) -> str | None:
        return self.metadata.get("training_operation_id")

    @property
    def backtest_operation_id(self) -> str | None:
        return self.metadata.get("backtest_operation_id")

    @property
    def strategy_name(self) -> str | None:
        return self.metadata.get("strategy_name")


class TriggerResult(BaseModel):
    """ktrdr's trigger answer: either a started cycle or the refusal and why."""

    triggered: bool
    operation_id: str | None = None
    reason: str | None = None
    message: str
    active_count: int | None = None
    limit: int | None = None


def finite_number(value: object) -> float | None:
    """A real, finite number from an untrusted answer, else None (never a fake zero)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def new_operation_id(now: datetime | None = None) -> str:
    """ktrdr's id format: `op_agent_research_YYYYMMDD_HHMMSS_<8 hex>`."""
    stamp = (now or utc_now()).strftime("%Y%m%d_%H%M%S")
    return f"op_agent_research_{stamp}_{secrets.token_hex(4)}"
