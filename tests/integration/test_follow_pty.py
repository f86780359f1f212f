"""`ktrdr agent trigger --follow` on a real terminal (a pseudo-terminal), against the real stack.

The live view must show the epoch moving while the reference host trains, then the verdict,
and exit 0 on a completed cycle and 1 otherwise.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ktrdr_tasks.stack import Stack
from tests.support.local_stack import local_stack
from tests.support.processes import BIN

pytestmark = pytest.mark.integration

EPOCHS = 30
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with local_stack(tmp_path_factory.mktemp("follow-stack")) as started:
        yield started


def long_training_strategy(directory: Path, name: str) -> str:
    """An example strategy that trains long enough (many epochs) to be watched."""
    document = yaml.safe_load((directory / "eurusd_1h_stoch_cci_roc.yaml").read_text())
    document["name"] = name
    document["model"]["training"]["epochs"] = EPOCHS
    document["model"]["training"]["early_stopping"] = {"patience": EPOCHS, "monitor": "val_loss"}
    (directory / f"{name}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return name


def run_in_pty(argv: list[str], env: dict[str, str], timeout: float) -> tuple[int, bytes]:
    """Run `argv` with a pseudo-terminal as stdin/stdout/stderr; return its code and output."""
    main_fd, child_fd = pty.openpty()
    # A fresh pty is 0x0: give it the size of an ordinary terminal window.
    fcntl.ioctl(child_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(
        argv,
        stdin=child_fd,
        stdout=child_fd,
        stderr=child_fd,
        env=env,
        start_new_session=True,
        close_fds=True,
    )
    os.close(child_fd)
    output = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main_fd], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(main_fd, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
            elif process.poll() is not None:
                break
        return process.wait(timeout=10), bytes(output)
    finally:
        if process.poll() is None:
            process.kill()
        with contextlib.suppress(OSError):
            os.close(main_fd)


def test_follow_in_a_terminal_shows_epochs_while_training_then_the_verdict(
    stack: Stack,
) -> None:
    name = long_training_strategy(stack.strategies_dir, "follow_pty_long")
    env = {**os.environ, **stack.env(), "TERM": "xterm-256color"}
    env.pop("CI", None)

    code, raw = run_in_pty(
        [str(BIN / "ktrdr"), "agent", "trigger", "--strategy", name, "--follow"], env, 120
    )
    text = ANSI.sub(b"", raw).decode(errors="replace")

    print(text)
    assert ANSI.search(raw), "no live (rich) view on a terminal"
    epochs = {int(n) for n in re.findall(rf"epoch (\d+)/{EPOCHS}", text)}
    assert len(epochs) >= 3, text[-3000:]  # the epoch moved while we watched
    assert "train loss" in text and "val acc" in text
    assert "training" in text and "elapsed" in text and "%" in text
    verdict = text.strip().splitlines()[-1]
    if verdict.startswith("completed:"):
        assert code == 0, text[-2000:]
    else:
        assert verdict.startswith(
            ("failed: Training gate failed", "failed: Backtest gate failed")
        ), text[-2000:]
        assert code == 1
