"""The bounded pool that runs trainings off the request path, with per-job cancel events.

`concurrency` worker threads train at once; more jobs wait as `pending`. A cancel of a
pending job ends it at once (it never starts); a running job sees its event between batches
and stops. Each job has a commit lock: the job holds it while it checks for a cancel and
writes the model, the canceller holds it while it flips the status, so a cancelled job never
writes a model and a completed one is never reported cancelled.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ktrdr_tasks import logs
from training_host.errors import TrainingCancelled, TrainingFailed
from training_host.operations import TERMINAL, OperationRegistry

log = logging.getLogger(__name__)


@dataclass
class JobContext:
    """What a running job may touch: its operation's progress, its cancel flag and lock."""

    operation_id: str
    registry: OperationRegistry
    cancel_event: threading.Event = field(default_factory=threading.Event)
    commit_lock: threading.Lock = field(default_factory=threading.Lock)
    committed: bool = False

    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def check_cancel(self) -> None:
        """Raise TrainingCancelled if a cancel arrived; call it between units of work."""
        if self.cancel_event.is_set():
            raise TrainingCancelled(f"operation {self.operation_id} was cancelled")

    def commit(self, save: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run `save` and mark the operation completed, unless a cancel came first.

        Under the commit lock, which `JobRunner.cancel` also takes: either the cancel wins
        and nothing is written, or the model is written and the operation is completed.
        """
        with self.commit_lock:
            self.check_cancel()
            result = save()
            self.registry.finish(self.operation_id, "completed", result_summary=result)
            self.committed = True
            return result


Work = Callable[[JobContext], dict[str, Any]]


class JobRunner:
    """Runs `Work` callables for operations of a registry, at most `concurrency` at a time."""

    def __init__(self, registry: OperationRegistry, concurrency: int) -> None:
        self.registry = registry
        self.concurrency = concurrency
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="training")
        self._lock = threading.Lock()
        self._contexts: dict[str, JobContext] = {}
        self._futures: dict[str, Future[None]] = {}

    def submit(self, operation_id: str, work: Work) -> None:
        """Queue `work` for the (pending) operation; it runs when a worker is free."""
        context = JobContext(operation_id, self.registry)
        with self._lock:
            self._contexts[operation_id] = context
            self._futures[operation_id] = self._pool.submit(self._run, context, work)

    def _run(self, context: JobContext, work: Work) -> None:
        operation_id = context.operation_id
        logs.bind(training_id=operation_id)  # every line of this job names its operation
        try:
            if context.cancelled() or not self.registry.mark_running(operation_id):
                return
            try:
                result = work(context)
                if not context.committed:  # work that wrote nothing commits its result here
                    context.commit(lambda: result)
            except TrainingCancelled:
                self.registry.finish(operation_id, "cancelled", error_message="Cancelled")
            except TrainingFailed as exc:
                self.registry.finish(operation_id, "failed", error_message=str(exc))
            except Exception as exc:  # a bug must end the job, never leave it running
                log.exception("training %s crashed", operation_id)
                self.registry.finish(
                    operation_id,
                    "failed",
                    error_message=f"Training crashed: {type(exc).__name__}: {exc}. "
                    "This is a bug in the training host; see its log.",
                )
        finally:
            log.info("training %s ended: %s", operation_id, self.registry.status(operation_id))
            with self._lock:
                self._contexts.pop(operation_id, None)
                self._futures.pop(operation_id, None)

    def cancel(self, operation_id: str, reason: str | None = None) -> bool:
        """Cancel a pending or running job; False when it had already ended."""
        with self._lock:
            context = self._contexts.get(operation_id)
            future = self._futures.get(operation_id)
        message = f"Cancelled: {reason}" if reason else "Cancelled by request"
        if context is None:
            return self.registry.finish(operation_id, "cancelled", error_message=message)
        with context.commit_lock:
            if self.registry.status(operation_id) in TERMINAL:
                return False
            context.cancel_event.set()
            if future is not None and future.cancel():
                # It never started, so its own cleanup will not run.
                with self._lock:
                    self._contexts.pop(operation_id, None)
                    self._futures.pop(operation_id, None)
            return self.registry.finish(operation_id, "cancelled", error_message=message)

    def active_jobs(self) -> int:
        with self._lock:
            return len(self._contexts)

    def is_full(self) -> bool:
        """Every worker is taken: a new job would wait as `pending`."""
        return self.active_jobs() >= self.concurrency

    def refuses_start(self, busy: str, task_id: str | None) -> bool:
        """With KTRDR_HOST_BUSY=503 a new start is refused while every worker is taken.

        A repeated task_id is never refused: it starts nothing and answers with its job.
        """
        return busy == "503" and self.is_full() and not self.registry.knows_task(task_id)

    def shutdown(self) -> None:
        """Cancel everything and stop the workers (server shutdown)."""
        with self._lock:
            ids = list(self._contexts)
        for operation_id in ids:
            self.cancel(operation_id, "training host shutting down")
        self._pool.shutdown(wait=True, cancel_futures=True)
