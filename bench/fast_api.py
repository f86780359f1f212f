"""A fast training service for benchmarks: ktrdr's HTTP contract (DESIGN section 2), no work.

Each job "trains" for a fixed wall time (`job_seconds`, 0 = done at the first poll) and then
answers `completed` with a result that passes the default training gate. The server records
when every status GET for a job arrives, which is how the polling benchmark measures poll lag
(arrival minus previous arrival minus the poll interval) and completion-detection delay
(first GET that answers `completed` minus the moment the job ended), from the point of view
of the training service, the only clock the chain cannot influence.
It runs as its own process (`python -m bench.fast_api --port P --job-seconds S`, one thread
per kept-alive connection), so its work never competes with the benchmark's for one GIL; the
benchmark creates jobs and reads the recorded poll times through two extra routes,
`POST /bench/jobs` and `GET /bench/jobs`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

RESULT = {
    "model_path": "models/bench/1h_v1",
    "training_metrics": {
        "final_train_loss": 0.55,
        "final_val_accuracy": 0.62,
        "epochs_completed": 10,
        "history": {"train_loss": [1.05, 0.8, 0.55], "val_loss": [1.0, 0.8, 0.7]},
    },
    "test_metrics": {"test_accuracy": 0.61, "test_loss": 0.7},
}
BACKTEST_RESULT = {
    "symbol": "EURUSD",
    "timeframe": "1h",
    "trade_count": 6,
    "metrics": {
        "total_trades": 6,
        "win_rate": 0.5,
        "max_drawdown_pct": 0.02,
        "sharpe_ratio": 1.0,
        "total_return_pct": 0.01,
    },
}
EPOCHS = 10


@dataclass
class Job:
    operation_id: str
    started_at: float
    ends_at: float
    cancelled: bool = False
    polls: list[float] = field(default_factory=list)
    detected_at: float | None = None  # arrival of the first GET that answered `completed`


class FastTrainingApi:
    def __init__(self, job_seconds: float = 0.0) -> None:
        self.job_seconds = job_seconds
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.requests = 0
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self, port: int = 0) -> FastTrainingApi:
        ThreadingHTTPServer.allow_reuse_address = True
        ThreadingHTTPServer.request_queue_size = 1024
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def create_job(self, operation_id: str | None = None, starts_at: float | None = None) -> str:
        """A job as `POST /trainings/start` would create it (the polling benchmark's setup)."""
        op_id = operation_id or f"op_training_bench_{uuid.uuid4().hex[:12]}"
        start = time.time() if starts_at is None else starts_at
        with self.lock:
            self.jobs[op_id] = Job(op_id, start, start + self.job_seconds)
        return op_id

    # -- the contract -------------------------------------------------------------------

    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        now = time.time()
        with self.lock:
            self.requests += 1
        if method == "POST" and path == "/api/v1/trainings/start":
            if not isinstance(body, dict) or not body.get("strategy_name"):
                return 422, {"success": False, "error": {"code": "VALIDATION", "message": "?"}}
            op_id = self.create_job()
            return 200, {
                "success": True,
                "task_id": op_id,
                "status": "training_started",
                "message": "Training started",
                "symbols": body.get("symbols"),
                "timeframes": body.get("timeframes"),
                "strategy_name": body["strategy_name"],
            }
        if method == "POST" and path == "/api/v1/backtests/start":
            # A backtest "runs" as long as a training and passes the default backtest gate.
            op_id = self.create_job(f"op_backtesting_bench_{uuid.uuid4().hex[:12]}")
            return 200, {"success": True, "operation_id": op_id, "status": "started"}
        if path.startswith("/api/v1/operations/"):
            op_id = path.rsplit("/", 1)[-1]
            with self.lock:
                job = self.jobs.get(op_id)
                if job is None:
                    return 404, {"detail": f"Operation not found: {op_id}"}
                if method == "DELETE":
                    job.cancelled = True
                    return 200, {"success": True, "data": {"operation_id": op_id}}
                job.polls.append(now)
                done = now >= job.ends_at
                if done and job.detected_at is None:
                    job.detected_at = now
            return 200, {"success": True, "data": _operation_info(job, now, done)}
        if path == "/bench/jobs" and method == "POST":
            for op_id, starts_at in body["jobs"]:
                self.create_job(op_id, starts_at)
            return 200, {"created": len(body["jobs"])}
        if path == "/bench/jobs":
            with self.lock:
                jobs = [vars(job).copy() for job in self.jobs.values()]
            return 200, {"jobs": jobs, "requests": self.requests}
        if path == "/api/v1/health":
            return 200, {"status": "ok"}
        return 404, {"detail": "Not Found"}


def _operation_info(job: Job, now: float, done: bool) -> dict[str, Any]:
    span = max(job.ends_at - job.started_at, 1e-9)
    fraction = 1.0 if done else min(max((now - job.started_at) / span, 0.0), 1.0)
    epoch = min(EPOCHS, int(fraction * EPOCHS))
    return {
        "operation_id": job.operation_id,
        "operation_type": "training",
        "status": "cancelled" if job.cancelled else ("completed" if done else "running"),
        "progress": {
            "percentage": 100.0 * fraction,
            "current_step": f"Epoch {epoch}/{EPOCHS}",
            "steps_completed": epoch,
            "steps_total": EPOCHS,
            "context": {},
        },
        "metrics": {},
        "error_message": None,
        "result_summary": (
            (BACKTEST_RESULT if job.operation_id.startswith("op_backtesting_") else RESULT)
            if done
            else None
        ),
    }


def _handler_for(api: FastTrainingApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # http.server writes the headers and the body separately: with Nagle on, the body
        # waits for the client's delayed ACK (40 ms a request on Linux). uvicorn sets NODELAY.
        disable_nagle_algorithm = True

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = None
            with contextlib.suppress(ValueError):
                body = json.loads(raw) if raw else None
            status, answer = api.handle(method, self.path, body)
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        def log_message(self, *_: Any) -> None:
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--job-seconds", type=float, default=0.0)
    args = parser.parse_args()
    FastTrainingApi(args.job_seconds).start(args.port)
    threading.Event().wait()


if __name__ == "__main__":
    main()
