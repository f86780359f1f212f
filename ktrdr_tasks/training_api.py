"""The only module that talks HTTP to the training service (a ktrdr backend or the reference host).

Routes and shapes are ktrdr's (DESIGN section 2). Every failure is classified once, here, into
the error tree of `ktrdr_tasks.errors`: connection trouble, timeouts and 5xx are
`TransientApiError` (retry); 4xx and malformed answers are `PermanentApiError` (fail the cycle
with the service's own message); 404 on an operation is `OperationNotFoundError`.
Starting and cancelling retry transient errors with backoff (tenacity) inside one call; polls
are not retried here, because the next poll is the retry.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from typing import Any

import httpx
from pydantic import BaseModel, Field, ValidationError
from tenacity import (
    retry,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from ktrdr_tasks.errors import (
    OperationNotFoundError,
    PermanentApiError,
    TransientApiError,
)
from ktrdr_tasks.metrics import count_api_errors

API_PREFIX = "/api/v1"
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
START_ATTEMPTS = 3
CANCEL_ATTEMPTS = 3


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


class TrainingApiClient:
    """One pooled httpx client per process: creating one per call costs ~26 ms."""

    def __init__(
        self,
        base_url: str,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
            transport=transport,
            limits=httpx.Limits(max_connections=50, max_keepalive_connections=20),
            headers={"user-agent": "ktrdr-tasks"},
        )

    def close(self) -> None:
        self._http.close()

    # -- transport ---------------------------------------------------------------------

    @count_api_errors
    def _request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        url = f"{API_PREFIX}{path}"
        try:
            request = self._http.build_request(method, url, json=body)
            response = self._http.send(request, stream=True)
            try:
                content = self._read_capped(response)
            finally:
                response.close()
        except httpx.TimeoutException as exc:
            raise TransientApiError(
                f"training API at {self.base_url} timed out on {method} {url}"
            ) from exc
        except httpx.TransportError as exc:
            raise TransientApiError(
                f"training API at {self.base_url} unreachable ({type(exc).__name__}: {exc})"
            ) from exc
        answer = httpx.Response(response.status_code, content=content, request=request)
        if answer.status_code >= 500:
            raise TransientApiError(
                f"training API at {self.base_url} answered {answer.status_code} to "
                f"{method} {url}: {error_message_from(answer)}",
                status_code=answer.status_code,
            )
        if answer.status_code >= 400:
            error_type = PermanentApiError
            if answer.status_code == 404 and path.startswith("/operations/"):
                error_type = OperationNotFoundError
            raise error_type(
                f"training API refused {method} {url} ({answer.status_code}): "
                f"{error_message_from(answer)}",
                status_code=answer.status_code,
            )
        try:
            return answer.json()
        except ValueError as exc:
            raise PermanentApiError(
                f"training API at {self.base_url} sent a body that is not JSON for "
                f"{method} {url}: {answer.text[:200]!r}",
                status_code=answer.status_code,
            ) from exc

    def _read_capped(self, response: httpx.Response) -> bytes:
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise PermanentApiError(
                    f"training API at {self.base_url} sent more than "
                    f"{MAX_RESPONSE_BYTES // (1024 * 1024)} MiB; refusing the answer",
                    status_code=response.status_code,
                )
            chunks.append(chunk)
        return b"".join(chunks)

    # -- the three calls ---------------------------------------------------------------

    @retry(
        retry=retry_if_exception_type(TransientApiError),
        stop=stop_after_attempt(START_ATTEMPTS),
        wait=wait_exponential(multiplier=0.5, max=4),
        reraise=True,
    )
    def start_training(self, request: StartTrainingRequest) -> str:
        """POST /trainings/start; returns the training operation id.

        Retrying is safe only because `task_id` is an idempotency key (DESIGN section 4).
        """
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

    def get_operation(self, operation_id: str) -> RemoteOperation:
        """GET /operations/{id}, validated: a malformed answer is a PermanentApiError."""
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
