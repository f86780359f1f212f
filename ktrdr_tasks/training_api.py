"""The only module that talks HTTP to the training service (a ktrdr backend or the reference host).

Routes and shapes are ktrdr's (DESIGN section 2, both eras of 2a). Every failure is classified
once, here, into the error tree of `ktrdr_tasks.errors`: connection trouble, timeouts and 5xx
are `TransientApiError` (retry); 4xx and malformed answers are `PermanentApiError` (fail the
cycle with the service's own message); 404 on an operation is `OperationNotFoundError`.

Every request has a total deadline (`timeout_s`, KTRDR_API_TIMEOUT_S): httpx bounds each read,
so a peer that drips one byte every 2 s would otherwise hold a request, and a worker slot,
for ever. The transport (`http_transport`, on `http.client`) keeps it, at a third of the
CPU of httpx's own. Overrunning it is a `TransientApiError` like any timeout, so it counts
against the cycle's error budget. Operation answers are read by `operation_answer`: a long
`data.metrics`, which grows with every epoch, is never parsed.

Starting and cancelling retry transient errors with backoff inside one call; polls are not
retried here, because the next poll is the retry. A start that broke off after the request
may have reached the service (a read timeout, a dropped connection) is never simply sent
again: the job is looked up by its `task_id`, which today's ktrdr makes the operation id.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
from pydantic import BaseModel, Field, ValidationError
from tenacity import (
    retry,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from ktrdr_tasks.errors import (
    OperationNotFoundError,
    PermanentApiError,
    TrainingApiError,
    TransientApiError,
)
from ktrdr_tasks.http_transport import Deadline, KeepAliveTransport
from ktrdr_tasks.metrics import count_api_errors
from ktrdr_tasks.operation_answer import read_operation_answer

API_PREFIX = "/api/v1"
# The most the chain keeps of one answer (everything but an operation's `data.metrics`).
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
# The most it reads at all: a 100,000-epoch `metrics` history of ~230 bytes an epoch is 23 MB.
MAX_STREAMED_BYTES = 256 * 1024 * 1024
START_ATTEMPTS = 3
CANCEL_ATTEMPTS = 3
# After an ambiguous start: how often to look the job up by task_id, and how long apart.
LOOKUP_ATTEMPTS = 3
LOOKUP_WAIT_S = 0.5


class StartTrainingRequest(BaseModel):
    strategy_name: str
    symbols: list[str]
    timeframes: list[str]
    start_date: str | None = None
    end_date: str | None = None
    task_id: str | None = None


class RemoteProgress(BaseModel):
    """Progress as a ktrdr backend reports it; every field optional, wrong types dropped."""

    percentage: float | None = None
    current_step: str | None = None
    steps_completed: int | None = None
    steps_total: int | None = None
    context: dict[str, Any] = Field(default_factory=dict)


class RemoteOperation(BaseModel):
    operation_id: str | None = None
    status: str
    progress: RemoteProgress = Field(default_factory=RemoteProgress)
    error_message: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    result_summary: dict[str, Any] | None = None

    @property
    def is_running(self) -> bool:
        # ktrdr has statuses beyond the five (e.g. `resuming`): anything not final is running.
        return self.status not in ("completed", "failed", "cancelled")


def _lenient_progress(raw: object) -> RemoteProgress:
    if not isinstance(raw, Mapping):
        return RemoteProgress()
    kept: dict[str, Any] = {}
    for name, kind in (
        ("percentage", float),
        ("current_step", str),
        ("steps_completed", int),
        ("steps_total", int),
    ):
        value = raw.get(name)
        if kind is str and isinstance(value, str):
            kept[name] = value[:500]
        elif kind is not str and isinstance(value, int | float) and not isinstance(value, bool):
            kept[name] = kind(value)
    if isinstance(raw.get("context"), Mapping):
        kept["context"] = dict(raw["context"])
    return RemoteProgress(**kept)


def error_message_from(response: httpx.Response) -> str:
    """The service's own words, whichever of ktrdr's error shapes they come in."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return text[:300] or f"HTTP {response.status_code}"
    if not isinstance(body, Mapping):
        return str(body)[:300]
    detail = body.get("detail", body.get("error"))
    if isinstance(detail, str):
        return detail
    if isinstance(detail, Mapping):
        parts = [str(detail.get(k)) for k in ("message", "error") if detail.get(k)]
        details = detail.get("details")
        if isinstance(details, Mapping) and isinstance(details.get("errors"), list):
            parts.append("; ".join(str(e) for e in details["errors"]))
        elif isinstance(details, list) and details:
            parts.append("; ".join(str(e) for e in details))
        for hint_key in ("suggestion", "hint"):
            if detail.get(hint_key):
                parts.append(f"hint: {detail[hint_key]}")
        if parts:
            return " - ".join(parts)
    if isinstance(detail, list):
        return "; ".join(str(item) for item in detail)[:1000]
    if body.get("message"):
        return str(body["message"])
    return json.dumps(body)[:300]


