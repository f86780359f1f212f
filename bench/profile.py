"""Sampling profiles of the benchmark worker with py-spy, summarised as text.

`record()` starts `py-spy record --gil --format raw` on the worker processes (all pool children
included) for a fixed time. `--gil` samples only the thread holding the GIL, so the profile is
where Python code spends CPU: without it, a process descheduled on two busy cores right after
waking redis-server (a socket send) is sampled there, and `send_packed_command` reads as a
third of the time while it is waiting. `summarize()` reads the collapsed stacks and prints
where the samples fall, for the pool processes and the consumer (the main process) apart:
inclusive share per function (the frame anywhere on the stack) and self share (the innermost
frame). py-spy (the `bench` extra) is looked up in `PY_SPY`, on PATH and next to this
Python; without it, profiling is skipped with a note, never a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path


def py_spy_binary() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"  # the `bench` extra's, in this venv
    if os.environ.get("PY_SPY"):
        return os.environ["PY_SPY"]
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


def record(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    binary = py_spy_binary()
    if binary is None:
        print("py-spy not found (pip install py-spy, or set PY_SPY): no profile taken")
        return None
    argv = [
        binary,
        "record",
        "--pid",
        str(pid),
        "--subprocesses",
        "--nonblocking",
        "--gil",
        "--rate",
        "200",
        "--format",
        "raw",
        "--duration",
        str(max(1, int(seconds))),
        "--output",
        str(out),
    ]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _frames(stack: str) -> list[str]:
    # A raw line is "frame;frame;... count"; a frame is "function (file:line)".
    frames = []
    for frame in stack.split(";"):
        name, _, where = frame.partition(" (")
        module = where.rsplit("/", 1)[-1].split(":")[0] if where else ""
        frames.append(f"{name} ({module})" if module else name)
    return frames


_POOL_PROCESS = "_create_worker_process"
# Frames below these (the process's start-up path) are on every sample: they say nothing.
_LOOPS = ("Worker.workloop", "asynloop")


def _work_frames(frames: list[str]) -> list[str]:
    for index in range(len(frames) - 1, -1, -1):
        if frames[index].startswith(_LOOPS):
            return frames[index + 1 :]
    return [f for f in frames if not f.startswith("process ")]


def summarize(path: Path, top: int = 25) -> str:
    """Shares per function for the pool processes and the consumer, each of its own samples."""
    inclusive: dict[str, Counter[str]] = {"pool processes": Counter(), "consumer": Counter()}
    own: dict[str, Counter[str]] = {"pool processes": Counter(), "consumer": Counter()}
    totals: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _frames(stack)
        role = "pool processes" if any(_POOL_PROCESS in f for f in frames) else "consumer"
        frames = _work_frames(frames)
        totals[role] += count
        own[role][frames[-1] if frames else "?"] += count
        for frame in set(frames):
            inclusive[role][frame] += count
    total = sum(totals.values())
    if not total:
        return "no samples"
    lines = [f"{total} samples (GIL held)"]
    for role, samples in totals.most_common():
        lines.append(f"{role}: {100 * samples / total:.1f}% of the samples; of its own:")
        lines += [
            f"  {100 * n / samples:5.1f}%  {name}" for name, n in inclusive[role].most_common(top)
        ]
        lines.append("  self (innermost frame):")
        lines += [f"  {100 * n / samples:5.1f}%  {name}" for name, n in own[role].most_common(top)]
    return "\n".join(lines)
