"""The in-memory, thread-safe registry of training operations, shaped as ktrdr's OperationInfo.

Jobs (worker threads) and routes (the event loop) write and read it concurrently; one lock
guards every record. Rules, as in the chain's store: a terminal status (completed, failed,
cancelled) is final, so a job finishing after a cancel cannot resurrect the operation, and
progress never goes backwards. The registry is lost on restart; a client then gets 404 and
must treat the job as lost (DESIGN section 2).

Answers stay small however long a training runs: `metrics.epochs` holds the last
`RECENT_EPOCHS` epochs (`progress.steps_completed` / `steps_total` stay exact, and the model's
`metrics.json` keeps every epoch). A request's `task_id` becomes the operation id, as on
today's ktrdr, so a client that lost a start's answer finds the job under it.
"""

from __future__ import annotations

import copy
import re
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

TERMINAL = frozenset({"completed", "failed", "cancelled"})
ACTIVE = frozenset({"pending", "running"})
# Epochs an operation answer lists: enough for a loss curve, ~22 KB whatever the length.
RECENT_EPOCHS = 100
# A task_id usable as an operation id in a URL path; anything else gets a generated id.
_ID_LIKE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}")


def now_iso() -> str:
    """UTC timestamp as ktrdr writes it (ISO 8601 with offset)."""
    return datetime.now(UTC).isoformat()


def new_operation_id(operation_type: str = "training", when: datetime | None = None) -> str:
    """`op_training_YYYYMMDD_HHMMSS_<8 hex>`: ktrdr's operation id format."""
    stamp = (when or datetime.now(UTC)).strftime("%Y%m%d_%H%M%S")
    return f"op_{operation_type}_{stamp}_{secrets.token_hex(4)}"


@dataclass
class Operation:
    """One operation record; `to_info` renders ktrdr's OperationInfo."""

    operation_id: str
    operation_type: str
    metadata: dict[str, Any]
    status: str = "pending"
    created_at: str = field(default_factory=now_iso)
    started_at: str | None = None
    completed_at: str | None = None
    progress: dict[str, Any] = field(
        default_factory=lambda: {
            "percentage": 0.0,
            "current_step": "Queued",
            "steps_completed": 0,
            "steps_total": 0,
            "items_processed": 0,
            "items_total": None,
            "current_item": None,
            "context": {},
        }
    )
    metrics: dict[str, Any] = field(default_factory=lambda: {"epochs": [], "epochs_omitted": 0})
    error_message: str | None = None
    result_summary: dict[str, Any] | None = None
    sequence: int = 0

    def to_info(self) -> dict[str, Any]:
        """ktrdr's OperationInfo: what `GET /operations/{id}` answers in `data`."""
        return copy.deepcopy(
            {
                "operation_id": self.operation_id,
                "operation_type": self.operation_type,
                "status": self.status,
                "created_at": self.created_at,
                "started_at": self.started_at,
                "completed_at": self.completed_at,
                "progress": self.progress,
                "metadata": self.metadata,
                "error_message": self.error_message,
                "result_summary": self.result_summary,
                "metrics": self.metrics,
            }
        )

    def to_summary(self) -> dict[str, Any]:
        """ktrdr's OperationSummary: one row of `GET /operations`."""
        return {
            "operation_id": self.operation_id,
            "operation_type": self.operation_type,
            "status": self.status,
            "created_at": self.created_at,
            "completed_at": self.completed_at,
            "progress_percentage": self.progress["percentage"],
            "current_step": self.progress["current_step"],
            "symbol": (self.metadata.get("symbols") or [None])[0],
            "strategy_name": self.metadata.get("strategy_name"),
            "duration_seconds": _duration(self.started_at, self.completed_at),
            "error_message": self.error_message,
        }


def _duration(started: str | None, ended: str | None) -> float | None:
    if started is None:
        return None
    end = datetime.fromisoformat(ended) if ended else datetime.now(UTC)
    return round((end - datetime.fromisoformat(started)).total_seconds(), 3)


