"""`POST /api/v1/trainings/start`: check the strategy now, train later, answer at once.

What ktrdr refuses on start is refused here with its status and shape: a bad name or a
missing file (400, `detail` a string), an invalid strategy (400, `detail` an object listing
every field), a file the chain's bounded reader refuses (too big, too deep, an alias bomb:
400, `STRATEGY-Unreadable`, naming the limit). What ktrdr accepts and then fails (no data) is
accepted with 200 and the operation fails at once, naming the data that does exist. The
document handed to training (and written as the model's `config.json`) is the one that reader
built, so its size is bounded by the reader's limits, aliases included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request

from ktrdr_tasks.errors import StrategyError, StrategyValidationError
from ktrdr_tasks.strategy import (
    read_strategy_file,
    shown,
    strategy_path,
    validate_strategy_name,
)
from ktrdr_tasks.strategy_v3 import check_any_strategy
from training_host.errors import NoDataError
from training_host.market_data import normalise_timeframe
from training_host.pipeline import TrainingJob, check_data, run_training
from training_host.schemas import BUSY_DETAIL, TrainingStartRequest, TrainingStartResponse

router = APIRouter(prefix="/trainings", tags=["Training"])


def strategy_file(name: str, strategies_dir: Path) -> Path:
    """`<dir>/<name>.yaml` by the orchestrator's own rules, refused in ktrdr's words."""
    try:
        validate_strategy_name(name)
    except StrategyError:
        raise HTTPException(
            status_code=400,
            detail=f"Invalid strategy name {shown(name)}: Strategy name may only contain "
            "alphanumerics, dashes, or underscores",
        ) from None
    try:
        path = strategy_path(name, strategies_dir)
    except StrategyError:  # a symlink leading outside the directory: as good as missing
        path = None
    if path is None or not path.is_file():
        raise HTTPException(
            status_code=400,
            detail=f"Strategy file not found: {name}.yaml (searched: {strategies_dir.resolve()})",
        )
    return path


def _invalid(name: str, path: Path, errors: list[str], code: str, fields: list[Any]) -> Any:
    return HTTPException(
        status_code=400,
        detail={
            "message": f"Strategy configuration is invalid: {name} ({path.name})",
            "error_code": code,
            "details": {
                "strategy_name": name,
                "strategy_file": str(path),
                "errors": errors,
                "field_errors": fields,
            },
            "suggestion": f"Fix the listed fields in {path} (see ktrdr-strategy-format.md), "
            "then start the training again.",
        },
    )


def load_job(body: TrainingStartRequest, strategies_dir: Path) -> TrainingJob:
    """The strategy read and checked (ktrdr's validator and trainer rules) for this request."""
    path = strategy_file(body.strategy_name, strategies_dir)
    try:
        document = read_strategy_file(path)
        config = check_any_strategy(document, source=path.name)
    except StrategyValidationError as exc:
        fields = [{"field": e.field, "message": e.message} for e in exc.errors]
        raise _invalid(
            body.strategy_name,
            path,
            [str(e) for e in exc.errors],
            exc.error_code,  # v3 has its own codes on ktrdr
            fields,
        ) from exc
    except StrategyError as exc:
        raise _invalid(body.strategy_name, path, [str(exc)], "STRATEGY-Unreadable", []) from exc
    return TrainingJob(
        strategy_name=body.strategy_name,
        strategy_path=path,
        document=document,
        config=config,
        symbols=tuple(symbol.upper() for symbol in body.symbols),
        timeframes=tuple(body.timeframes),
        start_date=body.start_date,
        end_date=body.end_date,
    )


def _data_problem(job: TrainingJob, data_dir: Path | None) -> str | None:
    try:
        timeframes = [normalise_timeframe(tf) for tf in job.timeframes]
        check_data(job.symbols, timeframes, job.start_date, job.end_date, data_dir)
    except NoDataError as exc:
        return str(exc)
    except ValueError as exc:
        return f"No data found for {', '.join(job.symbols)} {', '.join(job.timeframes)}: {exc}"
    return None


# A plain `def`: FastAPI runs it in its thread pool, so reading the YAML and the bars for the
# no-data check never blocks the event loop.
@router.post("/start", response_model=TrainingStartResponse)
def start_training(body: TrainingStartRequest, request: Request) -> TrainingStartResponse:
    """Validate, register the operation, queue the job; the same task_id gives the same op."""
    state = request.app.state
    settings = state.settings
    job = load_job(body, settings.strategies_dir)
    metadata = {
        "strategy_name": job.strategy_name,
        "strategy_path": str(job.strategy_path),
        "symbols": list(job.symbols),
        "timeframes": list(job.timeframes),
        "symbol": job.symbols[0],
        "timeframe": job.timeframes[0],
        "start_date": job.start_date,
        "end_date": job.end_date,
        "task_id": body.task_id,
        "parameters": {"epochs": job.config.epochs},
    }
    if state.runner.refuses_start(settings.busy, body.task_id):
        raise HTTPException(status_code=503, detail=BUSY_DETAIL)
    operation, created = state.registry.create(metadata, task_id=body.task_id)
    if not created:
        return TrainingStartResponse(
            task_id=operation.operation_id,
            message=f"Training already started for task_id {body.task_id}: "
            f"{operation.operation_id}",
            symbols=list(operation.metadata["symbols"]),
            timeframes=list(operation.metadata["timeframes"]),
            strategy_name=operation.metadata["strategy_name"],
        )
    problem = _data_problem(job, settings.data_dir)
    if problem is not None:
        # ktrdr answers 200 and fails the operation within milliseconds; so do we.
        state.registry.finish(operation.operation_id, "failed", error_message=problem)
    else:
        state.runner.submit(
            operation.operation_id,
            lambda context: run_training(
                job,
                context,
                models_dir=settings.models_dir,
                data_dir=settings.data_dir,
                seed=settings.seed,
            ),
        )
    return TrainingStartResponse(
        task_id=operation.operation_id,
        message=f"Neural network training started for {job.strategy_name} on "
        f"{', '.join(job.symbols)} {', '.join(job.timeframes)}",
        symbols=list(job.symbols),
        timeframes=list(job.timeframes),
        strategy_name=job.strategy_name,
    )
