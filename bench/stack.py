"""The processes a benchmark runs against: its own redis-server, Celery worker(s), the fast API.

Every benchmark starts a private stack (a redis-server on a free port, workers started as
`celery -A bench.worker_app worker ...` subprocesses with the benchmark's environment, and the
in-process `FastTrainingApi`), so no number depends on whatever else runs on the machine.
Processes are started by the project's supervisor module (`ktrdr_tasks.supervisor`), each in
its own session so that stopping one reaches its pool children; logs go to a temporary
directory that is printed when a worker fails to start.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import redis

from ktrdr_tasks.stack import free_port, redis_server_binary
from ktrdr_tasks.supervisor import Child, wait_until
from ktrdr_tasks.supervisor import spawn as start_child

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
READY_KEY = "bench:ready"


# A started process: `log_tail()`, `tree()`, `stop()` (the project's one supervisor module).
Process = Child


def spawn(name: str, argv: list[str], log_dir: Path, env: dict[str, str]) -> Process:
    return start_child(name, argv, log_dir / f"{name}.log", {**os.environ, **env}, REPO)


@dataclass
class WorkerOptions:
    """How the benchmark worker runs; the defaults are the project's production settings."""

    pool: str = "prefork"
    concurrency: int = 2
    processes: int = 1  # worker processes (nodes) on this machine
    prefetch: int = 1
    events: bool = True
    loglevel: str = "INFO"
    extra_env: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        events = "on" if self.events else "off"
        extra = "".join(f" {name}={value}" for name, value in self.extra_env.items())
        return (
            f"{self.processes}x{self.pool}(c={self.concurrency}) prefetch={self.prefetch} "
            f"events={events} log={self.loglevel}{extra}"
        )


@dataclass
class FastApi:
    """The fast training API subprocess (`bench.fast_api`) and its two benchmark routes."""

    url: str
    process: Process

    def create_jobs(self, jobs: list[tuple[str, float]]) -> None:
        """Register remote jobs (training id, start time) as if `POST /trainings/start` had."""
        answer = httpx.post(f"{self.url}/bench/jobs", json={"jobs": jobs}, timeout=60)
        answer.raise_for_status()

    def jobs(self) -> list[dict]:
        answer = httpx.get(f"{self.url}/bench/jobs", timeout=60)
        answer.raise_for_status()
        return list(answer.json()["jobs"])

    def stop(self) -> None:
        self.process.stop()


@dataclass
class Stack:
    redis_url: str
    redis_process: Process
    api: FastApi
    env: dict[str, str]
    log_dir: Path
    workers: list[Process] = field(default_factory=list)

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    def start_workers(self, options: WorkerOptions) -> list[Process]:
        client = self.redis()
        client.delete(READY_KEY)
        env = {
            **self.env,
            "BENCH_TASK_EVENTS": "1" if options.events else "0",
            **options.extra_env,
        }
        started = []
        for index in range(options.processes):
            argv = [
                str(BIN / "celery"),
                "-A",
                "bench.worker_app",
                "worker",
                "--pool",
                options.pool,
                "--concurrency",
                str(options.concurrency),
                "--prefetch-multiplier",
                str(options.prefetch),
                "--loglevel",
                options.loglevel,
                "--hostname",
                f"bench{index}-{free_port()}@%h",
                "--without-mingle",
                "--without-gossip",
            ]
            started.append(spawn(f"worker{index}-{int(time.time())}", argv, self.log_dir, env))
        self.workers.extend(started)

        def all_ready() -> bool:
            for process in started:
                if process.popen.poll() is not None:
                    raise RuntimeError(f"worker exited at start:\n{process.log_tail()}")
            return client.scard(READY_KEY) >= len(started)

        wait_until(all_ready, 60, "celery worker")
        return started

    def stop_workers(self) -> None:
        for process in self.workers:
            process.stop()
        self.workers.clear()

    def worker_processes(self) -> list[psutil.Process]:
        return [proc for worker in self.workers for proc in worker.tree()]

    def worker_rss(self) -> int:
        total = 0
        for proc in self.worker_processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
        return total

    def worker_rss_by_process(self) -> list[int]:
        sizes = []
        for proc in self.worker_processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                sizes.append(proc.memory_info().rss)
        return sizes

    def worker_cpu_seconds(self) -> float:
        total = 0.0
        for proc in self.worker_processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def redis_used_memory(self) -> int:
        return int(self.redis().info("memory")["used_memory"])

    def redis_cpu_seconds(self) -> float:
        info = self.redis().info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


