"""The local stack's pure parts: Flower's exposure rule, the children's environment, process
groups, and the data directory (no redis-server or Celery started here)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ktrdr_tasks.errors import ConfigurationError
from ktrdr_tasks.settings import Settings
from ktrdr_tasks.stack import (
    Stack,
    StackPaths,
    check_flower_exposure,
    group_alive,
    guard_flower,
    running_stack_pids,
    seed_strategies,
    stop_group,
)

REPO = Path(__file__).resolve().parents[2]
_OURS = ("KTRDR_", "REDIS_", "FLOWER_", "AGENT_", "ANTHROPIC_", "TRAINING_", "BACKTEST_")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Integration fixtures export their settings into this process; read only ours here.
    for name in list(os.environ):
        if name.startswith(_OURS):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("address", ["127.0.0.1", "localhost", "::1", "[::1]"])
def test_flower_on_loopback_needs_no_credentials(address: str) -> None:
    check_flower_exposure(address, [])


@pytest.mark.parametrize("address", ["0.0.0.0", "", "192.168.1.5", "::"])
def test_flower_beyond_loopback_without_credentials_is_refused(address: str) -> None:
    with pytest.raises(ConfigurationError, match="refusing to start Flower"):
        check_flower_exposure(address, [])


def test_flower_beyond_loopback_with_basic_auth_or_oauth_is_allowed() -> None:
    check_flower_exposure("0.0.0.0", ["admin:pw"])
    check_flower_exposure("0.0.0.0", [], oauth=".*@example.com")


def test_flower_basic_auth_without_a_password_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="user:password"):
        check_flower_exposure("127.0.0.1", ["admin"])


def test_guard_reads_flower_arguments_and_environment() -> None:
    guard_flower(["--address=127.0.0.1", "--port=5555"], {})
    guard_flower(["--address", "0.0.0.0"], {"FLOWER_BASIC_AUTH": "a:b"})
    guard_flower(["--address=0.0.0.0", "--basic-auth=a:b"], {})
    guard_flower([], {"FLOWER_ADDRESS": "127.0.0.1"})
    with pytest.raises(ConfigurationError):
        guard_flower(["--port=5555"], {})  # Flower's default address: every interface
    with pytest.raises(ConfigurationError):
        guard_flower(["--address=0.0.0.0"], {"FLOWER_BASIC_AUTH": ""})


def test_guarded_flower_entry_point_refuses_with_exit_code_4() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    done = subprocess.run(
        [sys.executable, "-m", "ktrdr_tasks.stack", "flower", "--address=0.0.0.0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 4
    assert done.stderr.startswith("error: refusing to start Flower on 0.0.0.0")


def _stack(tmp_path: Path, **settings: str) -> Stack:
    return Stack(tmp_path / "data", Settings(**settings))


def test_children_get_the_stack_connections_and_the_demo_data(tmp_path: Path) -> None:
    stack = _stack(tmp_path)
    env = stack.env()

    assert env["REDIS_URL"] == f"redis://:{stack.redis_password}@127.0.0.1:{stack.redis_port}/0"
    assert env["KTRDR_API_URL"] == f"http://127.0.0.1:{stack.api_port}"
    assert env["KTRDR_STRATEGIES_DIR"] == str((tmp_path / "data" / "strategies").resolve())
    assert env["KTRDR_MODELS_DIR"] == str((tmp_path / "data" / "models").resolve())
    assert env["KTRDR_POLL_INTERVAL_S"] == "0.5"
    assert (env["KTRDR_TRAINING_START_DATE"], env["KTRDR_TRAINING_END_DATE"]) == (
        "2017-05-01",
        "2018-02-01",
    )
    assert (env["KTRDR_DESIGN_SYMBOLS"], env["KTRDR_DESIGN_TIMEFRAMES"]) == ("EURUSD", "1h")
    assert len({stack.redis_port, stack.api_port, stack.flower_port}) == 3
    Settings(**env)  # every name is one the settings read


def test_user_directories_dates_and_design_filters_win(tmp_path: Path) -> None:
    stack = _stack(
        tmp_path,
        KTRDR_STRATEGIES_DIR=str(tmp_path / "mine"),
        KTRDR_MODELS_DIR=str(tmp_path / "my-models"),
        KTRDR_TRAINING_START_DATE="2005-01-01",
        KTRDR_TRAINING_END_DATE="2013-01-01",
        KTRDR_DESIGN_SYMBOLS="GOOG",
    )
    env = stack.env()
    assert env["KTRDR_STRATEGIES_DIR"] == str((tmp_path / "mine").resolve())
    assert env["KTRDR_MODELS_DIR"] == str((tmp_path / "my-models").resolve())
    assert env["KTRDR_TRAINING_START_DATE"] == "2005-01-01"
    assert "KTRDR_DESIGN_SYMBOLS" not in env  # passed through from the user's environment


def test_child_environment_drops_the_users_flower_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "someone:else")
    monkeypatch.setenv("KTRDR_GATE_MIN_ACCURACY", "0.1")
    environ = _stack(tmp_path).child_environ()
    assert "FLOWER_BASIC_AUTH" not in environ
    assert environ["KTRDR_GATE_MIN_ACCURACY"] == "0.1"


def test_stop_group_ends_a_process_group_that_ignores_sigterm() -> None:
    leader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            "time.sleep(60)",
        ],
        start_new_session=True,
    )
    time.sleep(0.5)
    assert group_alive(leader.pid)

    started = time.monotonic()
    stop_group(leader.pid, timeout=1, reap=leader.poll)
    leader.wait(timeout=5)

    assert time.monotonic() - started < 5
    assert not group_alive(leader.pid)
    assert leader.returncode == -signal.SIGKILL


def test_running_stack_pids_ignores_dead_groups(tmp_path: Path) -> None:
    paths = StackPaths(tmp_path)
    assert running_stack_pids(paths) == []
    sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        paths.state_file.write_text(f'{{"pids": {{"redis": {sleeper.pid}, "worker": 999999}}}}')
        assert running_stack_pids(paths) == [sleeper.pid]
    finally:
        sleeper.kill()
        sleeper.wait()
    assert running_stack_pids(paths) == []


def test_seed_strategies_copies_examples_without_overwriting(tmp_path: Path) -> None:
    target = tmp_path / "strategies"
    target.mkdir()
    (target / "eurusd_1h_rsi_macd_adx.yaml").write_text("mine")

    copied = seed_strategies(REPO / "strategies", target)

    assert "eurusd_1h_rsi_macd_adx" not in copied and copied
    assert (target / "eurusd_1h_rsi_macd_adx.yaml").read_text() == "mine"
    assert seed_strategies(tmp_path / "missing", target) == []


def test_repr_shows_no_secret(tmp_path: Path) -> None:
    stack = Stack(tmp_path, Settings(ANTHROPIC_API_KEY="sk-ant-secret"))
    shown = repr(stack)
    assert stack.redis_password not in shown
    assert stack.flower_password not in shown
    assert "sk-ant-secret" not in shown
