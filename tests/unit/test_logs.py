"""Log lines: JSON objects with the cycle's context, from a Celery task or a bound context."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from celery import Celery

from ktrdr_tasks import logs


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logs.format_handlers([handler], "json")
    logger = logging.getLogger("ktrdr_tasks.test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logs.clear()
    yield stream
    logger.removeHandler(handler)
    logs.clear()


def parsed(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_inside_a_step_task_names_its_cycle_step_and_training(
    json_lines: io.StringIO,
) -> None:
    app = Celery("test_logs", set_as_current=False)

    @app.task(name="ktrdr.poll_training", bind=True)
    def poll(self: object, operation_id: str) -> None:
        logs.bind(training_id="op_training_7")
        logging.getLogger("ktrdr_tasks.test_logs").info("still training")

    poll.apply(args=("op_agent_research_20260101_000000_abcdef12",), task_id="t-1")

    (line,) = parsed(json_lines)
    assert line["message"] == "still training"
    assert line["level"] == "INFO"
    assert line["operation_id"] == "op_agent_research_20260101_000000_abcdef12"
    assert line["step"] == "poll_training"
    assert line["training_id"] == "op_training_7"
    assert line["task_id"] == "t-1" and line["task_name"] == "ktrdr.poll_training"


def test_the_cancel_task_names_the_training_it_cancels(json_lines: io.StringIO) -> None:
    app = Celery("test_logs_cancel", set_as_current=False)

    @app.task(name="ktrdr.cancel_training")
    def cancel(training_id: str, reason: str) -> None:
        logging.getLogger("ktrdr_tasks.test_logs").warning("retrying")

    cancel.apply(args=("op_training_9", "cycle ended"))
    (line,) = parsed(json_lines)
    assert line["training_id"] == "op_training_9" and line["operation_id"] is None


def test_bound_context_lasts_for_its_block_only(json_lines: io.StringIO) -> None:
    log = logging.getLogger("ktrdr_tasks.test_logs")
    with logs.bound(operation_id="op_a", step="design"):
        log.info("inside")
    log.info("outside")
    inside, outside = parsed(json_lines)
    assert (inside["operation_id"], inside["step"]) == ("op_a", "design")
    assert outside["operation_id"] is None and outside["step"] is None


def test_text_format_keeps_the_handlers_own_layout() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s [%(operation_id)s]"))
    logs.format_handlers([handler], "text")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    with logs.bound(operation_id="op_b"):
        handler.handle(record)
    assert stream.getvalue() == "INFO hello [op_b]\n"


def test_configure_gives_the_root_logger_one_json_handler() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        logs.configure("json", "WARNING", stream)
        logging.getLogger("uvicorn.error").warning("listening")
        logging.getLogger("uvicorn.error").info("not at this level")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    (line,) = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert line["logger"] == "uvicorn.error" and line["message"] == "listening"
