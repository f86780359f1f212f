"""`GET /api/v1/health`: liveness for orchestration and the integration tests' wait loop."""

from __future__ import annotations

import torch
from fastapi import APIRouter, Request

from training_host import __version__
from training_host.operations import now_iso
from training_host.schemas import HealthResponse

router = APIRouter(tags=["Health"])


@router.get("/health", response_model=HealthResponse)
def health(request: Request) -> HealthResponse:
    """The host is up; how many operations are active and how many may train at once."""
    state = request.app.state
    _, _, active = state.registry.list(limit=0)
    return HealthResponse(
        version=__version__,
        timestamp=now_iso(),
        active_operations=active,
        concurrency=state.settings.concurrency,
        torch_version=torch.__version__,
    )
