"""Per-poll cost: the floor, the poll step's own work, and the same poll run through Celery.

1. floor: one GET of an operation from the fast API with the standard library's
   `http.client` (a kept connection, the answer read whole and decoded by `json.loads`) plus
   one Redis `HSET`, in a plain loop: the least a poll can do. The same with an `httpx`
   client on its default transport is the floor as measured before the training client got
   its own transport (`ktrdr_tasks/http_transport.py`);
2. poll step, separate calls (the same-run baseline): what the runner did before its Redis
   calls were fused, from the store's public calls: `acquire_lease`, `enter_step`, `get`, the
   poll (`cycle.run_poll_training`), `update`, `release_lease`: 5 Redis round trips;
3. poll step: `tasks.run_step` of `poll_training` in this process on a cycle whose job is
   still running: `begin_step` (lease + entry + read), the GET, `end_step` (write + release):
   2 round trips; no Celery message;
4. re-publish: what `reschedule` sends for a poll (the same message with its countdown),
   in this process, into a queue no worker reads;
5. through Celery: worker CPU per poll (all worker processes) while N cycles poll, from a
   short polling run (`bench.polling`).
Wall time and CPU time per poll are printed in microseconds; the last line is
`floor_us=<F> step_us=<S> step_ratio=<S/F> celery_cpu_us=<C>` (wall times).
`BENCH_HIREDIS=0` in the environment hides hiredis from redis-py (the pure-Python parser).
"""

from __future__ import annotations

import argparse
import cProfile
import http.client
import io
import json
import pstats
import time
import uuid
from pathlib import Path
from typing import Any

from bench import polling
from bench.stack import add_worker_arguments, stack, write_json

ROWS = {
    "floor": "floor: http.client GET + one Redis HSET, plain loop",
    "httpx_floor": "same with httpx's default transport",
    "separate": "poll step, separate Redis calls (5 round trips)",
    "step": "poll step in-process (2 round trips)",
    "publish": "re-publish of the poll message (reschedule)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--loops", type=int, default=2000)
    parser.add_argument("--celery-cycles", type=int, default=500, help="0 skips part 5")
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

    from ktrdr_tasks import cycle, tasks
    from ktrdr_tasks.app import app
    from ktrdr_tasks.cycle import Reschedule
    from ktrdr_tasks.reschedule import reschedule
    from ktrdr_tasks.settings import get_settings
    from ktrdr_tasks.steps import Step
    from ktrdr_tasks.store import get_store

    settings, store = get_settings(), get_store()
    services = tasks.worker_services()
    op_id = f"op_agent_research_bench_{uuid.uuid4().hex[:12]}"
    training_id = f"op_training_bench_{uuid.uuid4().hex[:12]}"
    store.create_operation(polling._training_record(op_id, training_id, []), 10)
    lease = Step.POLL_TRAINING.name
    with httpx.Client(base_url=settings.api_url) as client:
        httpx.post(f"{settings.api_url}/bench/jobs", json={"jobs": [[training_id, time.time()]]})
        key = f"bench:floor:{op_id}"  # not the record: its fields are the store's to decode

        url = httpx.URL(settings.api_url)
        plain = http.client.HTTPConnection(url.host, url.port)
        plain_path = f"/api/v1/operations/{training_id}"

        def floor() -> None:
            plain.request("GET", plain_path, headers={"accept": "application/json"})
            answer = json.loads(plain.getresponse().read())
            store.redis.hset(key, "status", answer["data"]["status"])

        def httpx_floor() -> None:
            answer = client.get(f"/api/v1/operations/{training_id}")
            store.redis.hset(key, "status", answer.content[:32])

        def separate() -> None:
            token = uuid.uuid4().hex
            store.acquire_lease(op_id, lease, token, 30)
            store.enter_step(op_id, Step.POLL_TRAINING, Step.POLL_TRAINING.phase)
            outcome = cycle.run_poll_training(services, store.get(op_id))
            assert isinstance(outcome, Reschedule), outcome
            store.update(op_id, **outcome.changes)
            store.release_lease(op_id, lease, token)

        def step() -> None:
            outcome = tasks.run_step(Step.POLL_TRAINING, op_id, services, "bench-poll")
            assert isinstance(outcome, Reschedule), outcome

        poll_task = app.tasks[Step.POLL_TRAINING.task_name]
        queue = f"bench.nobody.{uuid.uuid4().hex[:8]}"

        def publish() -> None:
            poll_task.push_request(
                id="bench-poll",
                args=[op_id],
                kwargs={},
                called_directly=False,
                chain=[{"task": Step.TRAINING_GATE.task_name, "args": [op_id], "options": {}}],
                delivery_info={"exchange": "", "routing_key": queue},
            )
            try:
                reschedule(poll_task, 5)
            finally:
                poll_task.pop_request()

        result: dict[str, Any] = {}
        for name, body in (
            ("floor", floor),
            ("httpx_floor", httpx_floor),
            ("separate", separate),
            ("step", step),
        ):
            result[f"{name}_wall_us"], result[f"{name}_cpu_us"] = _timed(loops, body)
        result["publish_wall_us"], result["publish_cpu_us"] = _timed(loops, publish)
        store.redis.delete(queue)
        report = ""
        if profile:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(loops):
                step()
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(40)
            report = out.getvalue()
    result["cprofile"] = report
    return result


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
    for name, label in ROWS.items():
        print(f"{label:<52}{result[f'{name}_wall_us']:>10.0f}{result[f'{name}_cpu_us']:>10.0f}")
    if "celery_cpu_us" in result:
        label = f"through Celery ({args.celery_cycles} cycles, worker CPU)"
        print(f"{label:<52}{'':>10}{result['celery_cpu_us']:>10.0f}")
        print(
            f"  worker: {result['celery_worker']}; Redis CPU {result['celery_redis_cpu_us']:.0f} us"
        )
    if result["cprofile"]:
        print(result["cprofile"])
    result["step_ratio"] = result["step_wall_us"] / result["floor_wall_us"]
    result["step_cpu_ratio"] = result["step_cpu_us"] / result["floor_cpu_us"]
    print(
        f"poll step / floor: {result['step_ratio']:.2f}x wall, {result['step_cpu_ratio']:.2f}x CPU"
        " (goal <= 2x)"
    )
    write_json(args.json, {k: v for k, v in result.items() if k != "cprofile"})
    print(
        f"floor_us={result['floor_wall_us']:.0f} step_us={result['step_wall_us']:.0f} "
        f"step_ratio={result['step_ratio']:.2f} "
        f"celery_cpu_us={result.get('celery_cpu_us', float('nan')):.0f}"
    )
    return 0
