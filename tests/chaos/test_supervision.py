"""`ktrdr demo --keep-running` supervises its stack: a worker or beat that dies (SIGKILL, a
lost broker, a crash) is started again with backoff, the restarted worker runs the next
cycle, and `ktrdr demo --stop` ends the supervisor and everything it restarted."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.processes import BIN, REPO

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

STRATEGY = ("--strategy", "eurusd_1h_rsi_macd_adx")


def _fresh_env() -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("KTRDR_", "REDIS_", "FLOWER_", "AGENT_", "ANTHROPIC_"))
    }
    return {**env, "CI": "true", "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def kept_stack(tmp_path: Path) -> Iterator[Path]:
    data_dir = tmp_path / "kept"
    demo = subprocess.run(
        [str(BIN / "ktrdr"), "demo", "--keep-running", "--data-dir", str(data_dir), *STRATEGY],
        cwd=REPO,
        env=_fresh_env(),
        capture_output=True,
        text=True,
        timeout=200,
    )
    try:
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "restarts a process that exits" in demo.stdout
        yield data_dir
    finally:
        subprocess.run(
            [str(BIN / "ktrdr"), "demo", "--stop", "--data-dir", str(data_dir)],
            env=_fresh_env(),
            capture_output=True,
            timeout=120,
        )
        state = data_dir / "stack.json"
        if state.exists():  # a failed stop must not leak processes into the next test
            for pid in json.loads(state.read_text())["pids"].values():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)


def _pids(data_dir: Path) -> dict[str, int]:
    return dict(json.loads((data_dir / "stack.json").read_text())["pids"])


def _wait_for_new_pid(data_dir: Path, name: str, old: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError, KeyError):
            pid = _pids(data_dir)[name]
            if pid != old and psutil.pid_exists(pid):
                return pid
        time.sleep(0.1)
    raise AssertionError(f"{name} not restarted within {timeout} s")


def test_keep_running_restarts_a_killed_worker_and_beat_and_the_next_cycle_runs(
    kept_stack: Path,
) -> None:
    before = _pids(kept_stack)
    os.killpg(before["worker"], signal.SIGKILL)
    os.killpg(before["beat"], signal.SIGKILL)
    killed_at = time.monotonic()
    worker = _wait_for_new_pid(kept_stack, "worker", before["worker"], 30)
    beat = _wait_for_new_pid(kept_stack, "beat", before["beat"], 30)
    restarted_in = time.monotonic() - killed_at
    worker_log = kept_stack / "logs" / "worker.log"
    deadline = time.monotonic() + 60
    while worker_log.read_text(errors="replace").count(" ready.") < 2:
        assert time.monotonic() < deadline, "restarted worker never became ready"
        time.sleep(0.2)

    env = _fresh_env()
    for line in (kept_stack / "stack.env").read_text().splitlines():
        key, _, value = line.partition("=")
        env[key] = value
    cycle = subprocess.run(
        [str(BIN / "ktrdr"), "agent", "trigger", "--follow", "--json", "--bypass-gates", *STRATEGY],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    final = json.loads(cycle.stdout.strip().splitlines()[-1])
    assert final["status"] == "completed", cycle.stdout + cycle.stderr

    events = (kept_stack / "logs" / "supervisor.log").read_text()
    assert f"worker (pid {before['worker']}) exited" in events
    assert f"worker restarted as pid {worker}" in events
    assert f"beat restarted as pid {beat}" in events
    assert psutil.Process(worker).is_running() and psutil.Process(beat).is_running()
    print(
        f"keep-running: worker and beat SIGKILLed, both restarted within {restarted_in:.1f} s; "
        "the next cycle completed on the restarted worker"
    )

    stop = subprocess.run(
        [str(BIN / "ktrdr"), "demo", "--stop", "--data-dir", str(kept_stack)],
        env=_fresh_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stop.stdout.startswith("stopped 5 processes"), stop.stdout + stop.stderr
    assert not any(psutil.pid_exists(pid) for pid in (worker, beat))