@contextlib.contextmanager
def stack(
    *,
    poll_interval_s: float,
    job_seconds: float,
    max_active: int = 10,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """Start redis-server and the fast API; configure this process like the workers."""
    # A terminated benchmark still stops what it started (the `finally` below runs).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    log_dir = Path(tempfile.mkdtemp(prefix="ktrdr-bench-"))
    port = free_port()
    redis_process = spawn(
        "redis",
        [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(log_dir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ],
        log_dir,
        {},
    )
    redis_url = f"redis://127.0.0.1:{port}/0"
    api_port = free_port()
    api = FastApi(
        f"http://127.0.0.1:{api_port}",
        spawn(
            "fast-api",
            [
                sys.executable,
                "-m",
                "bench.fast_api",
                "--port",
                str(api_port),
                "--job-seconds",
                str(job_seconds),
            ],
            log_dir,
            {},
        ),
    )
    strategies = log_dir / "strategies"
    strategies.mkdir()
    for path in (REPO / "strategies").glob("*.yaml"):
        shutil.copy(path, strategies / path.name)
    env = {
        "REDIS_URL": redis_url,
        "KTRDR_API_URL": api.url,
        "KTRDR_STRATEGIES_DIR": str(strategies),
        "KTRDR_MODELS_DIR": str(log_dir / "models"),
        "KTRDR_POLL_INTERVAL_S": str(poll_interval_s),
        # The stale limit must exceed twice the poll interval (settings refuse less).
        "KTRDR_RESUME_AFTER_S": str(max(60.0, 3 * poll_interval_s)),
        "KTRDR_MAX_ACTIVE_CYCLES": str(max_active),
        "KTRDR_TRAINING_START_DATE": "2017-05-01",
        "KTRDR_TRAINING_END_DATE": "2018-02-01",
        **(extra_env or {}),
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    _reset_project_singletons()
    current = Stack(redis_url, redis_process, api, env, log_dir)
    try:
        wait_until(current.redis().ping, 15, "redis-server")
        wait_until(lambda: httpx.get(f"{api.url}/api/v1/health").status_code == 200, 15, "API")
        yield current
    finally:
        current.stop_workers()
        api.stop()
        redis_process.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _reset_project_singletons()
        shutil.rmtree(log_dir, ignore_errors=True)


def _reset_project_singletons() -> None:
    """Settings, store and the Celery app read the environment once per process: again."""
    from ktrdr_tasks.workflow import use_environment

    use_environment({})


def add_worker_arguments(parser: argparse.ArgumentParser, pool: str = "prefork") -> None:
    group = parser.add_argument_group("worker")
    group.add_argument("--pool", default=pool, choices=["prefork", "threads", "solo", "gevent"])
    group.add_argument("--concurrency", type=int, default=2)
    group.add_argument("--workers", type=int, default=1, help="worker processes (nodes)")
    group.add_argument("--prefetch", type=int, default=1, help="--prefetch-multiplier")
    group.add_argument("--no-events", action="store_true", help="turn task events off")
    group.add_argument("--loglevel", default="INFO")
    group.add_argument("--py-spy", type=Path, help="record a py-spy profile of the worker here")
    group.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the worker (repeatable), e.g. PYTHONNODEBUGRANGES=1",
    )


def worker_options(args: argparse.Namespace) -> WorkerOptions:
    return WorkerOptions(
        pool=args.pool,
        concurrency=args.concurrency,
        processes=args.workers,
        prefetch=args.prefetch,
        events=not args.no_events,
        loglevel=args.loglevel,
        extra_env=dict(item.split("=", 1) for item in args.worker_env),
    )


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def write_json(path: Path | None, payload: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2, default=str))
