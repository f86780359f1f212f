"""The `ktrdr` command as a person or a script uses it: JSON output, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import write_strategy
from tests.support.fake_training_api import Behaviour, FakeTrainingApi
from tests.support.processes import BIN, Process

pytestmark = pytest.mark.integration


def ktrdr(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "ktrdr"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def env(cycle_env: dict[str, str]) -> dict[str, str]:
    import os

    return {**os.environ, **cycle_env}


def test_trigger_follow_json_prints_the_final_record_and_exits_zero(
    worker: Process, fake_api: FakeTrainingApi, strategies_dir: Path, env: dict[str, str]
) -> None:
    name = write_strategy(strategies_dir, "cli_follow")
    fake_api.behaviours[name] = Behaviour(polls=3)

    done = ktrdr(env, "agent", "trigger", "--strategy", name, "--follow", "--json")

    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    trigger, final = json.loads(lines[0]), json.loads(lines[-1])
    assert trigger["triggered"] is True
    assert final["operation_id"] == trigger["operation_id"]
    assert final["status"] == "completed"

    shown = ktrdr(env, "operations", "status", trigger["operation_id"], "--json")
    assert json.loads(shown.stdout)["status"] == "completed"
    listed = json.loads(ktrdr(env, "agent", "list", "--json").stdout)
    assert trigger["operation_id"] in [op["operation_id"] for op in listed["operations"]]
    history = json.loads(ktrdr(env, "agent", "history", "--json").stdout)
    assert any(row["operation_id"] == trigger["operation_id"] for row in history["history"])


def test_follow_without_tty_prints_plain_lines_and_fails_on_gate_failure(
    worker: Process, fake_api: FakeTrainingApi, strategies_dir: Path, env: dict[str, str]
) -> None:
    from tests.support.fake_training_api import POOR_RESULT

    name = write_strategy(strategies_dir, "cli_follow_fail")
    fake_api.behaviours[name] = Behaviour(polls=12, result=POOR_RESULT)

    done = ktrdr(env, "agent", "trigger", "--strategy", name, "--follow")

    assert done.returncode == 1
    assert "Epoch" in done.stdout
    assert (
        done.stdout.strip()
        .splitlines()[-1]
        .startswith("failed: Training gate failed: accuracy_below_threshold")
    )


def test_unknown_operation_is_one_line_and_exit_2(env: dict[str, str]) -> None:
    done = ktrdr(env, "agent", "status", "op_agent_research_19990101_000000_deadbeef")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "unknown operation" in done.stderr


def test_unknown_strategy_is_refused_before_anything_is_queued(env: dict[str, str]) -> None:
    done = ktrdr(env, "agent", "trigger", "--strategy", "no_such_strategy", "--json")
    assert done.returncode == 2
    assert "not found" in done.stderr


def test_redis_down_is_one_line_and_exit_3(env: dict[str, str]) -> None:
    done = ktrdr({**env, "REDIS_URL": "redis://:pw@127.0.0.1:1/0"}, "agent", "list")
    assert done.returncode == 3
    assert "cannot reach Redis at redis://:***@127.0.0.1:1/0" in done.stderr
    assert "pw@" not in done.stderr
    assert "Traceback" not in done.stderr
