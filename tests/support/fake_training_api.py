"""A scripted training service that speaks ktrdr's HTTP contract (DESIGN section 2).

Used where a test must control the remote side exactly: a job that fails, never ends, is
lost, or a service that refuses connections for a while. It records every request so tests
assert on what the service received (one start per cycle, a DELETE, no poll after it).

`Era` switches on what a real backend of one era does beyond the contract: today's ktrdr
(April 2026) answers 503 while its worker is busy, reads `pending` first with null dates and a
malformed, growing `metrics` list; the December 2025 one ignores `task_id`. Faults a test can
ask for: drop the connection after a start was accepted, drip every answer byte by byte.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

GOOD_RESULT = {
    "model_path": "models/fake/1h_v1",
    "training_metrics": {
        "final_train_loss": 0.55,
        "final_val_accuracy": 0.62,
        "epochs_completed": 3,
        "history": {"train_loss": [1.05, 0.8, 0.55], "val_loss": [1.0, 0.8, 0.7]},
    },
    "test_metrics": {"test_accuracy": 0.61, "test_loss": 0.7},
}
POOR_RESULT = {
    "model_path": "models/fake/1h_v1",
    "training_metrics": {
        "final_train_loss": 1.05,
        "history": {"train_loss": [1.1, 1.08, 1.05]},
    },
    "test_metrics": {"test_accuracy": 0.31, "test_loss": 1.12},
}

GOOD_BACKTEST = {
    "config": {"start_date": "2018-02-02", "end_date": "2018-02-07", "initial_capital": 100000.0},
    "symbol": "EURUSD",
    "timeframe": "1h",
    "strategy_name": "fake",
    "trade_count": 6,
    "equity_curve_length": 88,
    "metrics": {
        "total_return": 1250.0,
        "total_return_pct": 0.0125,
        "sharpe_ratio": 1.2,
        "max_drawdown": 2100.0,
        "max_drawdown_pct": 0.021,
        "win_rate": 0.5,
        "profit_factor": 1.6,
        "total_trades": 6,
        "winning_trades": 3,
        "losing_trades": 3,
    },
}
POOR_BACKTEST = {
    **GOOD_BACKTEST,
    "metrics": {**GOOD_BACKTEST["metrics"], "win_rate": 0.2, "sharpe_ratio": -1.4},
}


@dataclass
class Behaviour:
    """How jobs of one strategy go: after `polls` polls, `outcome` (completed/failed/never)."""

    polls: int = 3
    outcome: str = "completed"
    result: dict[str, Any] = field(default_factory=lambda: dict(GOOD_RESULT))
    error_message: str = "No data found in cache for GBPUSD 1h"


@dataclass
class Era:
    """Behaviours of a real backend beyond the contract; the defaults are the contract's."""

    honours_task_id: bool = True
    task_id_is_operation_id: bool = False  # today's ktrdr: found under it by GET
    busy_until: float = 0.0  # time.monotonic() until which a start answers 503
    pending_polls: int = 0  # the first polls of a job read `pending`, dates null
    metrics_list_bytes_per_poll: int = 0  # today's malformed `metrics` list, growing
    drop_start_answers: int = 0  # accept this many starts, then drop the connection
    drip_interval_s: float = 0.0  # send every answer one byte at a time, this far apart


def todays_ktrdr(**changes: Any) -> Era:
    """ktrdr at 2c5c7173 (April 2026): pending first, null dates, a metrics list."""
    defaults = {"task_id_is_operation_id": True, "pending_polls": 1}
    return Era(**{**defaults, "metrics_list_bytes_per_poll": 2048, **changes})


def december_ktrdr(**changes: Any) -> Era:
    """ktrdr of December 2025: `task_id` is ignored, so no job can be found by it."""
    return Era(**{"honours_task_id": False, **changes})


BUSY_DETAIL = {
    "error": "No training workers available",
    "hint": "All training workers are busy; retry shortly",
}


@dataclass
class Job:
    operation_id: str
    strategy_name: str
    behaviour: Behaviour
    status: str = "running"
    polls: int = 0


