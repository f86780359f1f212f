"""The local stack's parts: Flower's exposure rule, the children's environment, process groups,
the supervisor's restarts, and the data directory (no redis-server or Celery worker started
here; the supervisor tests run `sleep` children)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ktrdr_tasks.errors import ConfigurationError
from ktrdr_tasks.flower_guard import check_flower_exposure, guard_flower
from ktrdr_tasks.settings import Settings
from ktrdr_tasks.stack import (
    SPEC_VARIABLE,
    Stack,
    StackError,
    StackPaths,
    free_port,
    kept_stack_hint,
    redis_servers_in,
    running_stack_pids,
    seed_strategies,
)
from ktrdr_tasks.supervisor import (
    Backoff,
    Child,
    Supervisor,
    group_alive,
    spawn,
    stop_group,
    wait_until,
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
    guard_flower(["--address=0.0.0.0"], {"FLOWER_BASIC_AUTH": "a:b"})
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


# -- Flower: the forms that served the UI without a login -------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--address=127.0.0.2"],
        ["--address=127.0.0.1", "-address=127.0.0.2"],  # tornado keeps the last, any dashes
        ["--address=127.0.0.1", "--address=0.0.0.0"],
        ["---address=10.0.0.1"],
        ["--address="],  # every interface
    ],
)
def test_flower_guard_reads_the_address_flower_itself_would_use(argv: list[str]) -> None:
    with pytest.raises(ConfigurationError, match="refusing to start Flower"):
        guard_flower(argv, {})


def test_flower_guard_refuses_what_flower_cannot_parse() -> None:
    # Flower drops the value of `--address 0.0.0.0` and fails on `--address`: so do we.
    with pytest.raises(ConfigurationError, match="Flower cannot read its options"):
        guard_flower(["--address", "0.0.0.0"], {"FLOWER_BASIC_AUTH": "a:b"})


def test_flower_guard_reads_the_environment_as_flower_does() -> None:
    with pytest.raises(ConfigurationError, match=r"on 127\.0\.0\.2"):
        guard_flower([], {"FLOWER_ADDRESS": "127.0.0.2"})
    guard_flower(["--address=127.0.0.2"], {"FLOWER_BASIC_AUTH": "admin:pw"})
    guard_flower(["--address=0.0.0.0", "--auth=.*@example\\.com"], {})
    guard_flower(["--unix-socket=/tmp/flower.sock"], {})  # no TCP listener at all


CELERY = str(Path(sys.executable).parent / "celery")


@pytest.mark.parametrize(
    ("argv", "extra_env", "config", "shown"),
    [
        ([CELERY, "-A", "ktrdr_tasks", "flower", "--address=127.0.0.2"], {}, "", "127.0.0.2"),
        (
            [CELERY, "-A", "ktrdr_tasks", "flower", "--address=127.0.0.1", "-address=127.0.0.2"],
            {},
            "",
            "127.0.0.2",
        ),
        ([CELERY, "-A", "ktrdr_tasks", "flower"], {}, "", "every interface"),
        ([CELERY, "-A", "ktrdr_tasks", "flower"], {"FLOWER_ADDRESS": "127.0.0.4"}, "", "127.0.0.4"),
        ([CELERY, "-A", "ktrdr_tasks", "flower"], {}, "address = '127.0.0.3'\n", "127.0.0.3"),
        ([CELERY, "--app=ktrdr_tasks.app:app", "flower", "--address=0.0.0.0"], {}, "", "0.0.0.0"),
        (
            [sys.executable, "-m", "ktrdr_tasks.stack", "flower", "--address=127.0.0.2"],
            {},
            "",
            "127.0.0.2",
        ),
    ],
    ids=["address", "last-wins", "default", "env", "flowerconfig", "app-path", "entry-point"],
)
def test_flower_started_any_way_on_the_ktrdr_app_refuses_without_credentials(
    tmp_path: Path, argv: list[str], extra_env: dict[str, str], config: str, shown: str
) -> None:
    """The guard runs inside Flower's own process on the options it parsed (command line in
    any spelling, FLOWER_* environment, a `flowerconfig.py` in the working directory)."""
    if config:
        (tmp_path / "flowerconfig.py").write_text(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    env.update(extra_env, REDIS_URL="redis://127.0.0.1:1/0")  # never reached: refused first
    done = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 4, done.stderr[-2000:]
    assert f"error: refusing to start Flower on {shown} without credentials" in done.stderr
    assert "Traceback" not in done.stderr


# -- the supervisor -------------------------------------------------------------------------


def test_backoff_doubles_for_quick_failures_up_to_its_ceiling() -> None:
    backoff = Backoff(first_s=0.5, factor=2, max_s=5)
    assert [backoff.delay(n) for n in range(1, 7)] == [0.5, 1, 2, 4, 5, 5]


def _sleeper(tmp_path: Path, name: str = "sleeper") -> Child:
    return spawn(name, ["sleep", "60"], tmp_path / f"{name}.log", dict(os.environ), tmp_path)


def test_supervisor_restarts_an_exited_child_after_its_backoff(tmp_path: Path) -> None:
    events: list[str] = []
    supervisor = Supervisor(Backoff(first_s=1, factor=2, max_s=8, stable_s=60), events.append)
    first = supervisor.add(_sleeper(tmp_path))
    try:
        first.kill()
        now = time.monotonic()
        assert supervisor.check(now) == []  # scheduled, not yet due
        assert "exited with code -9" in events[0] and "in 1.0 s" in events[0]
        [second] = supervisor.check(now + 1.01)
        assert second.running() and second.pid != first.pid
        second.kill()
        assert supervisor.check(now + 1.02) == []
        assert "in 2.0 s" in events[-1]  # a second quick failure waits twice as long
        [third] = supervisor.check(now + 3.1)
        assert supervisor.restarts == {"sleeper": 2}
        assert supervisor.children["sleeper"] is third
    finally:
        supervisor.stop()
    assert not group_alive(third.pid)


def test_supervisor_starts_afresh_after_a_child_stayed_up(tmp_path: Path) -> None:
    events: list[str] = []
    supervisor = Supervisor(Backoff(first_s=1, factor=2, max_s=8, stable_s=5), events.append)
    child = supervisor.add(_sleeper(tmp_path))
    try:
        supervisor._failures["sleeper"] = 3  # a crash loop long ago
        child.kill()
        assert supervisor.check(child.started_at + 10) == []
        assert "in 1.0 s" in events[-1]
    finally:
        supervisor.stop()


def test_supervisor_thread_restarts_and_stop_ends_everything_in_order(tmp_path: Path) -> None:
    supervisor = Supervisor(Backoff(first_s=0.1))
    for name in ("redis", "worker", "unsupervised"):
        supervisor.add(_sleeper(tmp_path, name), restart=name != "unsupervised")
    worker = supervisor.children["worker"]
    unsupervised = supervisor.children["unsupervised"]
    supervisor.start_thread(interval=0.05)
    try:
        worker.kill()
        unsupervised.kill()
        deadline = time.monotonic() + 5
        while supervisor.children["worker"] is worker and time.monotonic() < deadline:
            time.sleep(0.05)
        assert supervisor.children["worker"].running()
        assert not supervisor.children["unsupervised"].running()
        pids = [child.pid for child in supervisor.children.values()]
    finally:
        supervisor.stop([("worker",), ("redis",)])
    assert not any(group_alive(pid) for pid in pids)
    assert supervisor.children == {}


# -- one Redis data directory, one server ---------------------------------------------------


def test_a_redis_server_already_in_the_data_directory_refuses_a_second_stack(
    tmp_path: Path,
) -> None:
    stack = _stack(tmp_path)
    stack.paths.create()
    fake = tmp_path / "bin" / "redis-server"
    fake.parent.mkdir()
    fake.symlink_to(Path("/bin/sleep").resolve())
    other = subprocess.Popen([str(fake), "30"], cwd=stack.paths.redis, start_new_session=True)
    check = [sys.executable, "-m", "ktrdr_tasks.stack", "redis-dir-free", str(stack.paths.redis)]
    try:
        wait_until(lambda: redis_servers_in(stack.paths.redis) == [other.pid], 5, "fake redis")
        with pytest.raises(StackError, match="already keeps its data in"):
            stack._refuse_if_running()
        # The Procfile's redis line runs the same check before it starts redis-server.
        refused = subprocess.run(check, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 3
        assert refused.stderr.startswith(f"error: a redis-server (pid {other.pid}) already")
        assert refused.stderr.count("\n") == 1
    finally:
        other.kill()
        other.wait()
    assert redis_servers_in(stack.paths.redis) == []
    stack._refuse_if_running()
    assert subprocess.run(check, timeout=60).returncode == 0


def test_the_detached_supervisor_rebuilds_the_same_stack(tmp_path: Path) -> None:
    stack = _stack(tmp_path)
    again = Stack.from_spec(json.loads(json.dumps(stack._spec())), stack.settings)
    assert again.env() == stack.env()
    assert again.flower_basic_auth == stack.flower_basic_auth
    assert again.keep_running


def test_children_never_see_the_stack_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SPEC_VARIABLE, '{"redis_password": "x"}')
    assert SPEC_VARIABLE not in _stack(tmp_path).child_environ()


def test_a_shell_that_cannot_reach_redis_is_pointed_at_a_kept_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After `ktrdr demo --keep-running`, a new shell (default REDIS_URL) running `ktrdr` is
    told what to source; a shell already pointed at the stack, or a directory without one,
    is not."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OURS)}
    env["REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    ktrdr = [str(Path(sys.executable).parent / "ktrdr"), "agent", "status"]

    def status() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ktrdr, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )

    plain = status()
    assert plain.returncode == 3 and "cannot reach Redis" in plain.stderr
    assert "ktrdr demo" not in plain.stderr

    (tmp_path / ".ktrdr").mkdir()
    kept_url = f"redis://:pw@127.0.0.1:{free_port()}/0"
    (tmp_path / ".ktrdr" / "stack.env").write_text(f"REDIS_URL={kept_url}\nKTRDR_API_URL=x\n")
    hinted = status()
    assert hinted.returncode == 3
    assert hinted.stderr.count("\n") == 1  # one line
    assert "`set -a; source .ktrdr/stack.env; set +a`" in hinted.stderr

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REDIS_URL", kept_url)  # this shell already uses the kept stack
    assert kept_stack_hint() == ""
