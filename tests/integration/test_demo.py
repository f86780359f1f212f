"""`ktrdr demo` as a newcomer runs it: no TTY, CI=true, a fresh directory, nothing configured.

Each run starts the whole stack (redis-server, worker, beat, training host, Flower), so these
tests also prove that the demo leaves no process behind: every pid whose working directory is
the demo's data directory is recorded while it runs and must be gone after it exits.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import BIN, REPO

pytestmark = pytest.mark.integration

DEMO_TIMEOUT_S = 150


def fresh_env(**extra: str) -> dict[str, str]:
    """The environment of a machine where nothing of ktrdr-tasks is configured."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("KTRDR_", "REDIS_", "FLOWER_", "AGENT_", "ANTHROPIC_"))
    }
    env.update(CI="true", PYTHONUNBUFFERED="1", **extra)
    return env


def _alive(pid: int) -> bool:
    """True for a live process; a zombie (dead, waiting to be reaped) is not alive."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _pids_in(directory: Path) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if Path(os.readlink(entry / "cwd")) == directory:
                    found.add(int(entry.name))
    return found


class PidRecorder:
    """Samples the processes running in `directory` (the stack's children) in the background."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory.resolve()
        self.seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.seen |= _pids_in(self.directory)
            time.sleep(0.1)

    def __enter__(self) -> PidRecorder:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def left_behind(self) -> list[int]:
        return sorted(pid for pid in self.seen | _pids_in(self.directory) if _alive(pid))


def run_demo(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "ktrdr"), "demo", *args],
        cwd=cwd,
        env=env or fresh_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own group, so the test can check the group is gone
    )


def assert_group_gone(pgid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


@pytest.fixture
def killer() -> Iterator[list[int]]:
    """Process groups to kill if a test fails half-way (a failing demo must not leak)."""
    groups: list[int] = []
    yield groups
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def test_demo_without_tty_reaches_a_verdict_with_model_files_and_leaves_nothing_running(
    tmp_path: Path, killer: list[int]
) -> None:
    api_key = f"sk-ant-demo-{secrets.token_hex(8)}"
    data_dir = tmp_path / ".ktrdr"
    started = time.monotonic()
    with PidRecorder(data_dir) as recorder:
        demo = run_demo(tmp_path, env=fresh_env(ANTHROPIC_API_KEY=api_key))
        killer.append(demo.pid)
        output, _ = demo.communicate(timeout=DEMO_TIMEOUT_S)
    elapsed = time.monotonic() - started
    print(output)

    assert demo.returncode == 0, output
    assert elapsed < 120
    operation_id = re.search(r"Research cycle (op_agent_research_\w+)", output).group(1)
    # A real research outcome either way: the gate passed, or it rejected the idea.
    verdict = output.strip().splitlines()
    assert any(
        line.startswith(
            (
                "completed: training gate passed",
                "failed: Training gate failed",
                "failed: Backtest gate failed",
            )
        )
        for line in verdict
    ), output
    # No TTY: plain lines, one per change, epochs included while training.
    assert "\x1b[" not in output
    assert re.search(rf"{operation_id}  running   training .*\[epoch \d+/\d+", output), output

    strategy_yaml = data_dir / re.search(r"strategy YAML  \.ktrdr/(\S+)", output).group(1)
    assert strategy_yaml.is_file()
    model_dir = data_dir / re.search(r"model          \.ktrdr/(\S+)/", output).group(1)
    assert (model_dir / "model.pt").stat().st_size > 0
    assert (model_dir / "metadata.json").is_file()
    assert model_dir.parent.name == strategy_yaml.stem

    # Nothing left: every child recorded while the demo ran is gone, and so is its group.
    assert len(recorder.seen) >= 5, recorder.seen  # redis, worker (+pool), beat, host, Flower
    assert recorder.left_behind() == []
    assert_group_gone(demo.pid)
    assert not (data_dir / "stack.json").exists()

    # One log line per phase change, each with the operation id; no secret in any log.
    worker_log = (data_dir / "logs" / "worker.log").read_text()
    for phase in ("design", "loading training parameters", "starting training", "training gate"):
        assert f"{operation_id} phase: {phase}" in worker_log
    redis_password = re.search(
        r"^requirepass (\S+)$", (data_dir / "redis" / "redis.conf").read_text(), re.M
    ).group(1)
    for log in (data_dir / "logs").glob("*.log"):
        text = log.read_text(errors="replace")
        assert redis_password not in text, log.name
        assert api_key not in text, log.name
    assert "redis://:**@127.0.0.1" in worker_log
    assert (data_dir / "redis" / "appendonly.aof").stat().st_size > 0


def test_demo_interrupted_cancels_the_cycle_and_stops_every_process(
    tmp_path: Path, killer: list[int]
) -> None:
    data_dir = tmp_path / "state"
    with PidRecorder(data_dir) as recorder:
        demo = run_demo(REPO, "--data-dir", str(data_dir), "--strategy", "eurusd_1h_stoch_cci_roc")
        killer.append(demo.pid)
        lines = []
        for line in demo.stdout:
            lines.append(line)
            if line.startswith("Research cycle "):
                break
        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=60)
    output = "".join(lines) + rest

    assert demo.returncode == 130, output
    assert "interrupted: cancelling the cycle and stopping the stack" in output
    assert "Stopped every process the demo started." in output
    assert len(recorder.seen) >= 5
    assert recorder.left_behind() == []
    assert_group_gone(demo.pid)


