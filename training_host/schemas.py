"""Request and response bodies of the host's HTTP API, in ktrdr's field names and shapes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

OperationStatus = Literal["pending", "running", "completed", "failed", "cancelled"]

# Today's ktrdr's 503 while its only worker is busy (KTRDR_HOST_BUSY=503 answers the same).
BUSY_DETAIL = {
    "error": "No training workers available",
    "hint": "Every training worker is busy; retry in a few seconds",
}


class TrainingStartRequest(BaseModel):
    """`POST /api/v1/trainings/start`: which strategy, on which bars. Unknown keys are ignored."""

    model_config = ConfigDict(extra="ignore")

    strategy_name: str = Field(..., min_length=1, max_length=200)
    symbols: list[str] = Field(..., min_length=1, max_length=50)
    timeframes: list[str] = Field(..., min_length=1, max_length=10)
    start_date: str | None = None
    end_date: str | None = None
    task_id: str | None = Field(None, max_length=200, description="Idempotency key")
    detailed_analytics: bool = False

    @model_validator(mode="before")
    @classmethod
    def _single_symbol(cls, data: Any) -> Any:
        # Older ktrdr clients send `symbol: "EURUSD"` instead of a list.
        if isinstance(data, dict) and "symbols" not in data and isinstance(data.get("symbol"), str):
            return {**data, "symbols": [data["symbol"]]}
        return data

    @field_validator("symbols", "timeframes")
    @classmethod
    def _non_empty_items(cls, values: list[str]) -> list[str]:
        cleaned = [value.strip() for value in values]
        if any(not value for value in cleaned):
            raise ValueError("items cannot be empty")
        return list(dict.fromkeys(cleaned))


class TrainingStartResponse(BaseModel):
    success: bool = True
    task_id: str = Field(..., description="The training operation id")
    status: str = "training_started"
    message: str
    symbols: list[str]
    timeframes: list[str]
    strategy_name: str


class OperationProgress(BaseModel):
    percentage: float = 0.0
    current_step: str | None = None
    steps_completed: int = 0
    steps_total: int = 0
    items_processed: int = 0
    items_total: int | None = None
    current_item: str | None = None
    context: dict[str, Any] = Field(default_factory=dict)


class OperationInfo(BaseModel):
    operation_id: str
    operation_type: str
    status: OperationStatus
    created_at: str
    started_at: str | None = None
    completed_at: str | None = None
    progress: OperationProgress
    metadata: dict[str, Any] = Field(default_factory=dict)
    error_message: str | None = None
    result_summary: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None


class OperationStatusResponse(BaseModel):
    success: bool = True
    data: OperationInfo


class OperationSummary(BaseModel):
    operation_id: str
    operation_type: str
    status: OperationStatus
    created_at: str
    completed_at: str | None = None
    progress_percentage: float
    current_step: str | None = None
    symbol: str | None = None
    strategy_name: str | None = None
    duration_seconds: float | None = None
    error_message: str | None = None


class OperationListResponse(BaseModel):
    success: bool = True
    data: list[OperationSummary]
    total_count: int
    active_count: int


class CancelOperationRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    reason: str | None = Field(None, max_length=1000)
    force: bool = False


class CancelResult(BaseModel):
    operation_id: str
    status: OperationStatus
    cancelled_at: str | None = None
    cancellation_reason: str | None = None


class OperationCancelResponse(BaseModel):
    success: bool = True
    data: CancelResult


class HealthResponse(BaseModel):
    status: str = "ok"
    service: str = "ktrdr-training-host"
    version: str
    timestamp: str
    active_operations: int
    concurrency: int
    torch_version: str
