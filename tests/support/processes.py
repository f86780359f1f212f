"""Real processes for integration tests: redis-server, Celery workers, the training host.

Each helper starts a process through the project's one supervisor module
(`ktrdr_tasks.supervisor`: its own session, so a kill reaches its children; one log file the
tests can show when something fails), waits until it is ready, and stops it on exit.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from ktrdr_tasks.stack import free_port, redis_server_binary
from ktrdr_tasks.supervisor import Child, spawn, wait_until

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# A started process: `log()`, `kill(sig)`, `stop()`, `popen`, `tree()`.
Process = Child

__all__ = ["BIN", "REPO", "Process", "free_port", "start", "wait_until"]


def start(
    name: str, argv: list[str], log_dir: Path, env: Mapping[str, str] | None = None
) -> Process:
    log_path = log_dir / f"{name}-{int(time.time() * 1000)}.log"
    return spawn(name, argv, log_path, {**os.environ, **(env or {})}, REPO)


@dataclass
class RedisServer:
    port: int
    data_dir: Path
    process: Process
    password: str | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)

    def restart(self) -> None:
        self.process.stop()
        self.process = _launch_redis(self.port, self.data_dir, self.password)

    def restart_after_kill(self) -> Process:
        """A new redis-server on the same port and AOF (after the old one was killed)."""
        return _launch_redis(self.port, self.data_dir, self.password)


def _launch_redis(port: int, data_dir: Path, password: str | None) -> Process:
    argv = [
        redis_server_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes",
        "--save",
        "",
        "--daemonize",
        "no",
    ]
    if password:
        argv += ["--requirepass", password]
    process = start("redis", argv, data_dir)
    auth = f":{password}@" if password else ""
    client = redis.Redis.from_url(f"redis://{auth}127.0.0.1:{port}/0")
    wait_until(client.ping, 15, "redis-server")
    return process


@contextlib.contextmanager
def redis_server(data_dir: Path, password: str | None = None) -> Iterator[RedisServer]:
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = RedisServer(port, data_dir, _launch_redis(port, data_dir, password), password)
    try:
        yield server
    finally:
        server.process.stop()


def start_worker(
    env: Mapping[str, str],
    log_dir: Path,
    concurrency: int = 2,
    name: str = "worker",
    app: str = "ktrdr_tasks",
) -> Process:
    argv = [
        str(BIN / "celery"),
        "-A",
        app,
        "worker",
        "--loglevel",
        "INFO",
        "--concurrency",
        str(concurrency),
        "--hostname",
        f"{name}-{free_port()}@%h",
        "--without-mingle",
        "--without-gossip",
    ]
    process = start(name, argv, log_dir, env)
    wait_until(
        lambda: " ready." in process.log() or process.popen.poll() is not None,
        60,
        "celery worker",
        interval=0.2,
    )
    if process.popen.poll() is not None:
        raise RuntimeError(f"celery worker exited at start:\n{process.log()[-3000:]}")
    return process


def start_training_host(env: Mapping[str, str], log_dir: Path, port: int) -> Process:
    argv = [str(BIN / "ktrdr-training-host"), "--host", "127.0.0.1", "--port", str(port)]
    process = start("training-host", argv, log_dir, env)

    def healthy() -> bool:
        if process.popen.poll() is not None:
            raise RuntimeError(f"training host exited:\n{process.log()[-3000:]}")
        return httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2).status_code == 200

    wait_until(healthy, 60, "training host", interval=0.2)
    return process