@dataclass
class Request:
    at: float
    method: str
    path: str
    body: Any


class FakeTrainingApi:
    def __init__(self) -> None:
        self.behaviours: dict[str, Behaviour] = {}
        self.default = Behaviour()
        # Backtests (`POST /backtests/start`), by strategy name like trainings.
        self.backtest_behaviours: dict[str, Behaviour] = {}
        self.backtest_default = Behaviour(polls=2, result=dict(GOOD_BACKTEST))
        self.backtests: dict[str, Job] = {}  # apart from `jobs`, which are the trainings
        self.jobs: dict[str, Job] = {}
        self.by_task_id: dict[str, str] = {}
        self.requests: list[Request] = []
        self.era = Era()
        self.lock = threading.Lock()
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.connections: set[socket.socket] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> FakeTrainingApi:
        handler = _handler_for(self)
        self._server = _QuietServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the socket: connections are refused until `start()` again (same port)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        # Kept-alive connections would otherwise go on being served by their threads.
        with self.lock:
            for connection in list(self.connections):
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            self.connections.clear()

    # -- what tests read ------------------------------------------------------------------

    def calls(self, method: str, prefix: str = "") -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.method == method and r.path.startswith(prefix)]

    def starts_for(self, task_id: str) -> int:
        return sum(
            1
            for r in self.calls("POST", "/api/v1/trainings/start")
            if isinstance(r.body, dict) and r.body.get("task_id") == task_id
        )

    # -- the contract -------------------------------------------------------------------

    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        """(status, answer); status 0 means: drop the connection without answering."""
        with self.lock:
            self.requests.append(Request(time.time(), method, path, body))
            if method == "POST" and path == "/api/v1/trainings/start":
                if time.monotonic() < self.era.busy_until:
                    return 503, {"detail": BUSY_DETAIL}
                status, answer = self._start(body)
                if status == 200 and self.era.drop_start_answers > 0:
                    self.era.drop_start_answers -= 1
                    return 0, None
                return status, answer
            if method == "POST" and path == "/api/v1/backtests/start":
                return self._start_backtest(body)
            if path.startswith("/api/v1/operations/"):
                op_id = path.rsplit("/", 1)[-1]
                job = self.jobs.get(op_id) or self.backtests.get(op_id)
                if job is None:
                    return 404, {"detail": f"Operation not found: {op_id}"}
                if method == "GET":
                    return 200, {"success": True, "data": self._poll(job)}
                if method == "DELETE":
                    if job.status in ("completed", "failed", "cancelled"):
                        return 400, {"detail": f"Cannot cancel operation in status {job.status}"}
                    job.status = "cancelled"
                    return 200, {"success": True, "data": {"operation_id": op_id}}
            if path == "/api/v1/health":
                return 200, {"status": "ok"}
            return 404, {"detail": "Not Found"}

    def _start(self, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict) or not body.get("strategy_name"):
            return 422, {"success": False, "error": {"code": "VALIDATION", "message": "bad body"}}
        name = body["strategy_name"]
        task_id = body.get("task_id")
        if not self.era.honours_task_id:
            task_id = None
        if task_id and task_id in self.by_task_id:
            op_id = self.by_task_id[task_id]
        else:
            # Today's ktrdr makes the task_id the operation id; older ones make their own.
            op_id = f"op_training_{time.strftime('%Y%m%d_%H%M%S')}_{uuid.uuid4().hex[:8]}"
            if task_id and self.era.task_id_is_operation_id:
                op_id = task_id
            behaviour = self.behaviours.get(name, self.default)
            self.jobs[op_id] = Job(op_id, name, behaviour)
            if task_id:
                self.by_task_id[task_id] = op_id
        return 200, {
            "success": True,
            "task_id": op_id,
            "status": "training_started",
            "message": f"Training started for {name}",
            "symbols": body.get("symbols"),
            "timeframes": body.get("timeframes"),
            "strategy_name": name,
        }

    def _start_backtest(self, body: Any) -> tuple[int, Any]:
        # ktrdr: no idempotency key, the id in `operation_id`, every start a new job.
        if not isinstance(body, dict) or not body.get("strategy_name"):
            return 422, {"success": False, "error": {"code": "VALIDATION", "message": "bad body"}}
        name = body["strategy_name"]
        op_id = f"op_backtesting_{time.strftime('%Y%m%d_%H%M%S')}_{uuid.uuid4().hex[:8]}"
        behaviour = self.backtest_behaviours.get(name, self.backtest_default)
        self.backtests[op_id] = Job(op_id, name, behaviour)
        return 200, {
            "success": True,
            "operation_id": op_id,
            "status": "started",
            "message": f"Backtest started for {name}",
            "symbol": body.get("symbol"),
            "timeframe": body.get("timeframe"),
            "mode": "local",
        }

    def _poll(self, job: Job) -> dict[str, Any]:
        if job.status == "running" and job.polls < self.era.pending_polls:
            job.polls += 1
            return {
                "operation_id": job.operation_id,
                "operation_type": "training",
                "status": "pending",
                "started_at": None,
                "metadata": {"start_date": None},
                "progress": {"percentage": 0.0, "current_step": None, "context": {}},
                "metrics": [],
                "error_message": None,
                "result_summary": None,
            }
        if job.status == "running":
            job.polls += 1
            behaviour = job.behaviour
            if behaviour.outcome != "never" and job.polls >= behaviour.polls:
                job.status = behaviour.outcome
        total = max(job.behaviour.polls, 1)
        epoch = min(job.polls, total)
        data: dict[str, Any] = {
            "operation_id": job.operation_id,
            "operation_type": (
                "backtesting" if job.operation_id.startswith("op_backtesting_") else "training"
            ),
            "status": job.status,
            "progress": {
                "percentage": 100.0 * epoch / total,
                "current_step": f"Epoch {epoch}/{total}",
                "steps_completed": epoch,
                "steps_total": total,
                "context": {},
            },
            "metrics": {
                "epochs": [
                    {"epoch": i, "train_loss": 1.0 - 0.1 * i, "val_accuracy": 0.4 + 0.02 * i}
                    for i in range(1, epoch + 1)
                ]
            },
            "error_message": None,
            "result_summary": None,
        }
        if self.era.metrics_list_bytes_per_poll:
            # Today's ktrdr: a list of loose entries that grows on every poll, never a mapping.
            entry = {"name": "training_progress", "value": "x" * 200, "tags": {"epoch": epoch}}
            per_poll = max(1, self.era.metrics_list_bytes_per_poll // 250)
            data["metrics"] = [entry] * (per_poll * job.polls)
            data["started_at"], data["metadata"] = None, {"start_date": None}
        if job.status == "completed":
            data["result_summary"] = job.behaviour.result
        if job.status == "failed":
            data["error_message"] = job.behaviour.error_message
        return data


class _QuietServer(ThreadingHTTPServer):
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Killed workers and stopped outages drop connections mid-answer: expected here.
        pass


def _handler_for(api: FakeTrainingApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            with api.lock:
                api.connections.add(self.connection)

        def finish(self) -> None:
            with api.lock:
                api.connections.discard(self.connection)
            super().finish()

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            status, answer = api.handle(method, self.path, body)
            if status == 0:  # accepted, but the answer is lost on the way
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            payload = json.dumps(answer).encode()
            head = (
                f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}\r\n"
                f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n\r\n"
            ).encode()
            drip = api.era.drip_interval_s
            if not drip:
                self.wfile.write(head + payload)
                return
            self.close_connection = True
            deadline = time.monotonic() + 60  # bounded: a dripping answer ends within a minute
            for index in range(len(head + payload)):
                if time.monotonic() > deadline:
                    return
                try:
                    self.wfile.write((head + payload)[index : index + 1])
                    self.wfile.flush()
                except OSError:  # the client gave up
                    return
                time.sleep(drip)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        def log_message(self, *_: Any) -> None:
            pass

    return Handler
