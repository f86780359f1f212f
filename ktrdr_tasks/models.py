"""Records that cross a boundary: the operation stored in Redis, trigger answers, history rows.

The operation mirrors ktrdr's OperationInfo so a ktrdr user reads it without a glossary.
"""

from __future__ import annotations

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


class Operation(BaseModel):
    """One research cycle, the single source of truth for every process."""

    operation_id: str
    operation_type: str = "agent_research"
    status: OperationStatus = OperationStatus.PENDING
    phase: Phase = Phase.QUEUED
    step: int = 0
    progress: Progress = Field(default_factory=Progress)
    metadata: dict[str, Any] = Field(default_factory=dict)
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
