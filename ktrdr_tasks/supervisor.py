"""One way to run local processes: start in a process group, watch, restart with backoff, stop.

Used by `ktrdr demo` (`ktrdr_tasks.stack`), the integration and chaos tests
(`tests/support/processes.py`) and the benchmarks (`bench/stack.py`), so a process is started,
logged, killed and reaped the same way everywhere. Each child leads its own process group
(a signal reaches a prefork worker's pool too) and writes one log file; `stop` sends SIGTERM
to the group and SIGKILL to whatever is left after a grace period. A child may be asked to
die with its parent (Linux parent-death signal), so a killed launcher strands nothing.

`Supervisor` restarts children that exit (a worker that lost Redis, a crashed beat) after a
delay that doubles with each quick failure (`Backoff`), and starts afresh once a child has
stayed up for a while. Process trees are read with psutil.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

STOP_TIMEOUT_S = 15.0
_PR_SET_PDEATHSIG = 1


def wait_until(
    check: Callable[[], object], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Call `check` until it is true; TimeoutError naming `what` (and the last error) if not."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # the process is still starting
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s (last error: {last_error})")


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: Linux sends it SIGTERM when the thread that
    # started it ends, even by SIGKILL, so no child outlives its launcher by accident.
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# -- process groups -------------------------------------------------------------------------


def group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes of a process group."""
    members = []
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                members.append(proc)
    return members


def group_alive(pgid: int) -> bool:
    """True while any process of the group exists (a zombie leader does not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return bool(group_members(pgid))


def _wait_group(pgid: int, timeout: float, reap: Callable[[], object]) -> bool:
    """Wait until no process of the group is alive; True if that happened in time."""
    deadline = time.monotonic() + timeout
    while True:
        reap()
        if not group_alive(pgid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def stop_group(
    pgid: int, timeout: float = STOP_TIMEOUT_S, reap: Callable[[], object] = lambda: None
) -> None:
    """SIGTERM a process group, SIGKILL what is left after `timeout` seconds.

    `reap` collects the leader when it is our child (`Popen.poll`), so it is not counted as
    a live zombie.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    if _wait_group(pgid, timeout, reap):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    _wait_group(pgid, 5.0, reap)


# -- one child ------------------------------------------------------------------------------


@dataclass
class Child:
    """One started process: the leader of its own process group, logging to one file."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes]
    env: Mapping[str, str] = field(repr=False)  # may hold secrets
    cwd: Path
    die_with_parent: bool = False
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def uptime(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.started_at

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def log_tail(self, chars: int = 3000) -> str:
        return self.log()[-chars:]

    def tree(self) -> list[psutil.Process]:
        """The process and its descendants (a prefork worker's pool processes)."""
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        return []

    def send_signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole group (SIGKILL by default) and reap the leader."""
        self.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM the group, SIGKILL what is left after `timeout`; the leader is reaped."""
        stop_group(self.pid, timeout, reap=self.popen.poll)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=1)

    def respawn(self) -> Child:
        """The same command again, appending to the same log."""
        return spawn(
            self.name,
            self.argv,
            self.log_path,
            self.env,
            self.cwd,
            die_with_parent=self.die_with_parent,
            append=True,
        )


