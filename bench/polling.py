"""Polling capacity: N cycles waiting on remote trainings at once, polled every `interval` s.

Setup (so that N cycles are in the training phase within seconds, not N designs later): for
each cycle the benchmark writes the operation record as `start_training` leaves it (status
running, phase training, step START_TRAINING, the strategy, training params, training
operation id, and the deadline in its bookkeeping), registers the remote job with the fast API, and
enqueues only the rest of the chain, `chain_of(op_id, chain_task_ids(POLL_TRAINING))`,
with its first poll spread uniformly over one interval (as cycles started at random times
would be). Each remote job starts up to one interval before its first poll and runs
`job_seconds`, then answers `completed`; the cycle then runs its gate and stub phases and
completes.

Measured, from the training service's side (its clock, the arrival of each GET):
- poll lag: arrival minus when the poll was due (previous poll + interval; the first poll:
  its scheduled start), p50/p99 over every poll of every cycle;
- completion-detection delay: first GET answering `completed` minus the job's end (its
  floor is up to one interval: a job ends between two polls);
- worker RSS per waiting cycle: (peak RSS of the worker process tree while all cycles wait,
  minus the idle worker) / N; Redis memory per cycle: INFO `used_memory` delta / N;
- worker CPU per poll: CPU seconds of the worker tree / polls, while all cycles wait.
The last line is `poll_lag_p99_s=<L> detect_p99_s=<D> rss_per_cycle_kb=<K>`.
Goal at N = 2,000 on one 2-core worker: lag p99 <= 1 s, <= 50 KB per cycle.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import profile
from bench.stack import Stack, add_worker_arguments, percentile, stack, worker_options, write_json

STRATEGY = "eurusd_1h_rsi_macd_adx"
WARMUP_CYCLES = 250  # run through once before the idle worker is measured


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cycles", type=int, default=1000, help="N cycles polling at once")
    parser.add_argument("--interval", type=float, default=5.0, help="poll interval (s)")
    parser.add_argument("--job-seconds", type=float, default=60.0, help="remote job duration")
    parser.add_argument("--timeout", type=float, default=240.0, help="extra wait after jobs end")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="write all results here")
    add_worker_arguments(parser)


def _training_record(op_id: str, training_id: str, task_ids: list[str]) -> Any:
    """The operation as `start_training` leaves it (see `cycle.run_start_training`)."""
    from ktrdr_tasks.cycle import Step
    from ktrdr_tasks.models import (
        Bookkeeping,
        Operation,
        OperationStatus,
        Phase,
        Progress,
        iso,
        utc_now,
    )
    from ktrdr_tasks.settings import get_settings

    now = utc_now()
    settings = get_settings()
    return Operation(
        operation_id=op_id,
        status=OperationStatus.RUNNING,
        phase=Phase.TRAINING,
        step=int(Step.START_TRAINING),
        created_at=iso(now),
        started_at=iso(now),
        heartbeat_at=iso(now),
        task_ids=task_ids,
        progress=Progress(percentage=35, current_step=f"Starting training for {STRATEGY}"),
        metadata={
            "bypass_gates": False,
            "requested_strategy": STRATEGY,
            "strategy_name": STRATEGY,
            "strategy_path": str(settings.strategies_dir / f"{STRATEGY}.yaml"),
            "designer": "existing",
            "training_params": {
                "symbols": ["EURUSD"],
                "timeframes": ["1h"],
                "start_date": "2017-05-01",
                "end_date": "2018-02-01",
            },
            "training_operation_id": training_id,
        },
        bookkeeping=Bookkeeping(
            training_start_requested_at=iso(now),
            training_deadline_ts=time.time() + settings.training_timeout_s,
        ),
    )


def put_cycles_in_training(
    current: Stack, count: int, interval: float, seed: int, warmup: bool = False
) -> dict:
    """Create `count` cycles at the polling step; returns ids and scheduled first polls.

    `warmup`: jobs that ended already, first polls due now (warms the pool processes up).
    """
    from ktrdr_tasks.cycle import Step
    from ktrdr_tasks.settings import get_settings
    from ktrdr_tasks.store import get_store
    from ktrdr_tasks.workflow import chain_of, chain_task_ids

    store, limit = get_store(), get_settings().max_active_cycles
    rng = random.Random(seed)
    cycles = []
    created = time.perf_counter()
    for _ in range(count):
        op_id = f"op_agent_research_bench_{uuid.uuid4().hex[:12]}"
        training_id = f"op_training_bench_{uuid.uuid4().hex[:12]}"
        ids = chain_task_ids(Step.POLL_TRAINING)
        if store.create_operation(_training_record(op_id, training_id, list(ids.values())), limit):
            raise RuntimeError("at capacity: KTRDR_MAX_ACTIVE_CYCLES is below --cycles")
        cycles.append((op_id, training_id, ids))
    create_seconds = time.perf_counter() - created
    # Every first poll is due at start + offset; leave time to enqueue them all first.
    start = time.time() + 2.0 + count * 0.003  # the worker takes in ~1 ETA message per ms
    offsets = [rng.uniform(0, interval) for _ in cycles]
    if warmup:
        start, offsets = time.time() - 3600, [0.0] * count
    by_training = {}
    for (op_id, training_id, _), offset in zip(cycles, offsets, strict=True):
        by_training[training_id] = {"op_id": op_id, "first_due": start + offset}
    # Jobs start at their cycle's first poll and run job_seconds from there.
    # A job starts up to one interval before its first poll (start_training, then the poll),
    # so it ends at a random point between two polls, as a real one does.
    current.api.create_jobs(
        [
            (training_id, start + offset - rng.uniform(0, interval))
            for (_, training_id, _), offset in zip(cycles, offsets, strict=True)
        ]
    )
    enqueued = time.perf_counter()
    for (op_id, _, ids), offset in zip(cycles, offsets, strict=True):
        eta = datetime.fromtimestamp(start + offset, tz=UTC)
        chain_of(op_id, ids).apply_async(eta=eta)
    enqueue_seconds = time.perf_counter() - enqueued
    if time.time() > start and not warmup:
        print(f"warning: enqueueing ended {time.time() - start:.1f} s after the first poll was due")
    return {
        "start": start,
        "cycles": by_training,
        "ops": [op_id for op_id, _, _ in cycles],
        "create_seconds": create_seconds,
        "enqueue_seconds": enqueue_seconds,
    }


def _active_count(current: Stack) -> int:
    from ktrdr_tasks.store import active_key

    return int(current.redis().scard(active_key()))


def _statuses(current: Stack, ops: list[str]) -> dict[str, int]:
    from ktrdr_tasks.store import operation_key

    pipe = current.redis().pipeline(transaction=False)
    for op_id in ops:
        pipe.hget(operation_key(op_id), "status")
    counts: dict[str, int] = {}
    for status in pipe.execute():
        counts[str(status)] = counts.get(str(status), 0) + 1
    return counts


def analyse(jobs: list[dict], cycles: dict, interval: float) -> dict[str, Any]:
    lags: list[float] = []
    waiting_lags: list[float] = []
    detect: list[float] = []
    for job in jobs:
        cycle = cycles.get(job["operation_id"])
        if cycle is None:
            continue
        due = cycle["first_due"]
        for arrival in job["polls"]:
            lag = arrival - due
            lags.append(lag)
            if arrival < job["ends_at"]:
                waiting_lags.append(lag)
            due = arrival + interval
        if job["detected_at"] is not None:
            detect.append(job["detected_at"] - job["ends_at"])
    return {
        "polls": len(lags),
        "lag_p50_s": percentile(lags, 50),
        "lag_p99_s": percentile(lags, 99),
        "lag_max_s": max(lags) if lags else float("nan"),
        "waiting_lag_p99_s": percentile(waiting_lags, 99),
        "detect_p50_s": percentile(detect, 50),
        "detect_p99_s": percentile(detect, 99),
        "detected": len(detect),
    }


def run_polling(args: argparse.Namespace) -> dict[str, Any]:
    count, interval = args.cycles, args.interval
    options = worker_options(args)
    samples: list[dict[str, float]] = []
    with stack(
        poll_interval_s=interval,
        job_seconds=args.job_seconds,
        max_active=count + WARMUP_CYCLES,
        extra_env={"KTRDR_TRAINING_TIMEOUT_S": str(args.job_seconds + 3600)},
    ) as current:
        current.start_workers(options)
        load_before = os.getloadavg()[0]
        # Warm every pool process up (imports, connections) before measuring the idle worker.
        put_cycles_in_training(current, WARMUP_CYCLES, 1, 0, True)
        wait_deadline = time.time() + 120
        while _active_count(current) and time.time() < wait_deadline:
            time.sleep(0.2)
        time.sleep(1)
        idle_rss = current.worker_rss()
        idle_redis = current.redis_used_memory()
        setup = put_cycles_in_training(current, count, interval, args.seed)
        start = setup["start"]
        # "All waiting": every first poll is done, no job has ended yet.
        window = (start + interval + 1, start + args.job_seconds - 1)
        spy = None
        deadline = start + args.job_seconds + interval + args.timeout
        while time.time() < deadline:
            now = time.time()
            if args.py_spy and spy is None and now >= window[0]:
                spy = profile.record(
                    current.workers[0].popen.pid, max(1, window[1] - window[0]), args.py_spy
                )
            samples.append(
                {
                    "t": now - start,
                    "rss": current.worker_rss(),
                    "rss_each": current.worker_rss_by_process(),
                    "redis": current.redis_used_memory(),
                    "cpu": current.worker_cpu_seconds(),
                    "redis_cpu": current.redis_cpu_seconds(),
                }
            )
            if now > window[1] and _active_count(current) == 0:
                break
            time.sleep(1.0)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        jobs = current.api.jobs()
        statuses = _statuses(current, setup["ops"])
        load_after = os.getloadavg()[0]
        worker_log = current.workers[0].log_tail(2000)
    result = analyse(jobs, setup["cycles"], interval)
    if args.json:
        result["raw"] = {"jobs": jobs, "cycles": setup["cycles"], "samples": samples}
    inside = [s for s in samples if window[0] - start <= s["t"] <= window[1] - start]
    if len(inside) >= 2:
        span = (inside[0]["t"] + start, inside[-1]["t"] + start)
        polls_inside = sum(1 for job in jobs for t in job["polls"] if span[0] <= t <= span[1])
        cpu = inside[-1]["cpu"] - inside[0]["cpu"]
        redis_cpu = inside[-1]["redis_cpu"] - inside[0]["redis_cpu"]
        result["worker_cpu_us_per_poll"] = 1e6 * cpu / max(polls_inside, 1)
        result["redis_cpu_us_per_poll"] = 1e6 * redis_cpu / max(polls_inside, 1)
        result["worker_cpu_share"] = cpu / (span[1] - span[0])
        result["rss_per_cycle_kb"] = (max(s["rss"] for s in inside) - idle_rss) / count / 1024
        result["redis_per_cycle_kb"] = (max(s["redis"] for s in inside) - idle_redis) / count / 1024
    result.update(
        {
            "cycles": count,
            "interval_s": interval,
            "job_seconds": args.job_seconds,
            "worker": options.describe(),
            "statuses": statuses,
            # Every training was registered by the benchmark: any other is a second start;
            # each cycle then starts one backtest.
            "remote_jobs": len(jobs),
            "remote_backtests": sum(
                1 for job in jobs if str(job.get("operation_id", "")).startswith("op_backtesting_")
            ),
            "remote_jobs_expected": count + WARMUP_CYCLES,
            "remote_cancels": sum(1 for job in jobs if job.get("cancelled")),
            "create_seconds": setup["create_seconds"],
            "enqueue_seconds": setup["enqueue_seconds"],
            "idle_rss_mb": idle_rss / 2**20,
            "loadavg_before_after": (load_before, load_after),
        }
    )
    if statuses.get("completed", 0) != count:
        result["worker_log_tail"] = worker_log
    return result


def run(args: argparse.Namespace) -> int:
    result = run_polling(args)
    print(
        f"N={result['cycles']} interval={result['interval_s']:g}s job={result['job_seconds']:g}s "
        f"worker: {result['worker']}"
    )
    load = result["loadavg_before_after"]
    print(f"machine load average (1 min) before/after: {load[0]:.1f} / {load[1]:.1f}")
    print(
        f"setup: records {result['create_seconds']:.1f} s, enqueue "
        f"{result['enqueue_seconds']:.1f} s; outcome {result['statuses']}; remote jobs "
        f"{result['remote_jobs'] - result['remote_backtests']} trainings and "
        f"{result['remote_backtests']} backtests for {result['remote_jobs_expected']} cycles "
        f"(warm-up included), {result['remote_cancels']} cancelled"
    )
    print(
        f"polls {result['polls']}: lag p50 {result['lag_p50_s']:.3f} s, p99 "
        f"{result['lag_p99_s']:.3f} s (while all wait: {result['waiting_lag_p99_s']:.3f} s), "
        f"max {result['lag_max_s']:.3f} s"
    )
    print(
        f"completion detected {result['detected']}: delay p50 {result['detect_p50_s']:.2f} s, "
        f"p99 {result['detect_p99_s']:.2f} s (floor: up to one interval)"
    )
    if "rss_per_cycle_kb" in result:
        print(
            f"worker RSS {result['rss_per_cycle_kb']:.1f} KB/cycle (idle "
            f"{result['idle_rss_mb']:.0f} MB), Redis {result['redis_per_cycle_kb']:.1f} KB/cycle; "
            f"worker CPU {result['worker_cpu_us_per_poll']:.0f} us/poll "
            f"({100 * result['worker_cpu_share']:.0f}% of one core), Redis CPU "
            f"{result['redis_cpu_us_per_poll']:.0f} us/poll"
        )
    if "worker_log_tail" in result:
        print("worker log tail:\n" + result["worker_log_tail"])
    if args.py_spy:
        print(profile.summarize(args.py_spy))
    write_json(args.json, result)
    print(
        f"poll_lag_p99_s={result['lag_p99_s']:.3f} detect_p99_s={result['detect_p99_s']:.3f} "
        f"rss_per_cycle_kb={result.get('rss_per_cycle_kb', float('nan')):.1f}"
    )
    return 0