def _head(chunks: Iterator[bytes], limit: int = MAX_RESPONSE_BYTES) -> bytes:
    """At most `limit` bytes of a body: an error answer is read for its message only, however
    long the service makes it (an operation's answer is not capped on the way in)."""
    kept, size = [], 0
    for chunk in chunks:
        kept.append(chunk[: limit - size])
        size += len(kept[-1])
        if size >= limit:
            break
    return b"".join(kept)


def _may_have_arrived(error: TransientApiError) -> bool:
    """Whether a failed start may still have started a job on the service.

    Refused connections and requests not fully written never reached it, and a service that
    answered 5xx itself started nothing; a timeout or a connection lost while waiting for the
    answer (and a 502/504 from a proxy in front) may come after it accepted the job.
    """
    if error.status_code is not None:
        return error.status_code in (502, 504)
    unsent = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.WriteError)
    return not isinstance(error.__cause__, (*unsent, httpx.WriteTimeout))


class TrainingApiClient:
    """One client per process, its connections kept (see `http_transport`).

    `timeout_s` bounds each request as a whole: connecting, sending and reading the answer.
    Requests go straight to the transport, without `httpx.Client`: the client's URL merging,
    cookie jar, auth and redirect layers cost a poll about 0.3 ms of CPU and the training API
    uses none of them. So the service is called directly; HTTP(S)_PROXY in the environment
    is not used for it. Credentials in the URL (`https://user:password@host`, a host behind
    basic auth) are sent as basic auth, as httpx would, and never appear in messages.
    """

    def __init__(
        self,
        base_url: str,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        url = httpx.URL(base_url.rstrip("/"))
        self.base_url = str(url.copy_with(username=None, password=None)).rstrip("/")
        self.timeout_s = timeout_s
        self._deadline = Deadline()
        self._transport = transport or KeepAliveTransport(self._deadline)
        self._timeouts = httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)).as_dict()
        self._headers = httpx.Headers(
            {"user-agent": "ktrdr-tasks", "accept": "application/json", "connection": "keep-alive"}
        )
        if url.username or url.password:
            login = f"{url.username}:{url.password}".encode()
            self._headers["authorization"] = f"Basic {base64.b64encode(login).decode('ascii')}"

    def close(self) -> None:
        self._transport.close()

    # -- transport ---------------------------------------------------------------------

    @count_api_errors
    def _request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """Send one request within the deadline; the decoded answer, or a classified error."""
        url = f"{API_PREFIX}{path}"
        request = httpx.Request(
            method,
            f"{self.base_url}{url}",
            headers=self._headers,
            json=body,
            extensions={"timeout": self._timeouts},
        )
        self._deadline.at = deadline = time.monotonic() + self.timeout_s
        try:
            response = self._transport.handle_request(request)
            response.request = request
            try:
                chunks = self._chunks(response, deadline, method, url)
                if response.status_code >= 400:
                    raise self._refusal(method, url, path, response, _head(chunks))
                try:
                    if method == "GET" and path.startswith("/operations/"):
                        return read_operation_answer(
                            chunks,
                            max_total_bytes=MAX_STREAMED_BYTES,
                            max_kept_bytes=MAX_RESPONSE_BYTES,
                        )
                    return json.loads(b"".join(chunks))
                except ValueError as exc:
                    raise PermanentApiError(
                        f"training API at {self.base_url} sent an answer to {method} {url} "
                        f"that cannot be used ({exc}); refusing the answer",
                        status_code=response.status_code,
                    ) from None
            finally:
                response.close()
        except httpx.TimeoutException as exc:
            raise TransientApiError(
                f"training API at {self.base_url} timed out on {method} {url} "
                f"(no complete answer within {self.timeout_s:g} s, KTRDR_API_TIMEOUT_S)"
            ) from exc
        except httpx.TransportError as exc:
            raise TransientApiError(
                f"training API at {self.base_url} unreachable ({type(exc).__name__}: {exc})"
            ) from exc
        finally:
            self._deadline.at = None

    def _chunks(
        self, response: httpx.Response, deadline: float, method: str, url: str
    ) -> Iterator[bytes]:
        """The body as it arrives, ended at the deadline and at the size the chain keeps.

        Operation answers are bounded by the reader instead (their `metrics` may be large).
        """
        capped = not (method == "GET" and url.startswith(f"{API_PREFIX}/operations/"))
        size = 0
        for chunk in response.iter_bytes():
            if time.monotonic() > deadline:  # a transport without the socket deadline
                raise httpx.ReadTimeout("the request's total deadline passed")
            size += len(chunk)
            if capped and size > MAX_RESPONSE_BYTES:
                raise PermanentApiError(
                    f"training API at {self.base_url} sent more than "
                    f"{MAX_RESPONSE_BYTES // (1024 * 1024)} MiB to {method} {url}; "
                    "refusing the answer",
                    status_code=response.status_code,
                )
            yield chunk

    def _refusal(
        self, method: str, url: str, path: str, response: httpx.Response, content: bytes
    ) -> TrainingApiError:
        answer = httpx.Response(response.status_code, content=content)
        if answer.status_code >= 500:
            return TransientApiError(
                f"training API at {self.base_url} answered {answer.status_code} to "
                f"{method} {url}: {error_message_from(answer)}",
                status_code=answer.status_code,
            )
        error_type = PermanentApiError
        if answer.status_code == 404 and path.startswith("/operations/"):
            error_type = OperationNotFoundError
        return error_type(
            f"training API refused {method} {url} ({answer.status_code}): "
            f"{error_message_from(answer)}",
            status_code=answer.status_code,
        )

    # -- the three calls ---------------------------------------------------------------

    def start_training(self, request: StartTrainingRequest) -> str:
        """POST /trainings/start; returns the training operation id.

        Transient failures that cannot have started a job are retried. One that may have
        (the answer was lost after the service took the request) is resolved by looking the
        job up under `task_id`: today's ktrdr uses it as the operation id, so the job found is
        adopted and no second one is ever started.
        """
        try:
            return self._post_start(request)
        except TransientApiError as exc:
            if not _may_have_arrived(exc):
                raise
            return self._adopt_started(request, exc)

    @retry(
        retry=retry_if_exception(
            lambda exc: isinstance(exc, TransientApiError) and not _may_have_arrived(exc)
        ),
        stop=stop_after_attempt(START_ATTEMPTS),
        wait=wait_exponential(multiplier=0.5, max=4),
        reraise=True,
    )
    def _post_start(self, request: StartTrainingRequest) -> str:
        body = self._request("POST", "/trainings/start", request.model_dump())
        if not isinstance(body, Mapping):
            raise PermanentApiError(f"training API start answer is not an object: {body!r:.200}")
        if body.get("success") is False:
            raise PermanentApiError(
                f"training API did not start {request.strategy_name}: "
                f"{body.get('message') or body.get('error') or body}"
            )
        operation_id = body.get("task_id") or body.get("operation_id")
        if not isinstance(operation_id, str) or not operation_id:
            raise PermanentApiError(
                f"training API start answer has no operation id (task_id): {body!r:.300}"
            )
        return operation_id

    def _adopt_started(self, request: StartTrainingRequest, cause: TransientApiError) -> str:
        """The job an ambiguous start may have created, found under its task_id."""
        what = f"start of training {request.strategy_name} at {self.base_url} broke off ({cause})"
        if not request.task_id:
            raise PermanentApiError(
                f"{what} and it may have started a job; without a task_id it cannot be found"
            )
        last: TrainingApiError = cause
        for attempt in range(LOOKUP_ATTEMPTS):
            if attempt:
                time.sleep(LOOKUP_WAIT_S * attempt)  # a slow service may register it late
            try:
                found = self.get_operation(request.task_id)
            except (OperationNotFoundError, TransientApiError) as exc:
                last = exc
                continue
            return found.operation_id or request.task_id
        if isinstance(last, OperationNotFoundError):
            raise PermanentApiError(
                f"{what}, and it knows no operation {request.task_id}: a ktrdr backend from "
                "before 2026 ignores task_id and may be training it under another id (look in "
                "GET /api/v1/operations?active_only=true and cancel it); trigger a new cycle"
            )
        raise TransientApiError(f"{what}; looking the job up failed too: {last}")

    def get_operation(self, operation_id: str) -> RemoteOperation:
        """GET /operations/{id}, validated: a malformed answer is a PermanentApiError.

        Of `metrics` only the last of `epochs[]` is kept (the December 2025 backend's losses);
        today's ktrdr sends a malformed list there, which is never read.
        """
        body = self._request("GET", f"/operations/{operation_id}")
        data = body.get("data", body) if isinstance(body, Mapping) else None
        if not isinstance(data, Mapping) or not isinstance(data.get("status"), str):
            raise PermanentApiError(
                f"training API answer for {operation_id} has no status: {body!r:.300}"
            )
        try:
            return RemoteOperation(
                operation_id=str(data.get("operation_id") or operation_id),
                status=data["status"].lower(),
                progress=_lenient_progress(data.get("progress")),
                error_message=(str(data["error_message"]) if data.get("error_message") else None),
                metrics=data["metrics"] if isinstance(data.get("metrics"), Mapping) else {},
                result_summary=(
                    dict(data["result_summary"])
                    if isinstance(data.get("result_summary"), Mapping)
                    else None
                ),
            )
        except ValidationError as exc:
            raise PermanentApiError(
                f"training API answer for {operation_id} is malformed: {exc}"
            ) from exc

    @retry(
        retry=retry_if_exception_type(TransientApiError),
        stop=stop_after_attempt(CANCEL_ATTEMPTS),
        wait=wait_exponential(multiplier=0.5, max=4),
        reraise=True,
    )
    def cancel_operation(self, operation_id: str, reason: str) -> str:
        """DELETE /operations/{id}. 200, 400 (already ended) and 404 all mean nothing runs.

        Returns what happened: `cancelled`, `already_ended` or `unknown`.
        """
        try:
            self._request("DELETE", f"/operations/{operation_id}", {"reason": reason})
        except OperationNotFoundError:
            return "unknown"
        except PermanentApiError as exc:
            if exc.status_code == 400:
                return "already_ended"
            raise
        return "cancelled"

    # -- backtests (ktrdr's /backtests routes; polled and cancelled like a training) -------

    @retry(
        retry=retry_if_exception(lambda exc: _nothing_started(exc)),
        stop=stop_after_attempt(START_ATTEMPTS),
        wait=wait_exponential(multiplier=0.5, max=4),
        reraise=True,
    )
    def start_backtest(self, request: StartBacktestRequest) -> str:
        """POST /backtests/start; returns the backtest operation id (`operation_id`).

        A backtest start has no idempotency key, so only failures that certainly started
        nothing are retried here (503 busy, connection refused); a timeout is not.
        """
        body = self._request("POST", "/backtests/start", request.model_dump())
        if not isinstance(body, Mapping) or body.get("success") is False:
            raise PermanentApiError(
                f"training API did not start a backtest of {request.strategy_name}: "
                f"{body.get('message') if isinstance(body, Mapping) else body!r:.300}"
            )
        operation_id = body.get("operation_id") or body.get("task_id")
        if not isinstance(operation_id, str) or not operation_id:
            raise PermanentApiError(
                f"backtest start answer has no operation id (operation_id): {body!r:.300}"
            )
        return operation_id


