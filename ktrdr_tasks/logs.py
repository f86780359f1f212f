"""Log lines every process writes the same way: text for people, JSON for collectors.

`KTRDR_LOG_FORMAT=json` makes the worker, beat and the training host write one JSON object
per line (python-json-logger) with `timestamp`, `level`, `logger`, `message` and the cycle's
context: `operation_id`, `step`, `training_id` (plus `task_id`/`task_name` inside a Celery
task). The context comes from two places, so no call site has to repeat it in its message:
- Celery's current task: a `ktrdr.<step>` task's first argument is the operation id (for
  `ktrdr.cancel_training`, the training id), and its name gives the step;
- a context variable that code running a step sets with `bind(...)` (the training id, which
  only the operation record knows) and that lasts until `clear()` or the `bound()` block ends.

Text stays the default and keeps each process's own layout (Celery's, uvicorn's); the
context attributes are on every record either way, for a formatter that wants them.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

from ktrdr_tasks.steps import TASK_PREFIX

CONTEXT_FIELDS = ("operation_id", "step", "training_id")
TASK_FIELDS = ("task_id", "task_name")
_CANCEL_TASK = f"{TASK_PREFIX}cancel_training"

_EMPTY: Mapping[str, str] = MappingProxyType({})
_context: ContextVar[Mapping[str, str]] = ContextVar("ktrdr_log_context", default=_EMPTY)


def bind(**fields: str | None) -> None:
    """Add (or with None, drop) context fields for every later line of this thread/task."""
    merged = dict(_context.get())
    for name, value in fields.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = str(value)
    _context.set(merged)


def clear() -> None:
    """Forget the bound context (a worker process runs one task after another)."""
    _context.set(_EMPTY)


@contextlib.contextmanager
def bound(**fields: str | None) -> Iterator[None]:
    """`bind(...)` for the length of a block, then the context as it was."""
    token = _context.set(_context.get())
    bind(**fields)
    try:
        yield
    finally:
        _context.reset(token)


def current() -> dict[str, str]:
    """The context a line written now would carry (task first, bound fields on top)."""
    fields = _task_context()
    fields.update(_context.get())
    return fields


def _task_context() -> dict[str, str]:
    # Only when Celery is already loaded: the training host must not import it for this.
    if "celery" not in sys.modules:
        return {}
    from celery import current_task

    task = current_task
    request = getattr(task, "request", None) if task else None
    name = getattr(task, "name", None) or ""
    task_id = getattr(request, "id", None)
    if request is None or not task_id:
        return {}
    fields = {"task_id": str(task_id), "task_name": name}
    if not name.startswith(TASK_PREFIX):
        return fields
    args = getattr(request, "args", None) or ()
    first = str(args[0]) if args else None
    if name == _CANCEL_TASK:
        if first:
            fields["training_id"] = first
    else:
        fields["step"] = name.removeprefix(TASK_PREFIX)
        if first:
            fields["operation_id"] = first
    return fields


class CycleContextFilter(logging.Filter):
    """Puts the cycle's context on every record a handler sees (never drops one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = current()
        for name in (*CONTEXT_FIELDS, *TASK_FIELDS):
            if getattr(record, name, None) is None:
                setattr(record, name, fields.get(name))
        return True


def json_formatter() -> logging.Formatter:
    """One JSON object per line; context fields are null outside a cycle."""
    from pythonjsonlogger.core import RESERVED_ATTRS
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter(
        " ".join(
            f"%({name})s"
            for name in ("asctime", "levelname", "name", "message", *CONTEXT_FIELDS, *TASK_FIELDS)
        ),
        rename_fields={"asctime": "timestamp", "levelname": "level", "name": "logger"},
        datefmt="%Y-%m-%dT%H:%M:%S%z",
        # uvicorn repeats each message with terminal colours in `color_message`; Celery's task
        # lines repeat theirs in `data` (with a traceback even for a deliberate Ignore).
        reserved_attrs=[*RESERVED_ATTRS, "color_message", "data"],
    )


def format_handlers(handlers: list[logging.Handler], log_format: str) -> None:
    """Give existing handlers (Celery's, say) the context filter and, for json, the format."""
    for handler in handlers:
        if not any(isinstance(f, CycleContextFilter) for f in handler.filters):
            handler.addFilter(CycleContextFilter())
        if log_format == "json":
            handler.setFormatter(json_formatter())


def configure(log_format: str, level: str, stream: Any = None) -> None:
    """Set up the root logger of a process that has no logging of its own (the host)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if log_format != "json":
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    format_handlers([handler], log_format)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
