"""The only module that talks to Redis: operation records, their indexes, leases and history.

Each operation is a hash. Scalar fields are stored as text; structured ones (`progress`,
`task_ids`, `result_summary`) as JSON; every metadata key is its own `m.<key>` field and every
bookkeeping field its own `b.<field>`, holding JSON, so two writers updating different keys
never lose each other's writes. Every write that can race (create under the active limit,
status changes, progress, claims, leases) is one Lua script, so Redis itself serialises the
check and the write. Each script below documents its KEYS, ARGV and answer; every key it
touches is passed in KEYS, built by the key functions from the one `PREFIX`.

Keys live in the functions below, never in f-strings at call sites.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import redis
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ktrdr_tasks import metrics
from ktrdr_tasks.errors import OperationStateError, StoreUnavailableError
from ktrdr_tasks.history import history_entry
from ktrdr_tasks.models import (
    ACTIVE_STATUSES,
    BOOKKEEPING_FIELDS,
    TERMINAL_STATUSES,
    Operation,
    OperationStatus,
    Phase,
    Progress,
    iso,
    utc_now,
)

PREFIX = "ktrdr"
HISTORY_LIMIT = 500


def operation_key(operation_id: str) -> str:
    return f"{PREFIX}:op:{operation_id}"


def active_key() -> str:
    return f"{PREFIX}:ops:active"


def index_key() -> str:
    return f"{PREFIX}:ops:index"


def history_key() -> str:
    return f"{PREFIX}:history"


def lease_key(operation_id: str, phase: str) -> str:
    return f"{PREFIX}:lease:{operation_id}:{phase}"


_LUA_HELPERS = """
local function is_terminal(s)
  return s == 'completed' or s == 'failed' or s == 'cancelled'
end
"""

# PRUNE: forget an active-set member whose record expired or ended, so a lost write can never
# block triggers (run for the members that refused a CREATE; removing a stale one is safe).
#   KEYS[1] active set, KEYS[2] the member's operation hash
#   ARGV[1] the member's operation id
#   -> 1 removed, 0 kept (still active)
_PRUNE = (
    _LUA_HELPERS
    + """
local s = redis.call('HGET', KEYS[2], 'status')
if (not s) or is_terminal(s) then return redis.call('SREM', KEYS[1], ARGV[1]) end
return 0
"""
)

# CREATE: store a new operation unless `limit` cycles are active, atomically.
#   KEYS[1] active set, KEYS[2] the new operation hash, KEYS[3] index (sorted by creation)
#   ARGV[1] limit, ARGV[2] operation id, ARGV[3] creation timestamp, ARGV[4..] field, value...
#   -> {1} created | {0, active ids...} refused
_CREATE = """
local limit = tonumber(ARGV[1])
if redis.call('SCARD', KEYS[1]) >= limit then
  local result = {0}
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do table.insert(result, id) end
  return result
