"""Reading an operation answer as it streams: the same values as `json.loads`, metrics aside."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ktrdr_tasks.operation_answer import read_operation_answer

LIMITS = {"max_total_bytes": 1 << 20, "max_kept_bytes": 1 << 20}
RUNNING = {"status": "running", "progress": {}, "error_message": None, "result_summary": None}

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
documents = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=25,
)


def chunked(text: str, size: int) -> Iterator[bytes]:
    raw = text.encode()
    for start in range(0, len(raw), size):
        yield raw[start : start + size]


def read(text: str, size: int = 7, **limits: int) -> Any:
    return read_operation_answer(chunked(text, size), **{**LIMITS, **limits})


@settings(max_examples=150, deadline=None)
@given(document=documents, size=st.integers(1, 40), indent=st.sampled_from([None, 2]))
def test_any_json_without_metrics_reads_as_json_loads(
    document: Any, size: int, indent: int | None
) -> None:
    text = json.dumps({"success": True, "data": document, "other": document}, indent=indent)
    assert read(text, size) == json.loads(text)


@settings(max_examples=100, deadline=None)
@given(metrics=documents, size=st.integers(1, 40), first=st.booleans())
def test_metrics_of_any_shape_are_skipped_and_the_rest_kept(
    metrics: Any, size: int, first: bool
) -> None:
    rest = {"status": "running", "progress": {"percentage": 5}}
    data = {"metrics": metrics, **rest} if first else {**rest, "metrics": metrics}
    got = read(json.dumps({"data": data}), size)["data"]
    assert {k: v for k, v in got.items() if k != "metrics"} == rest
    assert got.get("metrics", {}) == {} or got["metrics"]["epochs"] == metrics["epochs"][-1:]


def test_the_last_december_epoch_is_kept() -> None:
    epochs = [{"epoch": i, "train_loss": 1 / i} for i in range(1, 30)]
    got = read(json.dumps({"data": {**RUNNING, "metrics": {"epochs": epochs}}}))
    assert got["data"]["metrics"] == {"epochs": [epochs[-1]]}


def test_a_metrics_list_after_everything_needed_is_not_read_at_all() -> None:
    head = json.dumps({"data": {**RUNNING, "metrics": []}})[:-3]  # ... "metrics": [
    sent: list[int] = []

    def endless() -> Iterator[bytes]:
        yield head.encode()
        while True:  # a body that never ends: only stopping early can return
            sent.append(1)
            yield b'{"loose": "entry"}, '

    got = read_operation_answer(endless(), **LIMITS)
    assert got["data"]["status"] == "running" and len(sent) < 10_000


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"data": {"status": "running"', "expected one of"),
        ('{"data": 1}}', "extra data"),
        ("<html>", "not JSON"),
        ("", "not JSON"),
        ('{"data": {"metrics": [1, 2}, "status": "x"}}', "not JSON"),
        ('{"data": {"status": "running", "x": [1, ', "not JSON"),
    ],
)
def test_malformed_answers_are_refused_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        read(text, 3)


def test_the_kept_limit_counts_everything_but_metrics() -> None:
    big = "x" * 5000
    answer = json.dumps({"data": {"metrics": [big] * 10, "status": "s"}})
    assert read(answer, 64, max_kept_bytes=4096)["data"]["status"] == "s"
    with pytest.raises(ValueError, match=r"outside data\.metrics"):
        read(json.dumps({"data": {"status": big}}), 64, max_kept_bytes=4096)


def test_the_total_limit_ends_an_absurd_body() -> None:
    body = json.dumps({"data": {"metrics": ["x" * 1000] * 300, "status": "s"}})
    with pytest.raises(ValueError, match="more than 0 MiB"):
        read(body, 4096, max_total_bytes=100_000)


def test_nesting_deeper_than_the_skip_pattern_is_still_skipped() -> None:
    deep = "[" * 40 + "]" * 40
    got = read('{"data": {"metrics": ' + deep + ', "status": "s"}}')
    assert got["data"] == {"metrics": {}, "status": "s"}


def test_a_long_trainings_result_is_kept_whole_beyond_the_kept_limit() -> None:
    history = {"train_loss": [1.0 / i for i in range(1, 2000)]}
    result = {"model_path": "models/x/1h_v1", "training_metrics": {"history": history}}
    answer = json.dumps({"data": {"status": "completed", "result_summary": result}})
    assert len(answer) > 4096
    assert read(answer, 64, max_kept_bytes=4096)["data"]["result_summary"] == result
    with pytest.raises(ValueError, match="more than 0 MiB"):
        read(answer, 64, max_kept_bytes=4096, max_total_bytes=len(answer) // 2)


def test_a_long_epochs_history_after_everything_needed_is_not_read_to_its_end() -> None:
    head = json.dumps({"data": {**RUNNING, "metrics": {"epochs": []}}})[:-4]  # ...: [
    sent: list[int] = []

    def endless() -> Iterator[bytes]:
        yield head.encode()
        while True:
            sent.append(1)
            yield b'{"epoch": 1, "train_loss": 0.5}, '

    got = read_operation_answer(endless(), **LIMITS)
    assert got["data"]["metrics"] == {} and got["data"]["status"] == "running"
    assert len(sent) < 100_000


@pytest.mark.parametrize(
    "metrics",
    [
        {"epochs": [{"epoch": 1, "train_loss": 0.9}, {"epoch": 2, "train_loss": 0.7}]},
        [{"epoch": 1, "train_loss": 0.9}],  # today's ktrdr: a list
        {"loss": [0.9, 0.7]},
        None,
    ],
)
def test_a_small_answer_decoded_whole_reads_as_the_walk_reads_it(
    metrics: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = json.dumps({"success": True, "data": {**RUNNING, "metrics": metrics, "after": 1}})
    whole = read(text, 4096)

    monkeypatch.setattr("ktrdr_tasks.operation_answer.WHOLE_ANSWER_BYTES", 0)
    walked = read(text, 4096)

    assert whole["data"]["metrics"] == walked["data"].get("metrics", {})
    assert {k: v for k, v in whole["data"].items() if k not in ("metrics", "after")} == {
        k: v for k, v in walked["data"].items() if k not in ("metrics", "after")
    }


def test_a_small_answer_the_decoder_refuses_is_walked() -> None:
    # A metrics list the C decoder refuses (a trailing comma) is skipped, never decoded.
    text = '{"data": {"status": "running", "progress": {}, "error_message": null, '
    text += '"result_summary": null, "metrics": [{"epoch": 1},]}}'
    assert read(text, 4096)["data"]["status"] == "running"