class StartBacktestRequest(BaseModel):
    """ktrdr's backtest request, with its defaults for capital and costs.

    `task_id` is not ktrdr's (a ktrdr backend ignores it): the reference host honours it as
    an idempotency key, so a start repeated after a crash mid-POST finds the same backtest.
    """

    strategy_name: str
    symbol: str
    timeframe: str
    model_path: str
    start_date: str
    end_date: str
    initial_capital: float = 100_000.0
    commission: float = 0.001
    slippage: float = 0.0005
    task_id: str | None = None


def _nothing_started(exc: BaseException) -> bool:
    if not isinstance(exc, TransientApiError):
        return False
    return exc.status_code == 503 or isinstance(exc.__cause__, httpx.ConnectError)


_process_client: tuple[int, str, TrainingApiClient] | None = None
_client_lock = threading.Lock()


def get_client() -> TrainingApiClient:
    """This process's client (re-created after a fork or when the URL changes)."""
    global _process_client
    from ktrdr_tasks.settings import get_settings

    settings = get_settings()
    pid = os.getpid()
    with _client_lock:
        if (
            _process_client is None
            or _process_client[0] != pid
            or _process_client[1] != settings.api_url
        ):
            client = TrainingApiClient(settings.api_url, settings.api_timeout_s)
            _process_client = (pid, settings.api_url, client)
        return _process_client[2]