end
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('SADD', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
return {1}
"""

# RECORD_FINAL: store an operation that is final from the start (a refused cycle), once.
#   KEYS[1] the operation hash, KEYS[2] index (sorted by creation)
#   ARGV[1] operation id, ARGV[2] creation timestamp, ARGV[3] retention in seconds,
#   ARGV[4..] field, value...
#   -> 1 recorded, 0 an operation with this id exists (left as it is)
_RECORD_FINAL = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""

# UPDATE: the one compare-and-set behind every change of an operation.
#   KEYS[1] operation hash, KEYS[2] active set
#   ARGV[1] expected statuses, comma-separated ("" = any active)
#   ARGV[2] new status ("" = unchanged)
#   ARGV[3] progress percentage ("" = no progress), ARGV[4] progress JSON
#   ARGV[5] retention in seconds (the record expires that long after a final status)
#   ARGV[6] step, the position in the chain ("" = unchanged)
#   ARGV[7] operation id (the active-set member), ARGV[8..] field, value...
#   -> {1, status} applied | {0, current status or ""} refused | {0, "stale"} step went back
# Terminal statuses are final; progress is written only when it does not go back;
# `started_at` is written once, by the first move to running; the step only moves forward,
# so a stale duplicate of an earlier task learns that the chain has moved on and stops.
_UPDATE_BODY = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return {0, ''} end
if is_terminal(current) then return {0, current} end
local expected = ARGV[1]
if expected ~= '' and not string.find(',' .. expected .. ',', ',' .. current .. ',', 1, true) then
  return {0, current}
end
if ARGV[6] ~= '' then
  local step = tonumber(redis.call('HGET', KEYS[1], 'step') or '0')
  if step > tonumber(ARGV[6]) then return {0, 'stale'} end
  redis.call('HSET', KEYS[1], 'step', ARGV[6])
end
if ARGV[3] ~= '' then
  local before = tonumber(redis.call('HGET', KEYS[1], 'progress_pct') or '0')
  if tonumber(ARGV[3]) >= before then
    redis.call('HSET', KEYS[1], 'progress_pct', ARGV[3], 'progress', ARGV[4])
  end
end
for i = 8, #ARGV, 2 do
  if ARGV[i] == 'started_at' then
    redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1])
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
local status = current
if ARGV[2] ~= '' then
  status = ARGV[2]
  redis.call('HSET', KEYS[1], 'status', status)
  if is_terminal(status) then
    redis.call('SREM', KEYS[2], ARGV[7])
    redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
  end
end
return {1, status}
"""
_UPDATE = _LUA_HELPERS + _UPDATE_BODY

# CLAIM: set a field of an active operation unless some writer already set it.
#   KEYS[1] operation hash
#   ARGV[1] field, ARGV[2] value
#   -> 1 claimed, 0 already set (or the operation ended or is unknown)
_CLAIM = (
    _LUA_HELPERS
    + """
local current = redis.call('HGET', KEYS[1], 'status')
if (not current) or is_terminal(current) then return 0 end
return redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
"""
)

# RELEASE: drop a lease only if this run holds it.
#   KEYS[1] lease key
#   ARGV[1] the run's token
#   -> 1 released, 0 held by another run or expired
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# RENEW: extend a lease only if this run holds it.
#   KEYS[1] lease key
#   ARGV[1] the run's token, ARGV[2] new time to live in milliseconds
#   -> 1 renewed, 0 held by another run or expired
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# The step runner's two calls per run, one round trip each (the hot path of every poll):
# BEGIN_STEP is `acquire_lease` + `enter_step` + `get`, END_STEP is the run's last `update` +
# `release_lease`. UPDATE runs inside both as a function of its own KEYS and ARGV, so there is
# one compare-and-set, not a copy of it.
_STEP_HELPERS = (
    _LUA_HELPERS
    + "local function apply_update(KEYS, ARGV)\n"
    + _UPDATE_BODY
    + """end
local function tail(args, first)
  local rest = {}
  for i = first, #args do rest[#rest + 1] = args[i] end
  return rest
end
"""
)

# BEGIN_STEP: take the lease of (cycle, step), enter the step as UPDATE does, read the record.
#   KEYS[1] lease key, KEYS[2] operation hash, KEYS[3] active set
#   ARGV[1] the run's token, ARGV[2] lease time to live in ms, ARGV[3..] UPDATE's ARGV
#   -> {'held', ms left}: another run holds the lease
#    | {'ended'} | {'stale'}: UPDATE refused the step (and the lease is dropped again)
#    | {'ok', field, value, ...}: entered; the lease is held and this is the record
_BEGIN_STEP = (
    _STEP_HELPERS
    + """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return {'held', redis.call('PTTL', KEYS[1])}
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local entered = apply_update({KEYS[2], KEYS[3]}, tail(ARGV, 3))
if entered[1] == 0 then
  redis.call('DEL', KEYS[1])
  if entered[2] == 'stale' then return {'stale'} end
  return {'ended'}
end
local answer = redis.call('HGETALL', KEYS[2])
table.insert(answer, 1, 'ok')
return answer
"""
)

# END_STEP: write the run's last change as UPDATE does and release the run's lease, together.
#   KEYS[1] lease key, KEYS[2] operation hash, KEYS[3] active set
#   ARGV[1] the run's token, ARGV[2..] UPDATE's ARGV
#   -> UPDATE's answer; the lease is released whatever it is (if this run still holds it)
_END_STEP = (
    _STEP_HELPERS
    + """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return apply_update({KEYS[2], KEYS[3]}, tail(ARGV, 2))
"""
)

_JSON_FIELDS = ("progress", "task_ids", "result_summary")
_TEXT_FIELDS = (
    "operation_id",
    "operation_type",
    "status",
    "phase",
    "step",
    "error_message",
    "created_at",
    "started_at",
    "completed_at",
    "heartbeat_at",
)
_METADATA_PREFIX = "m."
_BOOKKEEPING_PREFIX = "b."

P = ParamSpec("P")
R = TypeVar("R")


def _redis_errors(method: Callable[P, R]) -> Callable[P, R]:
    """Turn a connection failure into an error that names the (password-masked) URL."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            store = args[0]
            url = getattr(store, "safe_url", "redis")
            hint = "Is redis-server running (REDIS_URL)?"
            if isinstance(exc, AuthenticationError):  # a subclass of ConnectionError
                hint = "Redis refused the password: check the one in REDIS_URL."
            raise StoreUnavailableError(f"cannot reach Redis at {url}: {exc}. {hint}") from exc

    return wrapper


def _encode_fields(values: Mapping[str, Any]) -> list[str]:
    flat: list[str] = []
    for name, value in values.items():
        if value is None and name in _TEXT_FIELDS:
            continue
        if name in _JSON_FIELDS or name.startswith((_METADATA_PREFIX, _BOOKKEEPING_PREFIX)):
            encoded = json.dumps(value, default=str)
        else:
            encoded = str(value)
        flat.extend((name, encoded))
    return flat


def _metadata_fields(metadata: Mapping[str, Any]) -> dict[str, Any]:
    return {f"{_METADATA_PREFIX}{key}": value for key, value in metadata.items()}


def _bookkeeping_fields(bookkeeping: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(bookkeeping) - BOOKKEEPING_FIELDS
    if unknown:
        raise ValueError(f"not bookkeeping fields: {', '.join(sorted(unknown))}")
    return {f"{_BOOKKEEPING_PREFIX}{key}": value for key, value in bookkeeping.items()}


def _decode_operation(raw: Mapping[str, str]) -> Operation:
    record: dict[str, Any] = {"metadata": {}, "bookkeeping": {}}
    for name, text in raw.items():
        if name.startswith(_METADATA_PREFIX):
            record["metadata"][name[len(_METADATA_PREFIX) :]] = json.loads(text)
        elif name.startswith(_BOOKKEEPING_PREFIX):
            record["bookkeeping"][name[len(_BOOKKEEPING_PREFIX) :]] = json.loads(text)
        elif name in _JSON_FIELDS:
            record[name] = json.loads(text)
        elif name in _TEXT_FIELDS:
            record[name] = text
    return Operation.model_validate(record)


@dataclass(frozen=True)
class StepEntry:
    """How `begin_step` went: "ok" (with the record), "held", "stale" or "ended"."""

    state: str
    operation: Operation | None = None
    lease_remaining_s: float = 0.0


class Store:
    """Operation state in Redis; safe to share between threads, create one per process."""

    def __init__(self, client: redis.Redis, retention_s: float, safe_url: str = "redis") -> None:
        self.redis = client
        self.retention_s = int(retention_s)
        self.safe_url = safe_url
        self._prune = client.register_script(_PRUNE)
        self._create = client.register_script(_CREATE)
        self._record_final = client.register_script(_RECORD_FINAL)
        self._update = client.register_script(_UPDATE)
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)
        self._begin_step = client.register_script(_BEGIN_STEP)
        self._end_step = client.register_script(_END_STEP)

    @classmethod
    def from_url(
        cls,
        url: str,
        retention_s: float,
        safe_url: str | None = None,
        ssl_options: Mapping[str, Any] | None = None,
    ) -> Store:
        client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=5,
            socket_timeout=10,
            health_check_interval=30,
            **dict(ssl_options or {}),
        )
        return cls(client, retention_s, safe_url or url)

    @_redis_errors
    def ping(self) -> bool:
        return bool(self.redis.ping())

    # -- create and read ---------------------------------------------------------------

    @_redis_errors
    def create_operation(self, operation: Operation, limit: int) -> list[str]:
        """Store a new pending operation unless `limit` cycles are active.

        Returns [] when created, else the ids of the active cycles that stand in the way.
        """
        fields = operation.model_dump(exclude={"metadata"}, mode="json")
        fields.update(_metadata_fields(operation.metadata))
        fields.update(_bookkeeping_fields(operation.bookkeeping.model_dump(exclude_defaults=True)))
        fields["progress_pct"] = operation.progress.percentage
        args = [limit, operation.operation_id, time.time(), *_encode_fields(fields)]
        keys = [active_key(), operation_key(operation.operation_id), index_key()]
        answer = self._create(keys=keys, args=args)
        # Refused: first drop members whose record expired or ended (a lost write must never
        # block triggers), then try once more. Only a refusal pays for the clean-up.
        if int(answer[0]) == 0 and self._prune_stale([str(op_id) for op_id in answer[1:]]):
            answer = self._create(keys=keys, args=args)
        if int(answer[0]) == 1:
            return []
        return [str(op_id) for op_id in answer[1:]]

    def _prune_stale(self, active_ids: list[str]) -> int:
        pipe = self.redis.pipeline(transaction=False)
        for active_id in active_ids:
            self._prune(
                keys=[active_key(), operation_key(active_id)], args=[active_id], client=pipe
            )
        return sum(int(removed) for removed in pipe.execute())

    @_redis_errors
    def record_refused(self, operation: Operation, message: str) -> bool:
        """Keep a cycle the active-cycle limit refused as a failed record (never active).

        For a cycle a backend enqueued itself: the refusal must show in `ktrdr agent list`,
        not vanish. False when an operation with this id already exists.
        """
        now = iso(utc_now())
        refused = operation.model_copy(
            update={
                "status": OperationStatus.FAILED,
                "error_message": message,
                "completed_at": now,
                "heartbeat_at": now,
            }
        )
        fields = refused.model_dump(exclude={"metadata"}, mode="json")
        fields.update(_metadata_fields(refused.metadata))
        fields["progress_pct"] = refused.progress.percentage
        answer = self._record_final(
            keys=[operation_key(operation.operation_id), index_key()],
            args=[operation.operation_id, time.time(), self.retention_s, *_encode_fields(fields)],
        )
        return bool(answer)

    @_redis_errors
    def find(self, operation_id: str) -> Operation | None:
        raw = self.redis.hgetall(operation_key(operation_id))
        return _decode_operation(raw) if raw else None

    def get(self, operation_id: str) -> Operation:
        operation = self.find(operation_id)
        if operation is None:
            raise OperationStateError(
                f"unknown operation {operation_id!r} (it never existed or its record expired)"
            )
        return operation

    @_redis_errors
    def active_ids(self) -> list[str]:
        return sorted(self.redis.smembers(active_key()))

    def active_operations(self) -> list[Operation]:
        found = (self.find(op_id) for op_id in self.active_ids())
        return [op for op in found if op is not None and op.status in ACTIVE_STATUSES]

    @_redis_errors
    def list_operations(
        self, limit: int = 20, status: OperationStatus | None = None
    ) -> list[Operation]:
        """Newest first; ids whose record expired are pruned from the index on the way."""
        operations: list[Operation] = []
        start = 0
        batch = max(limit, 50)
        while len(operations) < limit:
            ids = self.redis.zrevrange(index_key(), start, start + batch - 1)
            if not ids:
                break
            start += batch
            pipe = self.redis.pipeline(transaction=False)
            for op_id in ids:
                pipe.hgetall(operation_key(op_id))
            for op_id, raw in zip(ids, pipe.execute(), strict=True):
                if not raw:
                    self.redis.zrem(index_key(), op_id)
                    start -= 1
                    continue
                operation = _decode_operation(raw)
                if status is None or operation.status == status:
                    operations.append(operation)
        return operations[:limit]

    # -- transitions -------------------------------------------------------------------

    def update(self, operation_id: str, **changes: Any) -> bool:
        """Apply a change atomically if the operation is active (and in `expect`, if given).

        Returns False when the operation ended, is missing, or is not in an expected status:
        the caller lost a race and must not act on the change.
        """
        return self.apply(operation_id, **changes)[0]

    def enter_step(
        self, operation_id: str, step: int, phase: Phase, progress: Progress | None = None
    ) -> str:
        """Mark the cycle as running step `step`: "ok", "stale" (the chain moved past it)
        or "ended" (final status or unknown)."""
        applied, current = self.apply(
            operation_id,
            step=step,
            phase=phase,
            progress=progress,
            status=OperationStatus.RUNNING,
        )
        if applied:
            return "ok"
        return "stale" if current == "stale" else "ended"

    @_redis_errors
    def claim_metadata(self, operation_id: str, key: str, value: Any) -> bool:
        """Set metadata `key` of an active operation unless some writer already set it.

        For facts a cycle must have exactly one of (its strategy), when two runs of a step
        could both produce one.
        """
        field, encoded = _encode_fields(_metadata_fields({key: value}))
        return bool(self._claim(keys=[operation_key(operation_id)], args=[field, encoded]))

    @_redis_errors
    def apply(
        self,
        operation_id: str,
        *,
        expect: Iterable[OperationStatus] | None = None,
        status: OperationStatus | None = None,
        phase: Phase | None = None,
        progress: Progress | None = None,
        metadata: Mapping[str, Any] | None = None,
        bookkeeping: Mapping[str, Any] | None = None,
        step: int | None = None,
        heartbeat: bool = True,
        **fields: Any,
    ) -> tuple[bool, str]:
        """The atomic update behind `update` and `enter_step`: (applied, status or refusal).

        Every write is a heartbeat unless `heartbeat=False`: a write that is not the cycle's
        own progress (a resume) must neither count as progress nor roll a newer one back.
        """
        answer = self._update(
            keys=[operation_key(operation_id), active_key()],
            args=self._update_args(
                operation_id,
                expect=expect,
                status=status,
                phase=phase,
                progress=progress,
                metadata=metadata,
                bookkeeping=bookkeeping,
                step=step,
                heartbeat=heartbeat,
                **fields,
            ),
        )
        return int(answer[0]) == 1, str(answer[1])

    def _update_args(
        self,
        operation_id: str,
        *,
        expect: Iterable[OperationStatus] | None = None,
        status: OperationStatus | None = None,
        phase: Phase | None = None,
        progress: Progress | None = None,
        metadata: Mapping[str, Any] | None = None,
        bookkeeping: Mapping[str, Any] | None = None,
        step: int | None = None,
        heartbeat: bool = True,
        **fields: Any,
    ) -> list[Any]:
        """UPDATE's ARGV for a change (see `apply`), shared by the scripts that run UPDATE."""
        now = iso(utc_now())
        values: dict[str, Any] = {"heartbeat_at": now} if heartbeat else {}
        values.update(fields)
        if phase is not None:
            values["phase"] = phase.value
        if status is not None and status in TERMINAL_STATUSES:
            values.setdefault("completed_at", now)
        if status is OperationStatus.RUNNING:
            values.setdefault("started_at", now)
        values.update(_metadata_fields(metadata or {}))
        values.update(_bookkeeping_fields(bookkeeping or {}))
        expected = ",".join(sorted(s.value for s in (expect or ACTIVE_STATUSES)))
        return [
            expected,
            status.value if status else "",
            f"{progress.percentage:.6f}" if progress else "",
            progress.model_dump_json() if progress else "",
            self.retention_s,
            "" if step is None else int(step),
            operation_id,
            *_encode_fields(values),
        ]

    def finish(
        self,
        operation_id: str,
        status: OperationStatus,
        *,
        error_message: str | None = None,
        result_summary: dict[str, Any] | None = None,
        progress: Progress | None = None,
        metadata: Mapping[str, Any] | None = None,
        bookkeeping: Mapping[str, Any] | None = None,
        phase: Phase | None = None,
    ) -> bool:
        """Move an active operation to a final status; False if it had already ended."""
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"{status} is not a final status")
        # Only the writer that wins the final compare-and-set records the cycle's history.
        extra: dict[str, Any] = {}
        if error_message is not None:
            extra["error_message"] = error_message
        if result_summary is not None:
            extra["result_summary"] = result_summary
        won = self.update(
            operation_id,
            status=status,
            progress=progress,
            metadata=metadata,
            bookkeeping=bookkeeping,
            phase=phase,
            **extra,
        )
        if won:
            ended = self.get(operation_id)
            self.record_history(history_entry(ended))
            metrics.cycle_finished(ended)
        return won

    def cancel(self, operation_id: str, reason: str = "cancelled by user") -> Operation:
        """Cancel an active operation; returns the record as it stood after the cancel.

        The record read afterwards carries the training operation id if `start_training`
        stored it before our compare-and-set: either we see it, or the starter sees us.
        """
        if not self.finish(operation_id, OperationStatus.CANCELLED, error_message=reason):
            current = self.get(operation_id)
            raise OperationStateError(
                f"operation {operation_id} already ended ({current.status.value}); "
                "nothing to cancel"
            )
        return self.get(operation_id)

    # -- a step run's hot path: lease, entry and read in one call; write and release in one

    @_redis_errors
    def begin_step(
        self, operation_id: str, step: int, phase: Phase, lease: str, token: str, ttl_s: float
    ) -> StepEntry:
        """Take the lease on (cycle, `lease`), enter step `step` and read the record, in one
        round trip: what `acquire_lease`, `enter_step` and `get` do one after the other.

        A refused entry ("stale", "ended") leaves no lease behind; "held" says for how long
        another run still holds it.
        """
        answer = self._begin_step(
            keys=[lease_key(operation_id, lease), operation_key(operation_id), active_key()],
            args=[
                token,
                int(ttl_s * 1000),
                *self._update_args(
                    operation_id, step=step, phase=phase, status=OperationStatus.RUNNING
                ),
            ],
        )
        state = str(answer[0])
        if state == "held":
            return StepEntry("held", lease_remaining_s=max(0, int(answer[1])) / 1000)
        if state != "ok":
            return StepEntry(state)
        record = dict(zip(answer[1::2], answer[2::2], strict=True))
        return StepEntry("ok", operation=_decode_operation(record))

    @_redis_errors
    def end_step(self, operation_id: str, lease: str, token: str, **changes: Any) -> bool:
        """Apply a step run's last change (as `update`) and release its lease, in one round
        trip. False when the change was refused (the cycle ended or moved on); the lease is
        released either way."""
        answer = self._end_step(
            keys=[lease_key(operation_id, lease), operation_key(operation_id), active_key()],
            args=[token, *self._update_args(operation_id, **changes)],
        )
        return int(answer[0]) == 1

    # -- leases: one live run per cycle and phase --------------------------------------

    @_redis_errors
    def acquire_lease(self, operation_id: str, phase: str, token: str, ttl_s: float) -> bool:
        key = lease_key(operation_id, phase)
        if self.redis.set(key, token, nx=True, px=int(ttl_s * 1000)):
            return True
        # The same run re-entering (e.g. a retry of this very message) keeps its lease.
        return bool(self._renew(keys=[key], args=[token, int(ttl_s * 1000)]))

    @_redis_errors
    def renew_lease(self, operation_id: str, phase: str, token: str, ttl_s: float) -> bool:
        return bool(
            self._renew(keys=[lease_key(operation_id, phase)], args=[token, int(ttl_s * 1000)])
        )

    @_redis_errors
    def release_lease(self, operation_id: str, phase: str, token: str) -> None:
        self._release(keys=[lease_key(operation_id, phase)], args=[token])

    @_redis_errors
    def lease_remaining_s(self, operation_id: str, phase: str) -> float:
        """Seconds until the lease on (cycle, phase) expires; 0 when nobody holds it."""
        return max(0, int(self.redis.pttl(lease_key(operation_id, phase)))) / 1000

    # -- history of finished cycles ----------------------------------------------------

    @_redis_errors
    def record_history(self, entry: Mapping[str, Any]) -> None:
        pipe = self.redis.pipeline()
        pipe.lpush(history_key(), json.dumps(dict(entry), default=str))
        pipe.ltrim(history_key(), 0, HISTORY_LIMIT - 1)
        pipe.execute()

    @_redis_errors
    def recent_history(self, limit: int = 50) -> list[dict[str, Any]]:
        return [json.loads(row) for row in self.redis.lrange(history_key(), 0, limit - 1)]


_process_store: tuple[int, Store] | None = None


def get_store() -> Store:
    """This process's store, created on first use.

    Created lazily and re-created after a fork: a Redis connection pool inherited by a
    forked Celery pool process would share sockets with its parent.
    """
    global _process_store
    from ktrdr_tasks.settings import get_settings

    pid = os.getpid()
    if _process_store is None or _process_store[0] != pid:
        settings = get_settings()
        store = Store.from_url(
            settings.redis_url,
            settings.retention_days * 86400,
            settings.safe_redis_url(),
            settings.redis_ssl_options(),
        )
        _process_store = (pid, store)
    return _process_store[1]


def reset_store() -> None:
    """Forget the process store (tests change REDIS_URL between cases)."""
    global _process_store
    _process_store = None
