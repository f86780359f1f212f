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


# -- what a person meets first: version, configuration, bad input, Ctrl+C, tables -----------


def one_line_exit(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr
    return done.stderr.strip()


def test_version_is_the_package_version(env: dict[str, str]) -> None:
    from ktrdr_tasks import __version__

    done = ktrdr(env, "--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"ktrdr {__version__}"
    # Written once: the distribution's metadata and the host read the same value.
    import importlib.metadata

    import training_host

    assert importlib.metadata.version("ktrdr-tasks") == __version__ == training_host.__version__


def test_both_packages_ship_py_typed() -> None:
    import importlib.resources

    for package in ("ktrdr_tasks", "training_host"):
        assert importlib.resources.files(package).joinpath("py.typed").is_file()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("REDIS_URL", "notaurl"),
        ("KTRDR_VISIBILITY_TIMEOUT_S", "inf"),
        ("KTRDR_POLL_INTERVAL_S", "-1"),
        ("KTRDR_LOG_FORMAT", "yaml"),
    ],
)
def test_bad_configuration_is_one_line_naming_the_variable_and_exit_4(
    env: dict[str, str], variable: str, value: str
) -> None:
    line = one_line_exit(ktrdr({**env, variable: value}, "agent", "status"), 4)
    assert line.startswith(f"error: invalid configuration: {variable}: ")


@pytest.mark.parametrize("role", ["worker", "beat"])
def test_worker_and_beat_refuse_bad_configuration_in_one_line(
    env: dict[str, str], role: str, tmp_path: Path
) -> None:
    for variable, value in (("REDIS_URL", "notaurl"), ("KTRDR_VISIBILITY_TIMEOUT_S", "inf")):
        done = subprocess.run(
            [str(BIN / "celery"), "-A", "ktrdr_tasks", role, "--schedule", str(tmp_path / "s")]
            if role == "beat"
            else [str(BIN / "celery"), "-A", "ktrdr_tasks", role],
            env={**env, variable: value},
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        line = one_line_exit(done, 4)
        assert line.startswith(f"celery: invalid configuration: {variable}: "), line


def test_training_host_refuses_bad_configuration_in_one_line(env: dict[str, str]) -> None:
    done = subprocess.run(
        [str(BIN / "ktrdr-training-host"), "--port", "0"],
        env={**env, "KTRDR_LOG_LEVEL": "chatty"},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    line = one_line_exit(done, 4)
    assert line.startswith("ktrdr-training-host: invalid configuration: KTRDR_LOG_LEVEL: ")


def test_training_host_without_the_host_extra_names_the_extra(env: dict[str, str]) -> None:
    # `python -m training_host` with torch unimportable, as on an install without [host].
    blocked = (
        "import runpy, sys; sys.modules['torch'] = None; sys.argv = ['ktrdr-training-host']; "
        "runpy.run_module('training_host', run_name='__main__')"
    )
    done = subprocess.run(
        [str(BIN / "python"), "-c", blocked],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    line = one_line_exit(done, 4)
    assert "pip install 'ktrdr-tasks[host]'" in line and "torch" in line


def test_empty_operation_id_is_one_line_and_exit_2(env: dict[str, str]) -> None:
    for args in (("operations", "status", ""), ("agent", "status", " "), ("agent", "cancel", "")):
        line = one_line_exit(ktrdr(env, *args), 2)
        assert "OPERATION_ID must not be empty" in line


def test_a_100_kb_strategy_name_gives_a_bounded_error_line(env: dict[str, str]) -> None:
    line = one_line_exit(ktrdr(env, "agent", "trigger", "--strategy", "a" * 100_000), 2)
    assert len(line) < 1100
    assert "(100000 characters)" in line  # the name is echoed cut, with its size


def test_any_long_error_is_cut_at_the_cli_bound(env: dict[str, str]) -> None:
    line = one_line_exit(ktrdr(env, "operations", "status", "op_" + "a" * 100_000), 2)
    assert len(line) < 1100
    assert "more characters" in line


def test_a_wrong_redis_password_says_so(env: dict[str, str], tmp_path: Path) -> None:
    from tests.support.processes import redis_server

    with redis_server(tmp_path / "redis", password="right-password") as server:
        wrong = f"redis://:wrong-password@127.0.0.1:{server.port}/0"
        line = one_line_exit(ktrdr({**env, "REDIS_URL": wrong}, "agent", "list"), 3)
    assert "Redis refused the password" in line
    assert "Is redis-server running" not in line
    assert "wrong-password" not in line


def test_trigger_follow_json_is_ndjson_ending_with_the_verdict(
    worker: Process, fake_api: FakeTrainingApi, strategies_dir: Path, env: dict[str, str]
) -> None:
    from tests.support.fake_training_api import POOR_RESULT

    name = write_strategy(strategies_dir, "cli_ndjson")
    fake_api.behaviours[name] = Behaviour(polls=2, result=POOR_RESULT)

    done = ktrdr(env, "agent", "trigger", "--strategy", name, "--follow", "--json")

    assert done.returncode == 1, done.stderr
    objects = [json.loads(line) for line in done.stdout.splitlines()]  # each line parses
    assert len(objects) == 2
    assert objects[0]["triggered"] is True
    assert objects[-1]["operation_id"] == objects[0]["operation_id"]
    assert objects[-1]["verdict"] == "gate_failed"

    listed = ktrdr(env, "agent", "list", "--limit", "50").stdout.splitlines()
    headers = ["OPERATION", "STATUS", "PHASE", "PROGRESS", "STRATEGY", "FAILURE", "REASON"]
    assert listed[0].split() == headers
    row = next(line for line in listed if objects[0]["operation_id"] in line)
    assert "accuracy_below_threshold" in row

    history = ktrdr(env, "agent", "history", "--limit", "50").stdout.splitlines()
    assert history[0].split()[:3] == ["FINISHED", "VERDICT", "STRATEGY"]
    assert history[0].split()[3:9] == ["ACCURACY", "LOSS", "TRADES", "RETURN", "SHARPE", "DRAWDOWN"]
    assert "FAILURE REASON" in history[0]
    row = next(line for line in history if name in line)
    assert "gate_failed" in row and "accuracy_below_threshold" in row


def test_ctrl_c_during_follow_says_the_cycle_goes_on(
    worker: Process, fake_api: FakeTrainingApi, strategies_dir: Path, env: dict[str, str]
) -> None:
    import signal
    import time

    from ktrdr_tasks import workflow
    from tests.integration.conftest import wait_for

    name = write_strategy(strategies_dir, "cli_ctrl_c")
    fake_api.behaviours[name] = Behaviour(polls=40)
    follower = subprocess.Popen(
        [str(BIN / "ktrdr"), "agent", "trigger", "--strategy", name, "--follow"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert follower.stdout is not None
    first = follower.stdout.readline()  # "Research cycle started: <id>"
    operation_id = first.strip().rsplit(" ", 1)[-1]
    time.sleep(1.0)
    follower.send_signal(signal.SIGINT)
    _, err = follower.communicate(timeout=30)

    assert follower.returncode == 130
    assert err.strip().splitlines()[-1] == (
        f"stopped following {operation_id}; the cycle goes on. Watch it again: "
        f"ktrdr agent status {operation_id} --follow; cancel it: ktrdr agent cancel {operation_id}"
    )
    assert workflow.status(operation_id)["status"] in ("pending", "running")
    assert wait_for(operation_id, {"completed", "failed"}, timeout=60)["status"] == "completed"
