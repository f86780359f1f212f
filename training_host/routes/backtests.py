"""`POST /api/v1/backtests/start`: backtest a trained model, polled like a training.

ktrdr's contract: the answer carries the id in `operation_id` (`op_backtesting_...`), and
the operation is polled and cancelled through `/api/v1/operations/{id}`. What ktrdr refuses
on start is refused here the same way: no symbol or timeframe given nor named by the
strategy, or a timeframe that cannot exist (400), every worker busy (503, retry). What it
accepts and then fails (no `model_path`, an unknown model, no data) answers 200 and the
operation fails with ktrdr's message.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from ktrdr_tasks.errors import StrategyError
from ktrdr_tasks.strategy import extract_training_params, load_strategy_config
from training_host.backtest import BacktestJob, Costs, resolve_model_dir, run_backtest
from training_host.errors import TrainingFailed
from training_host.market_data import normalise_timeframe

router = APIRouter(prefix="/backtests", tags=["Backtesting"])


class BacktestStartRequest(BaseModel):
    """ktrdr's backtest request; `symbol`/`timeframe` default to the strategy's first ones."""

    model_config = ConfigDict(extra="ignore")

    strategy_name: str = Field(..., min_length=1, max_length=200)
    symbol: str | None = Field(None, max_length=50)
    timeframe: str | None = Field(None, max_length=20)
    start_date: str = Field(..., min_length=4, max_length=40)
    end_date: str = Field(..., min_length=4, max_length=40)
    model_path: str | None = Field(None, max_length=1000)
    initial_capital: float = Field(100_000.0, gt=0, le=1e12)
    commission: float = Field(0.001, ge=0, lt=0.1)
    slippage: float = Field(0.0005, ge=0, lt=0.1)
    task_id: str | None = Field(None, max_length=200, description="Idempotency key")


class BacktestStartResponse(BaseModel):
    success: bool = True
    operation_id: str
    status: str = "started"
    message: str
    symbol: str
    timeframe: str
    mode: str = "local"


def _strategy_defaults(name: str, strategies_dir: Path) -> tuple[str | None, str | None]:
    # Only a default: ktrdr backtests a model with its own config.json, and a strategy file
    # that is missing or unreadable is no error when the request names symbol and timeframe.
    try:
        params = extract_training_params(load_strategy_config(name, strategies_dir))
    except StrategyError:
        return None, None
    symbols, timeframes = params["symbols"], params["timeframes"]
    return (symbols[0] if symbols else None), (timeframes[0] if timeframes else None)


def _job(body: BacktestStartRequest, strategies_dir: Path) -> BacktestJob:
    symbol, timeframe = body.symbol, body.timeframe
    if not symbol or not timeframe:
        default_symbol, default_timeframe = _strategy_defaults(body.strategy_name, strategies_dir)
        symbol, timeframe = symbol or default_symbol, timeframe or default_timeframe
    if not symbol or not timeframe:
        raise HTTPException(
            status_code=400,
            detail=f"No symbol or timeframe for backtesting {body.strategy_name}: send "
            "`symbol` and `timeframe`, or name them in the strategy's training_data",
        )
    try:
        timeframe = normalise_timeframe(timeframe)
    except ValueError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None
    return BacktestJob(
        strategy_name=body.strategy_name,
        symbol=symbol.strip().upper(),
        timeframe=timeframe,
        start_date=body.start_date,
        end_date=body.end_date,
        model_path=body.model_path,
        costs=Costs(body.initial_capital, body.commission, body.slippage),
    )


# A plain `def`: FastAPI runs it in its thread pool, so reading the strategy file never
# blocks the event loop.
@router.post("/start", response_model=BacktestStartResponse)
def start_backtest(body: BacktestStartRequest, request: Request) -> BacktestStartResponse:
    """Check the request, register the operation and run the backtest off the request path."""
    state = request.app.state
    settings = state.settings
    job = _job(body, settings.strategies_dir)
    if state.runner.active_jobs() >= state.runner.concurrency:
        # ktrdr's answer while its only worker is busy; the client retries.
        raise HTTPException(
            status_code=503,
            detail={
                "error": "No backtest workers available",
                "hint": "every worker is busy with a training or a backtest; retry shortly",
            },
        )
    metadata = {
        "strategy_name": job.strategy_name,
        "symbol": job.symbol,
        "timeframe": job.timeframe,
        "symbols": [job.symbol],
        "timeframes": [job.timeframe],
        "start_date": job.start_date,
        "end_date": job.end_date,
        "model_path": job.model_path,
        "parameters": {
            "initial_capital": job.costs.initial_capital,
            "commission": job.costs.commission,
            "slippage": job.costs.slippage,
        },
    }
    operation, created = state.registry.create(
        metadata, task_id=body.task_id, operation_type="backtesting"
    )
    if not created:
        # Not ktrdr's: the same task_id again is the same backtest, never a second one.
        return BacktestStartResponse(
            operation_id=operation.operation_id,
            message=f"Backtest already started for task_id {body.task_id}",
            symbol=str(operation.metadata.get("symbol")),
            timeframe=str(operation.metadata.get("timeframe")),
        )
    try:
        resolve_model_dir(job.model_path, settings.models_dir)
    except TrainingFailed as exc:
        # ktrdr answers 200 and fails the operation at once; so do we.
        state.registry.finish(operation.operation_id, "failed", error_message=str(exc))
    else:
        state.runner.submit(
            operation.operation_id,
            lambda context: run_backtest(
                job, context, models_dir=settings.models_dir, data_dir=settings.data_dir
            ),
        )
    return BacktestStartResponse(
        operation_id=operation.operation_id,
        message=f"Backtest started for {job.strategy_name} on {job.symbol} {job.timeframe}",
        symbol=job.symbol,
        timeframe=job.timeframe,
    )
