"""`/api/v1/operations`: status, list and cancel, with ktrdr's shapes and status codes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Query, Request

from training_host.operations import now_iso
from training_host.schemas import (
    CancelOperationRequest,
    CancelResult,
    OperationCancelResponse,
    OperationInfo,
    OperationListResponse,
    OperationStatus,
    OperationStatusResponse,
    OperationSummary,
)

router = APIRouter(tags=["Operations"])


def _not_found(operation_id: str) -> HTTPException:
    return HTTPException(status_code=404, detail=f"Operation not found: {operation_id}")


@router.get("/operations", response_model=OperationListResponse)
def list_operations(
    request: Request,
    status: Annotated[OperationStatus | None, Query()] = None,
    operation_type: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    active_only: Annotated[bool, Query()] = False,
) -> OperationListResponse:
    """Operations newest first; `total_count` counts all matches, `active_count` all active."""
    rows, total, active = request.app.state.registry.list(
        status=status, operation_type=operation_type, limit=limit, active_only=active_only
    )
    return OperationListResponse(
        data=[OperationSummary(**row) for row in rows], total_count=total, active_count=active
    )


@router.get("/operations/{operation_id}", response_model=OperationStatusResponse)
def get_operation(operation_id: str, request: Request) -> OperationStatusResponse:
    """The full OperationInfo: status, progress, per-epoch metrics, result or error."""
    info = request.app.state.registry.get(operation_id)
    if info is None:
        raise _not_found(operation_id)
    return OperationStatusResponse(data=OperationInfo(**info))


@router.delete("/operations/{operation_id}", response_model=OperationCancelResponse)
def cancel_operation(
    operation_id: str,
    request: Request,
    body: Annotated[CancelOperationRequest | None, Body()] = None,
) -> OperationCancelResponse:
    """Cancel a pending or running training: 400 once it has ended, 404 when unknown."""
    state = request.app.state
    info = state.registry.get(operation_id)
    if info is None:
        raise _not_found(operation_id)
    reason = body.reason if body else None
    if not state.runner.cancel(operation_id, reason):
        status = state.registry.status(operation_id)
        raise HTTPException(
            status_code=400,
            detail=f"Operation {operation_id} cannot be cancelled (status: {status})",
        )
    return OperationCancelResponse(
        data=CancelResult(
            operation_id=operation_id,
            status="cancelled",
            cancelled_at=now_iso(),
            cancellation_reason=reason,
        )
    )
