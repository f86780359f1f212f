"""Cycle overhead: a full research cycle against a bare Celery chain of no-op tasks, same run.

The cycle is as fast as its remote side allows: `trigger(strategy=...)` with an existing
strategy (the design step only reads and summarises the file: the "instant designer"), a
training API whose jobs are done at the first poll, `KTRDR_POLL_INTERVAL_S=0`. Both the cycle
and the baseline chains (5 and 7 no-op tasks, the lengths of the cycle's earlier versions, and
9, hop for hop with today's cycle of 9 steps) run on the same
redis-server and the same worker, interleaved, one at a time; each is timed from just before
`trigger()` / `apply_async()` to the end of its last task (recorded by the worker). The last
line is `overhead_ratio=<median cycle / median 5-task chain>`; goal: <= 1.3.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import time
import uuid
from pathlib import Path

from bench import profile
from bench.stack import (
    Stack,
    add_worker_arguments,
    percentile,
    stack,
    worker_options,
    write_json,
)
from bench.worker_app import DONE_KEY, LAST_NOOP

STRATEGY = "eurusd_1h_rsi_macd_adx"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cycles", type=int, default=50, help="timed cycles (and chains)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--strategy", default=STRATEGY)
    parser.add_argument("--json", type=Path, help="write all results here")
    add_worker_arguments(parser)


def _wait_done(current: Stack, expected_id: str, timeout: float = 60) -> float:
    client = current.redis()
    while True:
        item = client.blpop([DONE_KEY], timeout=timeout)
        if item is None:
            raise TimeoutError(f"{expected_id} did not finish within {timeout} s")
        ident, _, stamp = item[1].partition(" ")
        if ident == expected_id:
            return float(stamp)


def time_chain(current: Stack, hops: int) -> float:
    from celery import chain

    from ktrdr_tasks.app import app

    chain_id = f"chain-{uuid.uuid4().hex[:8]}"
    signatures = [app.signature("bench.noop", args=(chain_id,), immutable=True)] * (hops - 1)
    signatures.append(app.signature("bench.noop", args=(chain_id, LAST_NOOP), immutable=True))
    started = time.time()
    chain(*signatures).apply_async()
    return _wait_done(current, chain_id) - started


def time_cycle(current: Stack, strategy: str) -> float:
    from ktrdr_tasks import workflow
    from ktrdr_tasks.store import get_store

    started = time.time()
    answer = workflow.trigger(strategy=strategy)
    if not answer.triggered or answer.operation_id is None:
        raise RuntimeError(f"trigger refused: {answer.message}")
    elapsed = _wait_done(current, answer.operation_id) - started
    record = get_store().get(answer.operation_id)
    if record.status.value != "completed":
        raise RuntimeError(f"{answer.operation_id} ended {record.status}: {record.error_message}")
    return elapsed


def create_cycle_record(strategy: str) -> str:
    """The record `trigger()` writes, without enqueueing the chain (for in-process timing)."""
    from ktrdr_tasks.models import Operation, Progress, iso, new_operation_id, utc_now
    from ktrdr_tasks.settings import get_settings
    from ktrdr_tasks.store import get_store
    from ktrdr_tasks.workflow import chain_task_ids

    now = utc_now()
    ids = chain_task_ids()
    operation = Operation(
        operation_id=new_operation_id(now),
        created_at=iso(now),
        heartbeat_at=iso(now),
        task_ids=[ids[step] for step in sorted(ids)],
        metadata={"bypass_gates": False, "requested_strategy": strategy},
        progress=Progress(percentage=0, current_step="Queued"),
    )
    if get_store().create_operation(operation, get_settings().max_active_cycles):
        raise RuntimeError("at capacity")
    return operation.operation_id


def step_breakdown(strategy: str, repeats: int) -> dict[str, float]:
    """Median wall time of each task body, run in this process without Celery (no hops)."""
    from celery.exceptions import Retry

    from ktrdr_tasks import tasks
    from ktrdr_tasks.steps import Step

    timings: dict[str, list[float]] = {}
    for _ in range(repeats):
        op_id = create_cycle_record(strategy)
        for step in Step:
            name = step.task_name
            task = tasks.app.tasks[name]
            started = time.perf_counter()
            try:
                task(op_id)
            except Retry:
                raise RuntimeError(f"{name} asked to retry: the fast API should be done") from None
            timings.setdefault(step.name.lower(), []).append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in timings.items()}


def run(args: argparse.Namespace) -> int:
    options = worker_options(args)
    with stack(poll_interval_s=0, job_seconds=0) as current:
        step_breakdown(args.strategy, 3)  # warm imports and connections
        steps = step_breakdown(args.strategy, 20)
        current.start_workers(options)
        for _ in range(args.warmup):
            time_chain(current, 5)
            time_cycle(current, args.strategy)
        spy = None
        if args.py_spy:
            spy = profile.record(current.workers[0].popen.pid, 600, args.py_spy)
        samples: dict[str, list[float]] = {"chain5": [], "chain7": [], "chain9": [], "cycle": []}
        cpu_before = current.worker_cpu_seconds()
        for _ in range(args.cycles):
            samples["chain5"].append(time_chain(current, 5))
            samples["cycle"].append(time_cycle(current, args.strategy))
            samples["chain7"].append(time_chain(current, 7))
            samples["chain9"].append(time_chain(current, 9))
        cpu = current.worker_cpu_seconds() - cpu_before
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=30)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    from ktrdr_tasks.steps import Step

    ratio = medians["cycle"] / medians["chain5"]
    print(f"worker: {options.describe()}; {args.cycles} of each, interleaved")
    print(f"{'run':<28}{'p50 ms':>10}{'p90 ms':>10}{'min ms':>10}")
    labels = {
        "chain5": "bare chain, 5 no-op tasks",
        "chain7": "bare chain, 7 no-op tasks",
        "chain9": "bare chain, 9 no-op tasks",
        "cycle": f"research cycle ({len(Step)} tasks)",
    }
    for name, label in labels.items():
        values = samples[name]
        print(
            f"{label:<28}{1000 * medians[name]:>10.2f}{1000 * percentile(values, 90):>10.2f}"
            f"{1000 * min(values):>10.2f}"
        )
    print(
        "task bodies run in-process without Celery (median ms): "
        + ", ".join(f"{name} {1000 * value:.2f}" for name, value in steps.items())
        + f"; sum {1000 * sum(steps.values()):.2f}"
    )
    print(f"cycle / 7-task chain: {medians['cycle'] / medians['chain7']:.2f}x")
    print(f"cycle / 9-task chain (hop for hop): {medians['cycle'] / medians['chain9']:.2f}x")
    print(f"worker CPU per (cycle + 21 no-op hops): {1000 * cpu / args.cycles:.2f} ms")
    if args.py_spy:
        print(profile.summarize(args.py_spy))
    write_json(
        args.json,
        {
            "worker": options.describe(),
            "samples_s": samples,
            "median_s": medians,
            "task_bodies_s": steps,
            "overhead_ratio": ratio,
            "ratio_vs_chain7": medians["cycle"] / medians["chain7"],
            "ratio_vs_chain9": medians["cycle"] / medians["chain9"],
        },
    )
    print(f"overhead_ratio={ratio:.3f}")
    return 0
