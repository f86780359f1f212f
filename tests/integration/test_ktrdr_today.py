"""Today's ktrdr behaviours against the real reference host, through a real worker.

The host runs with `KTRDR_HOST_BUSY=503` (a start is refused while its only worker trains, as
today's ktrdr does) and sits behind a small recording proxy that can lose a start's answer
after the host accepted it, or drip every answer. Each cycle must end with exactly one remote
job; a slow peer must fail the cycle within its error budget.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from ktrdr_tasks import workflow
from tests.integration.conftest import wait_for, wait_for_condition
from tests.support.processes import REPO, Process, free_port, start_training_host, start_worker

pytestmark = pytest.mark.integration

BASE = "eurusd_1h_rsi_macd_adx"


@dataclass
class Proxy:
    """Forwards every request to the host; records (method, path, status); can drop answers."""

    target: str
    seen: list[tuple[str, str, int]] = field(default_factory=list)
    drop_start_answers: int = 0
    drip_interval_s: float = 0.0  # send every answer one byte at a time, this far apart
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def starts(self, status: int | None = None) -> int:
        with self.lock:
            return sum(
                1
                for method, path, code in self.seen
                if method == "POST"
                and path.endswith("/trainings/start")
                and (status is None or code == status)
            )


def _handler(proxy: Proxy, http: httpx.Client) -> type[BaseHTTPRequestHandler]:
    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {"content-type": self.headers.get("content-type", "application/json")}
            answer = http.request(self.command, self.path, content=body, headers=headers)
            is_start = self.command == "POST" and self.path.endswith("/trainings/start")
            with proxy.lock:
                proxy.seen.append((self.command, self.path, answer.status_code))
                drop = is_start and answer.status_code == 200 and proxy.drop_start_answers > 0
                if drop:
                    proxy.drop_start_answers -= 1
            if drop:  # the host took the job; its answer is lost on the way
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            head = (
                f"HTTP/1.1 {answer.status_code} {answer.reason_phrase}\r\n"
                "content-type: application/json\r\n"
                f"content-length: {len(answer.content)}\r\n\r\n"
            ).encode()
            self._send(head + answer.content)

        def _send(self, raw: bytes) -> None:
            if not proxy.drip_interval_s:
                self.wfile.write(raw)
                return
            self.close_connection = True
            deadline = time.monotonic() + 60  # bounded: a dripping answer ends within a minute
            for index in range(len(raw)):
                if time.monotonic() > deadline or not proxy.drip_interval_s:
                    return
                try:
                    self.wfile.write(raw[index : index + 1])
                    self.wfile.flush()
                except OSError:  # the client gave up
                    return
                time.sleep(proxy.drip_interval_s)

        do_GET = do_POST = do_DELETE = _forward

        def log_message(self, *_: object) -> None:
            pass

    return Forward


@contextlib.contextmanager
def proxy_to(target: str) -> Iterator[Proxy]:
    proxy = Proxy(target)
    with httpx.Client(base_url=target, timeout=30) as http:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(proxy, http))
        server.daemon_threads = True
        proxy.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield proxy
        finally:
            server.shutdown()
            server.server_close()


def _strategy(directory: Path, name: str, epochs: int) -> str:
    document = yaml.safe_load((REPO / "strategies" / f"{BASE}.yaml").read_text())
    document["name"] = name
    document["model"]["training"]["epochs"] = epochs
    (directory / f"{name}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return name


@dataclass
class Today:
    proxy: Proxy
    host_url: str
    strategies: Path

    def operations(self) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.host_url}/api/v1/operations", params={"limit": 1000})
        return list(answer.json()["data"])

    def jobs_of(self, strategy: str) -> int:
        """Training jobs of `strategy` (its cycle's backtest is an operation of its own)."""
        return sum(
            1
            for row in self.operations()
            if row["strategy_name"] == strategy and row["operation_type"] == "training"
        )


@pytest.fixture(scope="module")
def today(
    cycle_env: dict[str, str], strategies_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Today]:
    logs = tmp_path_factory.mktemp("today-logs")
    port = free_port()
    host_env = {
        **cycle_env,
        "KTRDR_HOST_BUSY": "503",
        "KTRDR_TRAINING_CONCURRENCY": "1",
        "KTRDR_MODELS_DIR": str(tmp_path_factory.mktemp("today-models")),
    }
    host: Process = start_training_host(host_env, logs, port)
    host_url = f"http://127.0.0.1:{port}"
    try:
        with proxy_to(host_url) as proxy:
            worker = start_worker({**cycle_env, "KTRDR_API_URL": proxy.url}, logs, name="today")
            try:
                yield Today(proxy, host_url, strategies_dir)
            finally:
                worker.stop()
    finally:
        host.stop()


def test_a_start_whose_answer_is_lost_after_the_host_took_it_ends_with_one_job(
    today: Today,
) -> None:
    name = _strategy(today.strategies, "today_lost_answer", epochs=3)
    today.proxy.drop_start_answers = 1

    result = workflow.trigger(strategy=name, bypass_gates=True)
    record = wait_for(result.operation_id, {"completed", "failed", "cancelled"}, timeout=120)

    assert record["status"] == "completed", record["error_message"]
    assert today.proxy.starts() == 1  # the lost answer was resolved by a lookup, not a re-POST
    assert today.jobs_of(name) == 1
    assert record["metadata"]["training_operation_id"] == result.operation_id  # its task_id


def test_a_ten_second_busy_window_is_survived(today: Today) -> None:
    blocker = _strategy(today.strategies, "today_blocker", epochs=100_000)
    name = _strategy(today.strategies, "today_after_busy", epochs=3)
    start = {
        "strategy_name": blocker,
        "symbols": ["EURUSD"],
        "timeframes": ["1h"],
        "start_date": "2017-05-01",
        "end_date": "2018-02-01",
    }
    answer = httpx.post(f"{today.host_url}/api/v1/trainings/start", json=start, timeout=30)
    assert answer.status_code == 200, answer.text
    blocker_id = answer.json()["task_id"]
    refused_before = today.proxy.starts(503)

    result = workflow.trigger(strategy=name, bypass_gates=True)
    time.sleep(10)  # the host's only worker stays busy for 10 s
    httpx.request(
        "DELETE",
        f"{today.host_url}/api/v1/operations/{blocker_id}",
        content=json.dumps({"reason": "busy window over"}),
        headers={"content-type": "application/json"},
    )
    record = wait_for(result.operation_id, {"completed", "failed", "cancelled"}, timeout=120)

    refused = today.proxy.starts(503) - refused_before
    print(f"starts refused with 503 during the busy window: {refused}")
    assert record["status"] == "completed", record["error_message"]
    assert refused >= 3  # the window was real: several starts were turned away
    assert today.jobs_of(name) == 1


def test_a_training_api_that_drips_its_answers_fails_the_cycle_within_the_budget(
    today: Today, cycle_env: dict[str, str]
) -> None:
    name = _strategy(today.strategies, "today_dripping", epochs=100_000)
    result = workflow.trigger(strategy=name)
    wait_for_condition(
        lambda: bool(workflow.status(result.operation_id)["metadata"].get("training_operation_id")),
        30,
        "the training to start",
    )
    today.proxy.drip_interval_s = 2.0  # one byte every 2 s: every read is inside the timeout
    try:
        dripping = time.monotonic()
        record = wait_for(result.operation_id, {"completed", "failed", "cancelled"}, timeout=90)
        gave_up = time.monotonic() - dripping
    finally:
        today.proxy.drip_interval_s = 0.0
        httpx.delete(f"{today.host_url}/api/v1/operations/{result.operation_id}")

    budget = int(cycle_env["KTRDR_POLL_MAX_ERRORS"]) * float(cycle_env["KTRDR_API_TIMEOUT_S"])
    print(f"dripping training API: cycle failed {gave_up:.1f} s after the drip began")
    assert record["status"] == "failed"
    assert "in a row" in record["error_message"]
    assert "timed out" in record["error_message"]
    assert gave_up < budget + 15
