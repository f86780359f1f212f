"""Sampling profiles of the benchmark worker with py-spy, summarised as text.

`record()` starts `py-spy record --format raw` on the worker processes (all pool children
included) for a fixed time; `summarize()` reads the collapsed stacks and prints where the
samples fall: inclusive share per function (the frame anywhere on the stack) and self share
(the innermost frame). py-spy is looked up on PATH and in `PY_SPY`; without it, profiling is
skipped with a note, never a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path


def py_spy_binary() -> str | None:
    return os.environ.get("PY_SPY") or shutil.which("py-spy")


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


def summarize(path: Path, top: int = 25) -> str:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _frames(stack)
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "no samples"
    lines = [f"{total} samples; inclusive share (function anywhere on the stack):"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    lines.append("self share (innermost frame):")
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    return "\n".join(lines)