def spawn(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    env: Mapping[str, str],
    cwd: Path,
    *,
    die_with_parent: bool = False,
    append: bool = False,
) -> Child:
    """Start `argv` in its own session with stdout and stderr in `log_path`.

    `env` is the child's whole environment. Its own session: Ctrl+C in the launcher's
    terminal reaches the launcher, which decides what to stop and in which order.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab" if append else "wb") as handle:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
    return Child(name, list(argv), log_path, popen, dict(env), cwd, die_with_parent)


# -- restarts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backoff:
    """Restart delays: `first_s`, doubled for each quick failure in a row, at most `max_s`.

    A child that stayed up `stable_s` seconds before it exited is restarted after `first_s`
    again: one crash a day is not a crash loop.
    """

    first_s: float = 0.5
    factor: float = 2.0
    max_s: float = 30.0
    stable_s: float = 60.0

    def delay(self, failures: int) -> float:
        """The wait before restart number `failures` of a quick-failure streak (1, 2, ...)."""
        return min(self.max_s, self.first_s * self.factor ** max(0, failures - 1))


class Supervisor:
    """Children by name; restarts those that exit, with `Backoff`, until `stop()`.

    `watch()` runs the loop in the calling thread (the `ktrdr demo --keep-running` process);
    `start_thread()` runs it beside the caller (the demo that follows its cycle). The
    thread stays until `stop()` has ended every child: a child's parent-death signal fires
    when the thread that started it ends.
    """

    def __init__(
        self,
        backoff: Backoff | None = None,
        on_event: Callable[[str], None] = lambda _: None,
        on_restart: Callable[[Child], None] = lambda _: None,
    ) -> None:
        self.backoff = backoff or Backoff()
        self.children: dict[str, Child] = {}
        self.restarts: dict[str, int] = {}
        self._supervised: set[str] = set()
        self._failures: dict[str, int] = {}
        self._due: dict[str, float] = {}
        self._on_event = on_event
        self._on_restart = on_restart
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, child: Child, restart: bool = True) -> Child:
        with self._lock:
            self.children[child.name] = child
            if restart:
                self._supervised.add(child.name)
        return child

    def pids(self) -> dict[str, int]:
        with self._lock:
            return {name: child.pid for name, child in self.children.items()}

    def check(self, now: float | None = None) -> list[Child]:
        """One pass: schedule a restart for each supervised child that exited, run due ones."""
        now = time.monotonic() if now is None else now
        restarted = []
        with self._lock:
            if self._stopping.is_set():
                return []
            for name in sorted(self._supervised):
                child = self.children[name]
                if child.running():
                    continue
                if name not in self._due:
                    self._schedule(child, now)
                if now >= self._due[name]:
                    restarted.append(self._restart(child, now))
        return restarted

    def _schedule(self, child: Child, now: float) -> None:
        failures = (
            1
            if child.uptime(now) >= self.backoff.stable_s
            else self._failures.get(child.name, 0) + 1
        )
        self._failures[child.name] = failures
        delay = self.backoff.delay(failures)
        self._due[child.name] = now + delay
        self._on_event(
            f"{child.name} (pid {child.pid}) exited with code {child.popen.returncode} after "
            f"{child.uptime(now):.1f} s; restarting it in {delay:.1f} s"
        )

    def _restart(self, child: Child, now: float) -> Child:
        del self._due[child.name]
        # A dead leader's pool processes would hold the log file and the port.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        fresh = child.respawn()
        fresh.started_at = now
        self.children[child.name] = fresh
        self.restarts[child.name] = self.restarts.get(child.name, 0) + 1
        self._on_event(
            f"{child.name} restarted as pid {fresh.pid} (restart {self.restarts[child.name]})"
        )
        self._on_restart(fresh)
        return fresh

    def watch(self, interval: float = 0.2) -> None:
        """Restart exited children until `stop()` is called (from a signal handler, a thread)."""
        while not self._stopping.wait(interval):
            self.check()

    def start_thread(self, interval: float = 0.2) -> None:
        def run() -> None:
            self.watch(interval)
            self._stopped.wait()

        self._thread = threading.Thread(target=run, name="ktrdr-supervisor", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """No more restarts (safe from a signal handler); `stop()` then ends the children."""
        self._stopping.set()

    def stop(self, order: Iterable[Sequence[str]] = (), timeout: float = STOP_TIMEOUT_S) -> None:
        """End every child, batch by batch in `order` (names), the rest last."""
        self._stopping.set()
        with self._lock:
            batches = [list(batch) for batch in order]
            named = {name for batch in batches for name in batch}
            batches.append([name for name in self.children if name not in named])
            for batch in batches:
                children = [self.children[name] for name in batch if name in self.children]
                for child in children:
                    child.send_signal(signal.SIGTERM)
                for child in children:
                    child.stop(timeout)
            self.children.clear()
        self._stopped.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
