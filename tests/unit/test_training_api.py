"""The training API client: ktrdr's routes and shapes, and every failure classified once."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from ktrdr_tasks import training_api
from ktrdr_tasks.errors import OperationNotFoundError, PermanentApiError, TransientApiError
from ktrdr_tasks.training_api import StartTrainingRequest, TrainingApiClient
from tests.support.fake_training_api import (
    Behaviour,
    FakeTrainingApi,
    december_ktrdr,
    todays_ktrdr,
)
from tests.support.processes import wait_until

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


# -- a slow peer: the total deadline ------------------------------------------------------


@pytest.fixture
def api() -> Iterator[FakeTrainingApi]:
    """The scripted ktrdr-compatible service on a loopback port."""
    service = FakeTrainingApi().start()
    yield service
    service.stop()


def _start_job(api: FakeTrainingApi, task_id: str = "op_agent_research_x") -> str:
    client = TrainingApiClient(api.url, timeout_s=5)
    return client.start_training(REQUEST.model_copy(update={"task_id": task_id}))


def test_a_dripping_poll_answer_is_given_up_at_the_total_deadline(api: FakeTrainingApi) -> None:
    training_id = _start_job(api)
    api.era.drip_interval_s = 2.0  # one byte every 2 s: each read is well inside the timeout
    client = TrainingApiClient(api.url, timeout_s=3)

    started = time.monotonic()
    with pytest.raises(TransientApiError, match=r"timed out .*within 3 s"):
        client.get_operation(training_id)
    assert 3 <= time.monotonic() - started < 4.5


def test_a_dripping_cancel_is_given_up_at_the_total_deadline(api: FakeTrainingApi) -> None:
    training_id = _start_job(api)
    api.era.drip_interval_s = 2.0
    client = TrainingApiClient(api.url, timeout_s=1.5)

    started = time.monotonic()
    with pytest.raises(TransientApiError, match="timed out"):
        client.cancel_operation(training_id, "user")
    # Three attempts with backoff, each ended by its own deadline.
    assert time.monotonic() - started < 3 * 1.5 + 2.5


def test_a_dripping_start_adopts_the_job_it_started(api: FakeTrainingApi) -> None:
    api.era = todays_ktrdr(drip_interval_s=2.0)
    client = TrainingApiClient(api.url, timeout_s=1.5)

    def answer_lookups_at_once() -> None:
        # The start drips; once it has been given up, the lookup gets a prompt answer.
        wait_until(lambda: api.starts_for(REQUEST.task_id or "") == 1, 5, "the start")
        time.sleep(1.6)
        api.era.drip_interval_s = 0.0

    helper = threading.Thread(target=answer_lookups_at_once)
    helper.start()
    started = time.monotonic()
    training_id = client.start_training(REQUEST)
    helper.join()

    assert training_id == REQUEST.task_id
    assert api.starts_for(REQUEST.task_id or "") == 1  # never POSTed twice
    assert time.monotonic() - started < 1.5 + 2 * 1.5 + 1.5


# -- today's ktrdr (April 2026) ---------------------------------------------------------------


def test_a_busy_service_answering_503_is_retried_until_it_takes_the_start(
    api: FakeTrainingApi,
) -> None:
    api.era = todays_ktrdr(busy_until=time.monotonic() + 1.0)

    training_id = TrainingApiClient(api.url, timeout_s=5).start_training(REQUEST)

    assert training_id == REQUEST.task_id
    busy = [r for r in api.calls("POST", "/api/v1/trainings/start")]
    assert len(busy) >= 2 and len(api.jobs) == 1


def test_a_busy_503_names_the_reason_and_is_transient(api: FakeTrainingApi) -> None:
    api.era = todays_ktrdr(busy_until=time.monotonic() + 60)
    with pytest.raises(TransientApiError, match=r"503.*No training workers available") as caught:
        TrainingApiClient(api.url, timeout_s=5).start_training(REQUEST)
    assert caught.value.status_code == 503
    assert not api.calls("GET")  # a 503 started nothing: no lookup


def test_a_start_dropped_after_acceptance_adopts_the_job_by_task_id(api: FakeTrainingApi) -> None:
    api.era = todays_ktrdr(drop_start_answers=1)

    training_id = TrainingApiClient(api.url, timeout_s=5).start_training(REQUEST)

    assert training_id == REQUEST.task_id
    assert len(api.jobs) == 1 and api.starts_for(REQUEST.task_id or "") == 1
    assert [r.path for r in api.calls("GET")] == [f"/api/v1/operations/{REQUEST.task_id}"]


def test_re_using_a_task_id_starts_nothing(api: FakeTrainingApi) -> None:
    api.era = todays_ktrdr()
    client = TrainingApiClient(api.url, timeout_s=5)

    assert client.start_training(REQUEST) == client.start_training(REQUEST) == REQUEST.task_id
    assert len(api.jobs) == 1


def test_a_dropped_start_on_a_december_backend_says_so_and_never_posts_twice(
    api: FakeTrainingApi,
) -> None:
    api.era = december_ktrdr(drop_start_answers=1)

    with pytest.raises(PermanentApiError, match="ignores task_id") as caught:
        TrainingApiClient(api.url, timeout_s=5).start_training(REQUEST)

    assert not isinstance(caught.value, OperationNotFoundError)
    assert api.starts_for(REQUEST.task_id or "") == 1 and len(api.jobs) == 1
    assert "GET /api/v1/operations?active_only=true" in str(caught.value)


def test_a_refused_connection_is_retried_without_a_lookup() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        if len(seen) == 1:
            raise httpx.ConnectError("connection refused")
        return httpx.Response(200, json={"success": True, "task_id": "op_training_2"})

    assert client_for(handler).start_training(REQUEST) == "op_training_2"
    assert seen == ["POST", "POST"]


def test_first_poll_pending_with_null_dates_is_still_running(api: FakeTrainingApi) -> None:
    api.era = todays_ktrdr()
    client = TrainingApiClient(api.url, timeout_s=5)
    training_id = client.start_training(REQUEST)

    first = client.get_operation(training_id)

    assert first.status == "pending" and first.is_running
    assert first.metrics == {}  # a list there is not the December shape: never read


def test_epoch_one_of_one_and_a_reset_after_cancel_are_read_as_sent() -> None:
    polls = iter(
        [
            {"status": "running", "progress": {"percentage": 2.0, "current_step": "Epoch 1/1"}},
            {"status": "running", "progress": {"percentage": 20.0, "current_step": "Epoch 2/10"}},
            {"status": "cancelled", "progress": {"percentage": 0.0, "current_step": None}},
        ]
    )
    client = client_for(lambda request: httpx.Response(200, json={"data": next(polls)}))

    seen = [client.get_operation("op") for _ in range(3)]

    assert [r.progress.current_step for r in seen] == ["Epoch 1/1", "Epoch 2/10", None]
    assert seen[2].status == "cancelled" and seen[2].progress.percentage == 0.0


def test_a_relative_model_path_is_passed_back_unchanged() -> None:
    data = {
        "status": "completed",
        "started_at": None,
        "metadata": {"start_date": None},
        "result_summary": {"model_path": "models/momo/1h_v3", "test_metrics": {}},
    }
    remote = client_for(answer(200, {"success": True, "data": data})).get_operation("op")
    assert remote.result_summary is not None
    assert remote.result_summary["model_path"] == "models/momo/1h_v3"


# -- long trainings: the answer's size ---------------------------------------------------------

HEAD = {
    "operation_id": "op_training_long",
    "operation_type": "training",
    "status": "running",
    "created_at": "2026-04-01T10:00:00+00:00",
    "started_at": None,
    "progress": {
        "percentage": 50.0,
        "current_step": "Epoch 50000/100000",
        "steps_completed": 50000,
        "steps_total": 100000,
        "context": {},
    },
    "metadata": {"start_date": None},
    "error_message": None,
    "result_summary": None,
}


def _epochs(count: int) -> list[dict[str, object]]:
    return [
        {
            "epoch": i,
            "train_loss": 1.0 / i,
            "val_loss": 1.1 / i,
            "train_accuracy": 0.5,
            "val_accuracy": 0.55,
            "learning_rate": 0.001,
            "duration_seconds": 0.012345,
            "timestamp": "2026-04-01T10:00:00.123456+00:00",
        }
        for i in range(1, count + 1)
    ]


@pytest.fixture(scope="module")
def history() -> list[dict[str, object]]:
    return _epochs(100_000)


def _serve(payload: bytes) -> Iterator[str]:
    class Answer(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            with contextlib.suppress(OSError):  # a client that read enough hangs up
                self.wfile.write(payload)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("metrics_first", [False, True], ids=["metrics last", "metrics first"])
def test_a_100000_epoch_metrics_list_neither_fails_the_poll_nor_is_parsed(
    history: list[dict[str, object]], metrics_first: bool
) -> None:
    data = {"metrics": history, **HEAD} if metrics_first else {**HEAD, "metrics": history}
    payload = json.dumps({"success": True, "data": data}).encode()
    assert len(payload) > 20 * 1024 * 1024  # past the old 8 MiB guard

    for url in _serve(payload):
        client = TrainingApiClient(url, timeout_s=30)
        started = time.perf_counter()
        remote = client.get_operation("op_training_long")
        seconds = time.perf_counter() - started

    assert remote.status == "running" and remote.progress.steps_completed == 50000
    assert remote.metrics == {}
    full_parse = time.perf_counter()
    json.loads(payload)
    full_parse = time.perf_counter() - full_parse
    print(
        f"{len(payload) / 1e6:.1f} MB answer read in {seconds:.3f} s; json.loads {full_parse:.3f} s"
    )
    if not metrics_first:  # the usual order: the rest is never even downloaded
        assert seconds < full_parse / 5


def test_a_december_epochs_history_keeps_the_last_epoch(
    history: list[dict[str, object]],
) -> None:
    small = {**HEAD, "metrics": {"epochs": history[:40]}}
    remote = client_for(answer(200, {"success": True, "data": small})).get_operation("op")
    assert remote.metrics == {"epochs": [history[39]]}

    big = json.dumps({"success": True, "data": {**HEAD, "metrics": {"epochs": history}}})
    remote = client_for(lambda r: httpx.Response(200, content=big.encode())).get_operation("op")
    assert remote.status == "running" and remote.metrics == {}


def test_an_absurd_answer_is_still_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training_api, "MAX_STREAMED_BYTES", 1024 * 1024)
    body = json.dumps({"data": {"metrics": ["x" * 1000] * 2000, **HEAD}}).encode()
    with pytest.raises(PermanentApiError, match="more than 1 MiB"):
        client_for(lambda r: httpx.Response(200, content=body)).get_operation("op")


def test_a_whole_training_on_todays_ktrdr_reads_through_its_growing_metrics_list(
    api: FakeTrainingApi,
) -> None:
    api.era = todays_ktrdr(metrics_list_bytes_per_poll=2500)
    api.default = Behaviour(polls=60)
    client = TrainingApiClient(api.url, timeout_s=5)
    training_id = client.start_training(REQUEST)

    seen = [client.get_operation(training_id)]
    while seen[-1].is_running:
        seen.append(client.get_operation(training_id))

    statuses = [remote.status for remote in seen]
    assert statuses[0] == "pending" and statuses[-1] == "completed"
    assert all(remote.metrics == {} for remote in seen)
    last_answer = httpx.get(f"{api.url}/api/v1/operations/{training_id}").content
    assert len(last_answer) > 100_000  # today's ktrdr: 100+ KB of `metrics` on long trainings
    assert isinstance(json.loads(last_answer)["data"]["metrics"], list)
    assert seen[-1].result_summary is not None
    assert seen[-1].result_summary["model_path"] == "models/fake/1h_v1"  # relative, unchanged


@pytest.mark.parametrize(
    ("failure", "looked_up"),
    [
        (httpx.ConnectError("refused"), False),
        (httpx.ConnectTimeout("slow connect"), False),
        (httpx.WriteError("reset while sending"), False),
        (httpx.ReadTimeout("no answer"), True),
        (httpx.RemoteProtocolError("closed without answer"), True),
        (httpx.ReadError("reset while reading"), True),
        (httpx.Response(500, json={"detail": "boom"}), False),
        (httpx.Response(503, json={"detail": {"error": "No training workers available"}}), False),
        (httpx.Response(502, text="bad gateway"), True),
        (httpx.Response(504, text="gateway timeout"), True),
    ],
)
def test_only_a_start_that_may_have_reached_the_service_is_looked_up(
    failure: Exception | httpx.Response, looked_up: bool
) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        if request.method == "GET":
            return httpx.Response(200, json={"data": {"status": "running"}})
        if len(seen) > 1:
            return httpx.Response(200, json={"success": True, "task_id": REQUEST.task_id})
        if isinstance(failure, httpx.Response):
            return failure
        raise failure

    assert client_for(handler).start_training(REQUEST) == REQUEST.task_id
    assert seen == (["POST", "GET"] if looked_up else ["POST", "POST"])


def test_an_endless_error_answer_to_a_poll_is_read_only_for_its_message() -> None:
    sent: list[int] = []

    def endless() -> Iterator[bytes]:
        while len(sent) < 64:  # 64 MiB, were it read to its end
            sent.append(1)
            yield b'{"detail": "gone"}' + b" " * (1024 * 1024 - 18)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, content=endless())

    client = TrainingApiClient("http://trainer", transport=httpx.MockTransport(handler))
    with pytest.raises(OperationNotFoundError, match="gone"):
        client.get_operation("op_training_1")
    assert len(sent) <= training_api.MAX_RESPONSE_BYTES // (1024 * 1024) + 1


def test_credentials_in_the_url_are_sent_as_basic_auth_and_never_shown() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(503, json={"detail": "busy"})

    client = TrainingApiClient(
        "https://ktrdr:s3cret@trainer:8000", transport=httpx.MockTransport(handler)
    )
    with pytest.raises(TransientApiError) as refused:
        client.get_operation("op_training_1")

    [request] = seen
    assert request.headers["authorization"] == "Basic a3RyZHI6czNjcmV0"  # ktrdr:s3cret
    assert str(request.url) == "https://trainer:8000/api/v1/operations/op_training_1"
    assert "s3cret" not in str(refused.value) and client.base_url == "https://trainer:8000"