class OperationRegistry:
    """All operations of this process, keyed by id, plus the `task_id` idempotency index."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._operations: dict[str, Operation] = {}
        self._by_task_id: dict[str, str] = {}
        self._sequence = 0

    def create(
        self, metadata: dict[str, Any], task_id: str | None = None, operation_type: str = "training"
    ) -> tuple[Operation, bool]:
        """A new pending operation, or the existing one for `task_id` (then created=False)."""
        with self._lock:
            if task_id is not None and task_id in self._by_task_id:
                return self._operations[self._by_task_id[task_id]], False
            if (
                task_id is not None
                and _ID_LIKE.fullmatch(task_id)
                and task_id not in self._operations
            ):
                operation_id = task_id
            else:
                operation_id = new_operation_id(operation_type)
                while operation_id in self._operations:
                    operation_id = new_operation_id(operation_type)
            self._sequence += 1
            operation = Operation(
                operation_id, operation_type, dict(metadata), sequence=self._sequence
            )
            self._operations[operation_id] = operation
            if task_id is not None:
                self._by_task_id[task_id] = operation_id
            return operation, True

    def get(self, operation_id: str) -> dict[str, Any] | None:
        """A snapshot of the operation as OperationInfo, or None."""
        with self._lock:
            operation = self._operations.get(operation_id)
            return operation.to_info() if operation else None

    def knows_task(self, task_id: str | None) -> bool:
        """Whether a start with this task_id was already taken (a repeat starts nothing)."""
        with self._lock:
            return task_id is not None and task_id in self._by_task_id

    def status(self, operation_id: str) -> str | None:
        with self._lock:
            operation = self._operations.get(operation_id)
            return operation.status if operation else None

    def mark_running(self, operation_id: str) -> bool:
        """pending -> running; False when the operation already ended (e.g. cancelled)."""
        with self._lock:
            operation = self._operations[operation_id]
            if operation.status != "pending":
                return False
            operation.status, operation.started_at = "running", now_iso()
            operation.progress["current_step"] = "Preparing data"
            return True

    def update_progress(
        self,
        operation_id: str,
        *,
        percentage: float | None = None,
        current_step: str | None = None,
        steps_completed: int | None = None,
        steps_total: int | None = None,
        context: dict[str, Any] | None = None,
        epoch_metrics: dict[str, Any] | None = None,
    ) -> None:
        """Progress of an active operation; ignored once it ended, never moves backwards."""
        with self._lock:
            operation = self._operations.get(operation_id)
            if operation is None or operation.status in TERMINAL:
                return
            progress = operation.progress
            if percentage is not None:
                progress["percentage"] = max(progress["percentage"], round(float(percentage), 2))
            if current_step is not None:
                progress["current_step"] = current_step
            if steps_completed is not None:
                progress["steps_completed"] = max(progress["steps_completed"], steps_completed)
                progress["items_processed"] = progress["steps_completed"]
            if steps_total is not None:
                progress["steps_total"] = progress["items_total"] = steps_total
            if context is not None:
                progress["context"] = dict(context)
            if epoch_metrics is not None:
                epochs = operation.metrics["epochs"]
                epochs.append(dict(epoch_metrics))
                if len(epochs) > RECENT_EPOCHS:
                    del epochs[0]
                    operation.metrics["epochs_omitted"] += 1

    def finish(
        self,
        operation_id: str,
        status: str,
        *,
        error_message: str | None = None,
        result_summary: dict[str, Any] | None = None,
    ) -> bool:
        """Move an active operation to a terminal status; False if it had already ended."""
        if status not in TERMINAL:
            raise ValueError(f"not a terminal status: {status}")
        with self._lock:
            operation = self._operations.get(operation_id)
            if operation is None or operation.status in TERMINAL:
                return False
            operation.status, operation.completed_at = status, now_iso()
            operation.error_message = error_message
            if result_summary is not None:
                operation.result_summary = result_summary
            if status == "completed":
                operation.progress["percentage"] = 100.0
                operation.progress["current_step"] = "Completed"
            elif status == "cancelled":
                operation.progress["current_step"] = "Cancelled"
            else:
                operation.progress["current_step"] = "Failed"
            return True

    def list(
        self,
        *,
        status: str | None = None,
        operation_type: str | None = None,
        limit: int = 100,
        active_only: bool = False,
    ) -> tuple[list[dict[str, Any]], int, int]:
        """(summaries newest first, matching count before the limit, active count overall)."""
        with self._lock:
            operations = sorted(self._operations.values(), key=lambda op: -op.sequence)
            matched = [
                op
                for op in operations
                if (status is None or op.status == status)
                and (operation_type is None or op.operation_type == operation_type)
                and (not active_only or op.status in ACTIVE)
            ]
            active = sum(1 for op in operations if op.status in ACTIVE)
            return [op.to_summary() for op in matched[:limit]], len(matched), active