def test_keep_running_leaves_a_usable_stack_that_stop_ends(
    tmp_path: Path, killer: list[int]
) -> None:
    data_dir = tmp_path / "kept"
    demo = run_demo(
        REPO,
        "--data-dir",
        str(data_dir),
        "--strategy",
        "eurusd_1h_willr_bbw_dist",
        "--keep-running",
    )
    killer.append(demo.pid)
    try:
        output, _ = demo.communicate(timeout=DEMO_TIMEOUT_S)
        assert demo.returncode == 0, output
        assert "The stack keeps running" in output
        assert re.search(r"Flower +http://127\.0\.0\.1:\d+ +\(user ktrdr, password \S+\)", output)
        running = _pids_in(data_dir.resolve())
        assert running and all(_alive(pid) for pid in running)

        # The printed env file points any `ktrdr` command at the running stack.
        env = fresh_env()
        for line in (data_dir / "stack.env").read_text().splitlines():
            key, _, value = line.partition("=")
            env[key] = value
        assert (data_dir / "stack.env").stat().st_mode & 0o077 == 0
        status = subprocess.run(
            [str(BIN / "ktrdr"), "agent", "status"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert status.returncode == 0, status.stderr
        assert status.stdout.startswith("idle; last cycle: op_agent_research_")

        # A second demo in the same directory refuses to start a second stack.
        again = run_demo(REPO, "--data-dir", str(data_dir))
        killer.append(again.pid)
        refused, _ = again.communicate(timeout=60)
        assert again.returncode == 3
        assert "ktrdr demo --stop" in refused
    finally:
        stop = subprocess.run(
            [str(BIN / "ktrdr"), "demo", "--stop", "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
            env=fresh_env(),
        )
    assert stop.returncode == 0, stop.stderr
    assert stop.stdout.startswith("stopped 5 processes")
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in running) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in running)


def test_unknown_strategy_is_refused_before_anything_starts(tmp_path: Path) -> None:
    data_dir = tmp_path / "none"
    with PidRecorder(data_dir) as recorder:
        done = subprocess.run(
            [str(BIN / "ktrdr"), "demo", "--data-dir", str(data_dir), "--strategy", "nope"],
            cwd=REPO,
            env=fresh_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert "strategy 'nope' not found" in done.stderr
    assert recorder.seen == set()
    assert not (data_dir / "logs" / "redis.log").exists()
