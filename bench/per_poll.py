"""Per-poll cost: the floor, the poll step's own work, and the same poll run through Celery.

1. floor: one `httpx` GET of an operation from the fast API plus one Redis `HSET`, in a
   plain loop (a shared client and connection each, as the worker has);
2. poll step: `ktrdr.poll_training` called in this process on a cycle whose job is still
   running: lease, step entry, record read, GET, progress update, lease release; the retry
   is raised but not published (no Celery message, no worker);
3. through Celery: worker CPU per poll (all worker processes) while N cycles poll, from a
   short polling run (`bench.polling`).
Wall time and CPU time per poll are printed in microseconds; the last line is
`floor_us=<F> step_us=<S> celery_cpu_us=<C>`.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
import uuid
from pathlib import Path
from typing import Any

from bench import polling
from bench.stack import add_worker_arguments, stack, write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--loops", type=int, default=2000)
    parser.add_argument("--celery-cycles", type=int, default=500, help="0 skips part 3")
    parser.add_argument("--cprofile", action="store_true", help="profile the poll step")
    parser.add_argument("--json", type=Path)
    add_worker_arguments(parser)


def _timed(loops: int, body: Any) -> tuple[float, float]:
    """(wall us, CPU us) per call of `body`, after a short warm-up."""
    for _ in range(min(50, loops)):
        body()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(loops):
        body()
    return (
        1e6 * (time.perf_counter() - wall) / loops,
        1e6 * (time.process_time() - cpu) / loops,
    )


def measure_in_process(loops: int, profile: bool) -> dict[str, Any]:
    import httpx
    from celery.exceptions import Retry

    from ktrdr_tasks import tasks
    from ktrdr_tasks.settings import get_settings
    from ktrdr_tasks.store import get_store

    settings, store = get_settings(), get_store()
    op_id = f"op_agent_research_bench_{uuid.uuid4().hex[:12]}"
    training_id = f"op_training_bench_{uuid.uuid4().hex[:12]}"
    store.create_operation(polling._training_record(op_id, training_id, []), 10)
    with httpx.Client(base_url=settings.api_url) as client:
        httpx.post(f"{settings.api_url}/bench/jobs", json={"jobs": [[training_id, time.time()]]})
        key = f"bench:floor:{op_id}"  # not the record: its fields are the store's to decode

        def floor() -> None:
            answer = client.get(f"/api/v1/operations/{training_id}")
            store.redis.hset(key, "status", answer.content[:32])

        def poll_step() -> None:
            try:
                tasks.poll_training(op_id)
            except Retry:
                return
            raise RuntimeError("the poll should have asked for a retry")

        floor_wall, floor_cpu = _timed(loops, floor)
        step_wall, step_cpu = _timed(loops, poll_step)
        report = ""
        if profile:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(loops):
                poll_step()
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
            report = out.getvalue()
    return {
        "floor_wall_us": floor_wall,
        "floor_cpu_us": floor_cpu,
        "step_wall_us": step_wall,
        "step_cpu_us": step_cpu,
        "cprofile": report,
    }


def run(args: argparse.Namespace) -> int:
    with stack(poll_interval_s=5, job_seconds=1e9):
        result = measure_in_process(args.loops, args.cprofile)
    if args.celery_cycles:
        run_args = argparse.Namespace(**vars(args))
        run_args.cycles, run_args.interval, run_args.job_seconds = args.celery_cycles, 2.0, 16.0
        run_args.timeout, run_args.seed, run_args.json, run_args.py_spy = 120.0, 7, None, None
        celery = polling.run_polling(run_args)
        result["celery_cpu_us"] = celery.get("worker_cpu_us_per_poll", float("nan"))
        result["celery_redis_cpu_us"] = celery.get("redis_cpu_us_per_poll", float("nan"))
        result["celery_worker"] = celery["worker"]
    print(f"{'per poll':<52}{'wall us':>10}{'CPU us':>10}")
    print(f"{'floor: httpx GET + one Redis HSET, plain loop':<52}", end="")
    print(f"{result['floor_wall_us']:>10.0f}{result['floor_cpu_us']:>10.0f}")
    print(f"{'poll step in-process (no Celery message)':<52}", end="")
    print(f"{result['step_wall_us']:>10.0f}{result['step_cpu_us']:>10.0f}")
    if "celery_cpu_us" in result:
        label = f"through Celery ({args.celery_cycles} cycles, worker CPU)"
        print(f"{label:<52}{'':>10}{result['celery_cpu_us']:>10.0f}")
        print(
            f"  worker: {result['celery_worker']}; Redis CPU {result['celery_redis_cpu_us']:.0f} us"
        )
    if result["cprofile"]:
        print(result["cprofile"])
    write_json(args.json, {k: v for k, v in result.items() if k != "cprofile"})
    print(
        f"floor_us={result['floor_wall_us']:.0f} step_us={result['step_wall_us']:.0f} "
        f"celery_cpu_us={result.get('celery_cpu_us', float('nan')):.0f}"
    )
    return 0
