"""The `--follow` view over scripted operation records: plain lines without a terminal, the
rich view's content, the verdict, exit codes, a timeout and a brief Redis outage."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from rich.console import Console

from ktrdr_tasks.cli import follow
from ktrdr_tasks.errors import StoreUnavailableError

OP = "op_agent_research_20250101_000000_abcdef12"


def record(status: str = "running", phase: str = "training", **progress: Any) -> dict[str, Any]:
    return {
        "operation_id": OP,
        "status": status,
        "phase": phase,
        "created_at": "2025-01-01T00:00:00.000Z",
        "completed_at": "2025-01-01T00:01:05.000Z"
        if status not in ("pending", "running")
        else None,
        "progress": {"percentage": 0.0, "current_step": "", "context": {}, **progress},
        "metadata": {"strategy_name": "eurusd_1h_demo"},
        "error_message": None,
    }


def training(epoch: int, total: int = 10) -> dict[str, Any]:
    return record(
        percentage=35 + 50 * epoch / total,
        current_step=f"Epoch {epoch}/{total}",
        context={
            "epoch": epoch,
            "total_epochs": total,
            "train_loss": 1.1 - 0.05 * epoch,
            "val_accuracy": 0.4 + 0.02 * epoch,
        },
    )


def completed() -> dict[str, Any]:
    done = record("completed", "done", percentage=100, current_step="Research cycle completed")
    done["metadata"].update(
        gate={"outcome": "passed", "metrics": {"accuracy": 0.61, "final_loss": 0.7}},
        model_path="models/eurusd_1h_demo/1h_v1",
    )
    return done


def gate_failed() -> dict[str, Any]:
    failed = record("failed", "training", percentage=90, current_step="Training gate failed")
    reasons = ["accuracy_below_threshold (30.00% < 45%)", "loss_too_high (1.050 > 0.8)"]
    failed["metadata"]["gate"] = {"outcome": "failed", "reasons": reasons}
    failed["error_message"] = "Training gate failed: " + "; ".join(reasons)
    return failed


@pytest.fixture
def script(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Records (or exceptions) that successive `workflow.status` calls return."""
    answers: list[Any] = []

    def status(operation_id: str | None = None) -> dict[str, Any]:
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(follow.workflow, "status", status)
    monkeypatch.setattr(follow, "REFRESH_S", 0)
    yield answers


def test_without_a_terminal_prints_one_line_per_change_and_exits_0_on_completed(
    script: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    script += [record("pending", "queued"), training(1), training(1), training(2), completed()]

    code = follow.follow_operation(OP)

    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert len(lines) == 5  # queued, epoch 1 (once), epoch 2, completed, verdict
    assert "[epoch 1/10, train loss 1.0500, val acc 0.420]" in lines[1]
    assert lines[-1] == (
        "completed: training gate passed (test accuracy 0.610, test loss 0.700); "
        "model at models/eurusd_1h_demo/1h_v1"
    )
    assert not any("\x1b[" in line for line in lines)


def test_gate_failure_ends_with_its_reasons_and_exit_1(
    script: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    script += [training(3), gate_failed()]

    assert follow.follow_operation(OP) == 1
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == (
        "failed: Training gate failed: accuracy_below_threshold (30.00% < 45%); "
        "loss_too_high (1.050 > 0.8)"
    )


def test_cancelled_exits_1(script: list[Any], capsys: pytest.CaptureFixture[str]) -> None:
    cancelled = record("cancelled")
    cancelled["error_message"] = "cancelled by user"
    script += [cancelled]
    assert follow.follow_operation(OP) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "cancelled: cancelled by user"


def test_a_brief_redis_outage_does_not_end_the_follow(
    script: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    outage = StoreUnavailableError("cannot reach Redis")
    script += [training(1), outage, outage, completed()]
    assert follow.follow_operation(OP) == 0


def test_a_long_redis_outage_is_an_error(
    script: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(follow, "STORE_OUTAGE_S", 0)
    script += [training(1), StoreUnavailableError("cannot reach Redis")]
    with pytest.raises(StoreUnavailableError):
        follow.follow_operation(OP)


def test_timeout_raises_follow_timeout(script: list[Any]) -> None:
    script += [training(1)]
    with pytest.raises(follow.FollowTimeout, match="still running"):
        follow.follow_operation(OP, timeout_s=0.05)


def test_json_prints_only_the_final_record(
    script: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    script += [training(1), completed()]
    assert follow.follow_operation(OP, as_json=True) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and '"status": "completed"' in out[0]


def _rendered(operation: dict[str, Any]) -> str:
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(follow.render(operation))
    return console.file.getvalue()


def test_live_view_shows_phase_progress_step_epoch_losses_and_elapsed() -> None:
    text = _rendered(training(4))
    assert "designing > training > backtesting > assessing" in text
    assert "55.0%" in text
    assert "Epoch 4/10" in text  # the step
    assert "epoch 4/10" in text  # the epoch bar's label
    assert "train loss 0.9000, val acc 0.480" in text
    assert "eurusd_1h_demo" in text
    assert "elapsed" in text


def test_live_view_lists_the_gate_reasons_when_the_gate_failed() -> None:
    text = _rendered(gate_failed())
    assert "accuracy_below_threshold (30.00% < 45%)" in text
    assert "loss_too_high (1.050 > 0.8)" in text
    assert "65 s" in text  # elapsed stops at completion


def test_json_final_record_carries_the_verdict(
    script: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    script += [training(1), gate_failed()]
    assert follow.follow_operation(OP, as_json=True) == 1
    final = json.loads(capsys.readouterr().out)
    assert final["verdict"] == "gate_failed"
    assert final["status"] == "failed"


@pytest.mark.parametrize(
    ("operation", "verdict"),
    [(completed(), "passed"), (gate_failed(), "gate_failed"), (record("cancelled"), "cancelled")],
)
def test_verdict_words_match_the_history(operation: dict[str, Any], verdict: str) -> None:
    assert follow.verdict_of(operation) == verdict


def test_ctrl_c_reaches_a_caller_of_follow_operation(
    script: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # `ktrdr demo` cancels its cycle and stops its stack on Ctrl+C: it must see it.
    script += [training(1)]

    def interrupted(_: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(follow.time, "sleep", interrupted)
    with pytest.raises(KeyboardInterrupt):
        follow.follow_operation(OP)


def test_ctrl_c_says_the_cycle_goes_on_and_how_to_cancel_it(
    script: list[Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    script += [training(1)]

    def interrupted(_: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(follow.time, "sleep", interrupted)

    assert follow.follow_from_command(OP) == follow.EXIT_INTERRUPTED == 130
    err = capsys.readouterr().err.strip()
    assert err == (
        f"stopped following {OP}; the cycle goes on. Watch it again: ktrdr agent status {OP} "
        f"--follow; cancel it: ktrdr agent cancel {OP}"
    )
