"""Entry point: `create_app(settings)` builds the service, `main()` serves it (`server.py`)."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ktrdr_tasks import logs
from training_host import __version__
from training_host.jobs import JobRunner
from training_host.metrics import instrument
from training_host.middleware import BodySizeLimit
from training_host.operations import OperationRegistry
from training_host.routes import backtests, health, operations, trainings
from training_host.server import serve
from training_host.settings import HostSettings

API_PREFIX = "/api/v1"


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    # ktrdr's envelope for a body that does not parse, instead of FastAPI's {"detail": [...]}.
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in errors
    )
    return JSONResponse(
        status_code=422,
        content={
            "success": False,
            "error": {
                "code": "VALIDATION_ERROR",
                "message": f"Invalid request: {problems}" if problems else "Invalid request",
                "details": jsonable_encoder(errors),
            },
        },
    )


def configure_torch(threads: int) -> None:
    """Few intra-op threads: tiny MLPs gain nothing from more, and jobs share the cores."""
    torch.set_num_threads(threads)
    # Already set when a second app is built in one process (tests): keep the first.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


def create_app(settings: HostSettings | None = None) -> FastAPI:
    """The FastAPI app with its registry and job pool in `app.state`."""
    settings = settings or HostSettings()
    configure_torch(settings.torch_threads)
    registry = OperationRegistry()
    runner = JobRunner(registry, settings.concurrency)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        runner.shutdown()

    app = FastAPI(
        title="ktrdr reference training host",
        version=__version__,
        description="Trains ktrdr strategies with PyTorch; speaks ktrdr's training API.",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=f"{API_PREFIX}/redoc",
        openapi_url=f"{API_PREFIX}/openapi.json",
        lifespan=lifespan,
    )
    app.state.settings, app.state.registry, app.state.runner = settings, registry, runner
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    for module in (trainings, backtests, operations, health):
        app.include_router(module.router, prefix=API_PREFIX)
    instrument(app, registry, runner)
    return app


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ktrdr-training-host",
        description="Reference ktrdr training host: trains strategies over HTTP.",
    )
    parser.add_argument("--host", help="bind address (env KTRDR_HOST_BIND, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (env KTRDR_HOST_PORT, default 8000)")
    parser.add_argument("--data-dir", type=Path, help="extra {SYMBOL}_{TF}.csv (KTRDR_DATA_DIR)")
    parser.add_argument("--models-dir", type=Path, help="where models go (KTRDR_MODELS_DIR)")
    parser.add_argument(
        "--strategies-dir", type=Path, help="strategy YAML files (KTRDR_STRATEGIES_DIR)"
    )
    parser.add_argument(
        "--concurrency", type=int, help="trainings at once (KTRDR_TRAINING_CONCURRENCY)"
    )
    parser.add_argument(
        "--request-timeout",
        dest="request_timeout_s",
        type=float,
        help="seconds a request may take to arrive whole (KTRDR_HOST_REQUEST_TIMEOUT_S, 10)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        help="connections served at once, 503 beyond (KTRDR_HOST_MAX_CONNECTIONS, 100)",
    )
    parser.add_argument(
        "--keep-alive",
        dest="keep_alive_s",
        type=int,
        help="idle keep-alive connections closed after this (KTRDR_HOST_KEEP_ALIVE_S, 5)",
    )
    parser.add_argument(
        "--log-level",
        help="DEBUG, INFO, WARNING, ERROR or CRITICAL (KTRDR_LOG_LEVEL, default INFO)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the host; command-line options override the environment."""
    args = parse_args(argv)
    overrides = {key: value for key, value in vars(args).items() if value is not None}
    settings = HostSettings(**overrides)
    logs.configure(settings.log_format, settings.log_level)
    serve(create_app(settings), settings)
    return 0
