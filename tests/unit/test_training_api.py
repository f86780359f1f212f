"""The training API client: ktrdr's routes and shapes, and every failure classified once."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from ktrdr_tasks.errors import OperationNotFoundError, PermanentApiError, TransientApiError
from ktrdr_tasks.training_api import StartTrainingRequest, TrainingApiClient

Handler = Callable[[httpx.Request], httpx.Response]
REQUEST = StartTrainingRequest(
    strategy_name="s", symbols=["EURUSD"], timeframes=["1h"], task_id="op_agent_research_x"
)


def client_for(handler: Handler) -> TrainingApiClient:
    return TrainingApiClient("http://trainer", transport=httpx.MockTransport(handler))


def answer(status: int, body: object) -> Handler:
    return lambda request: httpx.Response(status, json=body)


def test_start_posts_ktrdr_shape_and_reads_task_id() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200, json={"success": True, "task_id": "op_training_1", "status": "training_started"}
        )

    assert client_for(handler).start_training(REQUEST) == "op_training_1"
    assert seen[0].method == "POST"
    assert seen[0].url.path == "/api/v1/trainings/start"
    assert json.loads(seen[0].content) == {
        "strategy_name": "s",
        "symbols": ["EURUSD"],
        "timeframes": ["1h"],
        "start_date": None,
        "end_date": None,
        "task_id": "op_agent_research_x",
    }


def test_start_accepts_operation_id_too() -> None:
    client = client_for(answer(200, {"success": True, "operation_id": "op_training_2"}))
    assert client.start_training(REQUEST) == "op_training_2"


def test_start_400_strategy_not_found_is_permanent_with_the_message() -> None:
    client = client_for(answer(400, {"detail": "Strategy file not found: s.yaml (searched: /x)"}))
    with pytest.raises(PermanentApiError, match=r"Strategy file not found: s\.yaml") as error:
        client.start_training(REQUEST)
    assert error.value.status_code == 400


def test_start_400_invalid_strategy_object_detail_lists_errors_and_hint() -> None:
    detail = {
        "message": "Strategy validation failed",
        "error_code": "STRATEGY_INVALID",
        "details": {"errors": ["Missing required field: version"]},
        "suggestion": "Fix the listed fields",
    }
    with pytest.raises(PermanentApiError) as error:
        client_for(answer(400, {"detail": detail})).start_training(REQUEST)
    text = str(error.value)
    assert "Strategy validation failed" in text
    assert "Missing required field: version" in text
    assert "Fix the listed fields" in text


def test_start_422_error_object_is_permanent() -> None:
    body = {
        "success": False,
        "error": {"code": "VALIDATION_ERROR", "message": "symbols: required", "details": []},
    }
    with pytest.raises(PermanentApiError, match="symbols: required"):
        client_for(answer(422, body)).start_training(REQUEST)


def test_start_503_is_transient_after_retries() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(
            503,
            json={"detail": {"error": "No training workers available", "hint": "start a worker"}},
        )

    with pytest.raises(TransientApiError, match="No training workers available"):
        client_for(handler).start_training(REQUEST)
    assert len(calls) == 3  # tenacity retried with backoff


def test_start_without_an_id_is_permanent() -> None:
    with pytest.raises(PermanentApiError, match="no operation id"):
        client_for(answer(200, {"success": True})).start_training(REQUEST)


def test_status_reads_operation_info() -> None:
    data = {
        "operation_id": "op_training_1",
        "status": "running",
        "progress": {
            "percentage": 40,
            "current_step": "Epoch 4/10",
            "steps_completed": 4,
            "steps_total": 10,
            "context": {},
        },
        "metrics": {"epochs": [{"epoch": 4, "train_loss": 0.9}]},
    }
    remote = client_for(answer(200, {"success": True, "data": data})).get_operation("op_training_1")
    assert remote.status == "running" and remote.is_running
    assert remote.progress.percentage == 40
    assert remote.metrics["epochs"][0]["train_loss"] == 0.9


def test_unknown_status_counts_as_running() -> None:
    remote = client_for(
        answer(200, {"success": True, "data": {"status": "resuming"}})
    ).get_operation("x")
    assert remote.is_running


def test_progress_of_wrong_types_is_dropped_not_fatal() -> None:
    data = {"status": "running", "progress": {"percentage": "lots", "current_step": 5}}
    remote = client_for(answer(200, {"success": True, "data": data})).get_operation("x")
    assert remote.progress.percentage is None and remote.progress.current_step is None


def test_status_404_is_operation_not_found() -> None:
    client = client_for(answer(404, {"detail": "Operation not found: x"}))
    with pytest.raises(OperationNotFoundError, match="Operation not found: x"):
        client.get_operation("x")


@pytest.mark.parametrize("status", [500, 502, 503])
def test_status_5xx_is_transient(status: int) -> None:
    with pytest.raises(TransientApiError):
        client_for(answer(status, {"detail": "boom"})).get_operation("x")


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, content=b"<html>not json</html>"),
        httpx.Response(200, json=["a", "list"]),
        httpx.Response(200, json={"success": True, "data": {"no": "status"}}),
        httpx.Response(200, json={"success": True, "data": {"status": 7}}),
    ],
)
def test_malformed_status_answers_are_permanent(response: httpx.Response) -> None:
    with pytest.raises(PermanentApiError):
        client_for(lambda request: response).get_operation("x")


def test_huge_body_is_refused() -> None:
    big = b'{"pad": "' + b"x" * (9 * 1024 * 1024) + b'"}'
    with pytest.raises(PermanentApiError, match="more than 8 MiB"):
        client_for(lambda request: httpx.Response(200, content=big)).get_operation("x")


@pytest.mark.parametrize(
    ("status", "outcome"), [(200, "cancelled"), (400, "already_ended"), (404, "unknown")]
)
def test_cancel_uses_delete_on_the_operation_and_treats_ended_as_done(
    status: int, outcome: str
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, json={"detail": "x"})

    assert client_for(handler).cancel_operation("op_training_1", "user") == outcome
    assert seen[0].method == "DELETE"
    assert seen[0].url.path == "/api/v1/operations/op_training_1"


def test_connection_refused_is_transient_and_names_the_url() -> None:
    client = TrainingApiClient("http://127.0.0.1:1", timeout_s=1)
    with pytest.raises(TransientApiError, match=r"http://127.0.0.1:1 unreachable"):
        client.get_operation("x")


@pytest.fixture
def slow_server() -> Iterator[str]:
    class Slow(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(2)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_timeout_is_transient(slow_server: str) -> None:
    client = TrainingApiClient(slow_server, timeout_s=0.3)
    with pytest.raises(TransientApiError, match="timed out"):
        client.get_operation("x")
