"""The public API for a backend or the CLI: trigger, status, cancel, list, and the chain itself.

A web backend calls `trigger()`, or builds `research_chain(...)` and enqueues it itself with
`.apply_async()` (its first task creates the record under the active-cycle limit);
everything else reads the store.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from collections.abc import Mapping
from typing import Any

import kombu.pools
from celery import chain

from ktrdr_tasks.app import app
from ktrdr_tasks.errors import OperationStateError, StoreUnavailableError
from ktrdr_tasks.models import (
    Operation,
    OperationStatus,
    Progress,
    TriggerResult,
    iso,
    new_operation_id,
    utc_now,
)
from ktrdr_tasks.remote import cancel_orphaned_job
from ktrdr_tasks.settings import get_settings
from ktrdr_tasks.steps import FIRST_STEP, Step, steps_from
from ktrdr_tasks.store import Store, get_store, reset_store
from ktrdr_tasks.strategy import load_strategy_config, validate_strategy_name
from ktrdr_tasks.training_api import get_client

log = logging.getLogger("ktrdr_tasks.workflow")


def chain_task_ids(from_step: Step = FIRST_STEP) -> dict[Step, str]:
    """Fresh task ids for the steps from `from_step` on, fixed before anything is enqueued."""
    return {step: str(uuid.uuid4()) for step in steps_from(from_step)}


def chain_of(operation_id: str, task_ids: dict[Step, str] | None = None) -> chain:
    """The chain of an existing cycle as immutable signatures (each task reads Redis).

    `task_ids` selects the steps (and their ids); by default the whole chain with new ids.
    """
    ids = task_ids or chain_task_ids()
    signatures = [
        app.signature(step.task_name, args=(operation_id,), immutable=True).set(task_id=ids[step])
        for step in sorted(ids)
    ]
    return chain(*signatures)


def research_chain(
    *, strategy: str | None = None, bypass_gates: bool = False, operation_id: str | None = None
) -> chain:
    """A Celery chain for a new cycle, for a backend to enqueue itself with `.apply_async()`.

    The first task creates the cycle's record under the active-cycle limit
    (`KTRDR_MAX_ACTIVE_CYCLES`, read by the worker); a cycle over the limit is recorded as
    failed with ktrdr's refusal, never dropped. The operation id is known before enqueueing:
    `research_chain(...).operation_id` (or pass your own).
    """
    if strategy is not None:
        validate_strategy_name(strategy)
    operation_id = operation_id or new_operation_id()
    ids = chain_task_ids()
    signatures = chain_of(operation_id, ids).tasks
    new_cycle = {
        "strategy": strategy,
        "bypass_gates": bypass_gates,
        "created_at": iso(utc_now()),
        "task_ids": [ids[step] for step in sorted(ids)],
    }
    signatures[0].kwargs["new_cycle"] = new_cycle
    built = chain(*signatures)
    built.operation_id = operation_id
    return built


def new_cycle_record(
    operation_id: str,
    strategy: str | None,
    bypass_gates: bool,
    task_ids: list[str],
    created_at: str,
) -> Operation:
    """The record of a cycle before its first step (task ids frozen before enqueueing)."""
    metadata: dict[str, Any] = {"bypass_gates": bypass_gates}
    if strategy:
        metadata["requested_strategy"] = strategy
    return Operation(
        operation_id=operation_id,
        created_at=created_at,
        heartbeat_at=created_at,
        task_ids=task_ids,
        metadata=metadata,
        progress=Progress(percentage=0, current_step="Queued"),
    )


def enqueue_steps(operation_id: str, task_ids: dict[Step, str]) -> None:
    """Enqueue the chain of the steps in `task_ids` (a resume picks up part of a cycle)."""
    chain_of(operation_id, task_ids).apply_async()


def trigger(
    strategy: str | None = None,
    bypass_gates: bool = False,
    store: Store | None = None,
) -> TriggerResult:
    """Start a research cycle unless the active-cycle limit is reached (ktrdr's answer shape)."""
    settings = get_settings()
    store = store or get_store()
    if strategy is not None:
        validate_strategy_name(strategy)
        load_strategy_config(strategy, settings.strategies_dir)  # fail now, not in a worker

    now = utc_now()
    operation_id = new_operation_id(now)
    ids = chain_task_ids()
    operation = new_cycle_record(
        operation_id, strategy, bypass_gates, [ids[step] for step in sorted(ids)], iso(now)
    )
    blocking = store.create_operation(operation, settings.max_active_cycles)
    if blocking:
        return refusal(blocking, settings.max_active_cycles)

    try:
        chain_of(operation_id, ids).apply_async()
    except Exception as exc:  # the broker is down: do not leave a pending cycle behind
        store.finish(
            operation_id, OperationStatus.FAILED, error_message=f"could not enqueue: {exc}"
        )
        raise StoreUnavailableError(
            f"could not enqueue the research cycle on {settings.safe_redis_url()}: {exc}"
        ) from exc
    log.info("%s triggered (strategy=%s)", operation_id, strategy or "designed")
    return TriggerResult(
        triggered=True,
        operation_id=operation_id,
        message=f"Research cycle started: {operation_id}",
    )


def refusal(blocking: list[str], limit: int) -> TriggerResult:
    """ktrdr's answer to a cycle over the active-cycle limit."""
    if limit == 1:
        return TriggerResult(
            triggered=False,
            reason="active_cycle_exists",
            operation_id=blocking[0],
            message=f"Active cycle exists: {blocking[0]}",
        )
    return TriggerResult(
        triggered=False,
        reason="at_capacity",
        active_count=len(blocking),
        limit=limit,
        message=f"At capacity: {len(blocking)} of {limit} cycles active",
    )


def status(operation_id: str | None = None, store: Store | None = None) -> dict[str, Any]:
    """One operation; or the active ones; or ktrdr's idle answer with the last cycle."""
    store = store or get_store()
    if operation_id:
        return store.get(operation_id).model_dump(mode="json")
    active = store.active_operations()
    if active:
        return {
            "status": "active",
            "operations": [op.model_dump(mode="json") for op in active],
        }
    last = store.list_operations(limit=1)
    last_cycle = None
    if last:
        op = last[0]
        last_cycle = {
            "operation_id": op.operation_id,
            "outcome": op.status.value,
            "strategy_name": op.strategy_name,
            "completed_at": op.completed_at,
        }
    return {"status": "idle", "last_cycle": last_cycle}


def cancel(operation_id: str, store: Store | None = None) -> dict[str, Any]:
    """Cancel a cycle: final status first, then revoke its tasks, then the remote job.

    The compare-and-set comes first so a racing poll can never resurrect the cycle; revoke is
    only a backup (tasks check the record); the remote cancel retries through a task when the
    training API is briefly unreachable.
    """
    store = store or get_store()
    operation = store.cancel(operation_id)
    if operation.task_ids:
        try:
            app.control.revoke(operation.task_ids)
        except Exception as exc:  # revoke is a backup; the record already says cancelled
            log.warning("%s revoke broadcast failed: %s", operation_id, exc)
    remote = cancel_orphaned_job(get_client(), operation)
    log.info("%s cancelled (remote training: %s)", operation_id, remote or "none")
    answer = operation.model_dump(mode="json")
    answer["cancelled_training_operation_id"] = remote
    return answer


def list_operations(
    limit: int = 20, status_filter: str | None = None, store: Store | None = None
) -> list[dict[str, Any]]:
    store = store or get_store()
    wanted = None
    if status_filter:
        try:
            wanted = OperationStatus(status_filter)
        except ValueError:
            raise OperationStateError(
                f"unknown status {status_filter!r}; use one of "
                + ", ".join(s.value for s in OperationStatus)
            ) from None
    return [op.model_dump(mode="json") for op in store.list_operations(limit, wanted)]


def history(limit: int = 20, store: Store | None = None) -> list[dict[str, Any]]:
    return (store or get_store()).recent_history(limit)


def use_environment(env: Mapping[str, str]) -> None:
    """Point this process (trigger, status, cancel, revoke) at the services `env` names.

    Settings, the store and the Celery app each read the environment once; a process that
    starts its own stack (the demo, a test module with its own redis-server) makes all three
    read it again here, the one place that knows how.
    """
    if env and all(os.environ.get(name) == value for name, value in env.items()):
        return  # already pointed there: keep the live connections (kombu shares its pools)
    os.environ.update(env)
    get_settings.cache_clear()
    reset_store()
    # The app read its configuration module (and REDIS_URL through it) on first use: drop the
    # connection pools and cached objects built on it, and have it read the module again.
    # kombu keeps its pools in a process-wide registry keyed by URL: closing one but leaving
    # it registered would hand the closed pool back when the process returns to that URL.
    kombu.pools.reset()
    app._pool = None
    for cached in ("amqp", "control"):
        app.__dict__.pop(cached, None)
    source = getattr(app, "_config_source", None)
    if isinstance(source, str):
        sys.modules.pop(source, None)
    app._conf = None
